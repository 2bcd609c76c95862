"""Bad image files: one `error:` line naming the file, from the header check when the dataset
is opened (before compute) or from the input pipeline when a file is bad only inside or went
bad later; `dataset.on_bad_file=skip`; the whole-dataset check (`ncl-check-dataset`)."""

from __future__ import annotations

import io
import os
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from ncl_jax import data
from ncl_jax.config.validation import validate_config
from ncl_jax.data import augment, datasets, file_check
from ncl_jax.errors import ConfigError, DataError
from tests.cli_helpers import one_error_line
from tests.data_helpers import dataset_config, encode, id_image, write_images
from tests.programs import run_program
from tests.tiny import smoke_config

SIZE = 8  # dataset.image_size of the tiny folders; their good images are SIZE x SIZE
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def noise_jpeg(height=64, width=64, mode="RGB") -> bytes:
    """A JPEG with enough entropy-coded data to be cut or damaged in its middle."""
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, format="JPEG")
    return buffer.getvalue()


def corrupt_inside(jpeg: bytes) -> bytes:
    """A complete-looking JPEG (whole header, ends with the EOI marker) whose scan data starts
    with a run of 0xFF that libjpeg rejects: only a full decode finds it."""
    scan = jpeg.index(b"\xff\xda") + 14  # the scan data after the 3-component SOS header
    return jpeg[:scan] + b"\xff" * 10 + jpeg[scan + 10 :]


def image_bytes(fmt: str, height=SIZE, width=SIZE, mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(id_image(0, max(height, width))[:height, :width]).convert(mode).save(
        buffer, format=fmt
    )
    return buffer.getvalue()


# kind -> (file content, or how to make the entry at a path; words in the one error line)
BAD_KINDS = {
    "empty": (b"", "is empty (0 bytes)"),
    "truncated": (noise_jpeg()[:1500], "is a truncated or corrupt JPEG file"),
    "truncated header": (noise_jpeg()[:300], "is a truncated or corrupt JPEG file"),
    "text named .jpg": (b"<html>404 Not Found</html>\n", "is not an image"),
    "TIFF named .jpg": (image_bytes("TIFF"), "is a TIFF image, which TensorFlow does not decode"),
    "missing (dangling link)": ("symlink", "does not exist"),
    "unreadable (a directory)": ("directory", "cannot be read (Is a directory)"),
}


def make_bad(path, content) -> None:
    if content == "symlink":
        os.symlink(str(path) + ".gone", path)
    elif content == "directory":
        os.makedirs(path)
    else:
        with open(path, "wb") as f:
            f.write(content)


@pytest.fixture
def folder(tmp_path):
    """An image folder: train 2 classes x 4 PNGs, test 2 classes x 2 JPEGs, all SIZE x SIZE;
    views cifar_test (exact size) for both splits."""
    write_images(tmp_path, [f"train/c{c}/{i}.png" for c in range(2) for i in range(4)])
    write_images(tmp_path, [f"test/c{c}/{i}.jpg" for c in range(2) for i in range(2)], "JPEG")
    return dataset_config(
        source="image_folder",
        name="tiny",
        num_classes=2,
        imbalance_factor=0.0,
        image_root=str(tmp_path),
        image_size=SIZE,
        train_view="cifar_test",
        eval_view="cifar_test",
        cache=False,
    )


# ------------------------------------------------------------------ the check at open time


@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("kind", list(BAD_KINDS))
def test_each_bad_file_kind_is_one_error_line_naming_the_file(folder, capsys, kind, split):
    content, words = BAD_KINDS[kind]
    path = os.path.join(folder.image_root, split, "c1", "bad.jpg")
    make_bad(path, content)
    line = one_error_line(capsys, lambda: data.get_dataset_info(folder))
    assert f"{path} {words}" in line, line
    which = "training" if split == "train" else "evaluation"
    assert f"1 bad file in the {which} split" in line and "on_bad_file=skip" in line


def test_a_split_list_names_its_bad_file_and_counts_them_all(tmp_path, capsys):
    rel = [f"img/{i}.png" for i in range(6)]
    write_images(tmp_path, rel)
    (tmp_path / "img" / "2.png").write_bytes(b"")
    (tmp_path / "img" / "4.png").write_bytes(b"GIF89a")  # a GIF header and nothing else
    (tmp_path / "train.txt").write_text("".join(f"{p} {i % 2}\n" for i, p in enumerate(rel)))
    (tmp_path / "eval.txt").write_text("img/0.png 0\nimg/1.png 1\n")
    cfg = dataset_config(
        source="split_list",
        num_classes=2,
        imbalance_factor=0.0,
        image_root=str(tmp_path),
        train_list=str(tmp_path / "train.txt"),
        eval_list=str(tmp_path / "eval.txt"),
        image_size=SIZE,
        cache=False,
    )
    line = one_error_line(capsys, lambda: data.get_dataset_info(cfg))
    assert f"{tmp_path}/img/2.png is empty (0 bytes); 2 bad files in the training split" in line


def test_an_image_of_the_wrong_size_for_the_eval_view_is_refused_before_training(folder, capsys):
    """The reported case: a 4000x3000 photo among small images that the CIFAR test view takes
    as they are (8x8 here, 32x32 in CIFAR); only its header is read."""
    path = os.path.join(folder.image_root, "test", "c0", "big.jpg")
    Image.new("RGB", (4000, 3000)).save(path, format="JPEG")
    line = one_error_line(capsys, lambda: data.get_dataset_info(folder))
    assert (
        f"{path} is 4000x3000 pixels but view 'cifar_test' takes exactly 8x8 (dataset.eval_view, "
        "dataset.image_size=8)"
    ) in line
    folder.eval_view = "resize_center_crop"  # a view that resizes takes it
    assert data.get_dataset_info(folder).num_eval == 5


def smoke_on_folder(root, **overrides):
    """The smoke config (10 classes, 32x32 views) over an image folder at `root`: 2 training
    and 1 evaluation PNG per class."""
    size = 32
    for split, per_class in (("train", 2), ("test", 1)):
        for c in range(10):
            os.makedirs(root / split / f"c{c}")
            for i in range(per_class):
                (root / split / f"c{c}" / f"{i}.png").write_bytes(encode(id_image(i, size)))
    fields = {
        "dataset.source": "image_folder",
        "dataset.image_root": str(root),
        "dataset.imbalance_factor": 0.0,
        "dataset.cache": False,
    }
    return smoke_config(**{**fields, **overrides})


def test_training_stops_at_a_bad_file_before_any_compute_and_writes_nothing(tmp_path, capsys):
    from ncl_jax.training.loop import train_and_evaluate

    config = smoke_on_folder(tmp_path / "data")
    bad = tmp_path / "data" / "train" / "c3" / "1.png"
    bad.write_bytes(b"")
    workdir = tmp_path / "w"
    line = one_error_line(capsys, lambda: train_and_evaluate(config, str(workdir)))
    assert f"{bad} is empty (0 bytes)" in line
    assert not workdir.exists()


def test_training_under_skip_writes_the_bad_files_into_the_workdir(tmp_path, monkeypatch):
    from ncl_jax.training import loop

    class Stop(Exception):
        """Raised where the step would be built: what comes before it is under test."""

    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(loop.builders, "make_step_config", stop)
    config = smoke_on_folder(tmp_path / "data", **{"dataset.on_bad_file": "skip"})
    bad = tmp_path / "data" / "test" / "c7" / "0.png"
    bad.write_bytes(b"GIF89a")
    workdir = tmp_path / "w"
    with pytest.raises(Stop):
        loop.train_and_evaluate(config, str(workdir))
    listed = (workdir / file_check.BAD_FILES_NAME).read_text()
    assert listed.startswith(f"{bad}\tis a truncated or corrupt GIF file (Invalid GIF data")
    assert listed.count("\n") == 1


def test_the_header_check_passes_every_file_the_pipeline_decodes(folder):
    """It never refuses more than TensorFlow: JPEGs with trailing bytes (no final marker),
    CMYK and grayscale JPEGs, RGBA PNGs, GIF, BMP, WebP, whatever their file name says."""
    jpeg = noise_jpeg(SIZE, SIZE)
    unusual = {
        "trailing.jpg": jpeg + b"appended by a web server",
        "cmyk.jpg": noise_jpeg(SIZE, SIZE, "CMYK"),
        "gray.jpg": noise_jpeg(SIZE, SIZE, "L"),
        "rgba.png": image_bytes("PNG", mode="RGBA"),
        "gif.png": image_bytes("GIF"),
        "bmp.jpg": image_bytes("BMP"),
        "webp.jpg": image_bytes("WEBP"),
    }
    for name, content in unusual.items():
        with open(os.path.join(folder.image_root, "train", "c0", name), "wb") as f:
            f.write(content)
        image = tf.io.decode_image(content, channels=3, expand_animations=False)
        assert image.shape == (SIZE, SIZE, 3), name
    assert data.get_dataset_info(folder).class_counts.tolist() == [4 + len(unusual), 4]


@pytest.mark.parametrize(
    "view, size, height, width, fits",
    [
        ("cifar_test", 8, 8, 8, True),
        ("cifar_test", 8, 8, 9, False),
        ("cifar_standard", 16, 8, 30, True),  # 8 + 2 * 4 padding = 16: one crop window
        ("cifar_standard", 16, 7, 30, False),
        ("cifar_randaugment", 16, 30, 7, False),
        ("resize_center_crop", 16, 3, 500, True),
    ],
)
def test_the_size_rule_says_exactly_when_the_view_fails(view, size, height, width, fits):
    """input_size_problem against the real view on such an image."""
    problem = augment.input_size_problem(view, size, height, width)
    make = augment.make_view(view, image_size=size, normalization="cifar")
    image = tf.zeros([height, width, 3], tf.uint8)
    try:
        make(image, tf.constant([0, 0], tf.int64))
        ran = True
    except tf.errors.InvalidArgumentError:
        ran = False
    assert ran is fits and (problem is None) is fits, problem


def test_checks_run_in_threads_keep_the_list_order_and_show_progress(monkeypatch, capsys):
    monkeypatch.setattr(file_check, "PROGRESS_FROM", 10)
    paths = [f"f{i}" for i in range(40)]
    bad = file_check.find_bad_files(
        paths, lambda p: "is odd" if int(p[1:]) % 2 else None, what="the list", threads=8
    )
    assert [str(b) for b in bad] == [f"f{i} is odd" for i in range(1, 40, 2)]
    assert "checking the list" in capsys.readouterr().err  # tqdm's count, rate and ETA
    monkeypatch.setattr(file_check, "PROGRESS_FROM", 41)
    file_check.find_bad_files(paths, lambda p: None, what="the list")
    assert capsys.readouterr().err == ""


def test_on_bad_file_is_a_validated_choice():
    assert smoke_config().dataset.on_bad_file == "error"
    with pytest.raises(ConfigError, match=r"dataset.on_bad_file='ignore' is unknown"):
        validate_config(smoke_config(**{"dataset.on_bad_file": "ignore"}), num_devices=8)


# ------------------------------------------------------------------ on_bad_file=skip


def test_skip_leaves_bad_files_out_and_lists_them(folder, tmp_path):
    make_bad(os.path.join(folder.image_root, "train", "c1", "x.jpg"), b"")
    make_bad(os.path.join(folder.image_root, "train", "c0", "y.jpg"), b"not an image")
    make_bad(os.path.join(folder.image_root, "test", "c0", "z.jpg"), image_bytes("JPEG", 9, 9))
    folder.on_bad_file = "skip"
    info = data.get_dataset_info(folder)
    assert info.class_counts.tolist() == [4, 4] and info.num_eval == 4
    skipped = datasets.skipped_files(folder)
    assert [os.path.basename(b.path) for b in skipped] == ["y.jpg", "x.jpg", "z.jpg"]
    # What training reads holds no bad file: a whole epoch and the evaluation run.
    for batch in data.train_iterator(
        folder, global_batch_size=4, seed=0, epoch=0, num_local_devices=2
    ):
        assert batch["image"].shape == (2, 2, SIZE, SIZE, 3)
    assert (
        sum(
            b["mask"].sum()
            for b in data.eval_iterator(folder, global_batch_size=4, num_local_devices=2)
        )
        == 4
    )
    listed = datasets.write_skipped_files(folder, str(tmp_path))
    assert listed == str(tmp_path / file_check.BAD_FILES_NAME)
    lines = (tmp_path / file_check.BAD_FILES_NAME).read_text().splitlines()
    assert lines == [f"{b.path}\t{b.reason}" for b in skipped] and len(lines) == 3
    assert lines[0].endswith(
        "y.jpg\tis not an image (Unknown image file format. One of JPEG, "
        "JPEG XL, PNG, GIF, BMP, WebP required)"
    )


def test_skip_that_empties_a_class_is_refused(folder):
    for i in range(4):
        open(os.path.join(folder.image_root, "train", "c1", f"{i}.png"), "wb").close()
    folder.on_bad_file = "skip"
    with pytest.raises(DataError, match="class 1 has 0 images"):
        data.get_dataset_info(folder)


def test_nothing_is_written_when_no_file_was_left_out(folder, tmp_path):
    folder.on_bad_file = "skip"
    workdir = tmp_path / "w"
    workdir.mkdir()
    assert datasets.write_skipped_files(folder, str(workdir)) is None
    assert not list(workdir.iterdir())


# ------------------------------------------------------------------ the pipeline names the file


def test_a_file_bad_inside_passes_the_header_check_and_the_pipeline_names_it(folder, capsys):
    path = os.path.join(folder.image_root, "train", "c1", "0.png")
    with open(path, "wb") as f:
        f.write(corrupt_inside(noise_jpeg(SIZE, SIZE)))
    data.get_dataset_info(folder)  # the header looks whole

    def epoch():
        for _ in data.train_iterator(
            folder, global_batch_size=4, seed=0, epoch=0, num_local_devices=2
        ):
            pass

    line = one_error_line(capsys, epoch)
    assert f"{path} is a truncated or corrupt JPEG file (jpeg::Uncompress failed" in line
    assert "met by the input pipeline in training epoch 0" in line


def test_a_file_that_goes_bad_after_the_check_is_named_by_the_pipeline(folder, capsys):
    folder.cache = True  # the check ran once, when the dataset was opened
    data.get_dataset_info(folder)
    train_file = os.path.join(folder.image_root, "train", "c0", "3.png")
    open(train_file, "wb").close()
    line = one_error_line(
        capsys,
        lambda: list(
            data.train_iterator(
                folder, global_batch_size=4, seed=1, epoch=0, num_local_devices=2, start_step=0
            )
        ),
    )
    assert f"{train_file} is empty (0 bytes); met by the input pipeline in training epoch 0" in line
    eval_file = os.path.join(folder.image_root, "test", "c1", "1.jpg")
    with open(eval_file, "wb") as f:
        f.write(image_bytes("JPEG", height=30, width=40))
    line = one_error_line(
        capsys, lambda: list(data.eval_iterator(folder, global_batch_size=4, num_local_devices=2))
    )
    assert f"{eval_file} is 40x30 pixels but view 'cifar_test' takes exactly 8x8" in line
    assert "met by the input pipeline in evaluation" in line


# ------------------------------------------------------------------ the whole-dataset check


def test_check_all_files_decodes_every_file_and_reports_each_bad_one(folder):
    inside = os.path.join(folder.image_root, "train", "c0", "1.png")
    with open(inside, "wb") as f:
        f.write(corrupt_inside(noise_jpeg(SIZE, SIZE)))
    empty = os.path.join(folder.image_root, "test", "c1", "0.jpg")
    open(empty, "wb").close()
    big = os.path.join(folder.image_root, "test", "c1", "1.jpg")
    with open(big, "wb") as f:
        f.write(image_bytes("JPEG", height=9, width=9))
    report = datasets.check_all_files(folder, threads=3)
    assert report["train"][0] == 8 and report["eval"][0] == 4
    assert [b.path for b in report["train"][1]] == [inside]
    assert [str(b) for b in report["eval"][1]] == [
        f"{empty} is empty (0 bytes)",
        f"{big} is 9x9 pixels but view 'cifar_test' takes exactly 8x8 (dataset.eval_view, "
        "dataset.image_size=8)",
    ]
    folder.source = "tfds"
    with pytest.raises(ConfigError, match="has no image files to check"):
        datasets.check_all_files(folder)


@pytest.mark.slow
def test_check_dataset_program_prints_each_bad_file_and_exits_nonzero(tmp_path):
    write_images(tmp_path, [f"train/c{c}/{i}.png" for c in range(10) for i in range(2)])
    write_images(tmp_path, [f"test/c{c}/0.png" for c in range(10)])
    open(tmp_path / "train" / "c2" / "1.png", "wb").close()
    (tmp_path / "test" / "c4" / "0.png").write_bytes(b"text")
    command = [
        sys.executable,
        "-m",
        "ncl_jax.check_dataset",
        "--config=configs/smoke.py",
        "--config.dataset.source=image_folder",
        f"--config.dataset.image_root={tmp_path}",
        "--config.dataset.imbalance_factor=0",
        "--config.dataset.image_size=8",
    ]
    env = {**os.environ, "PYTHONPATH": REPO}
    done = run_program(command, env=env)
    assert done.returncode == 1, done.stderr
    assert done.stdout.splitlines() == [
        f"{tmp_path}/train/c2/1.png is empty (0 bytes)",
        f"{tmp_path}/test/c4/0.png is not an image (Unknown image file format. One of JPEG, "
        "JPEG XL, PNG, GIF, BMP, WebP required)",
        done.stdout.splitlines()[-1],
    ]
    assert done.stdout.splitlines()[-1].startswith("checked 30 files in ")
    assert done.stdout.splitlines()[-1].endswith(
        "(training 20 (1 bad), evaluation 10 (1 bad)): 2 bad"
    )
    assert "Traceback" not in done.stderr
