"""The single-expert deployment artefact: `ncl_jax.export` and `ncl_jax.predict`.

One tiny run (3 experts, 8x8 images, 10 classes, MoCo on, perturbed BatchNorm statistics)
is saved the way training saves it: best_single/4 (expert 1 best), checkpoints/5 (a SIGTERM
checkpoint: its last_eval is stale) and checkpoints/6 (the final epoch, expert 2 best).
The key check: the exported function's logits equal `train_step.eval_step`'s for that
expert, at batch sizes the export never saw.
"""

import functools
import json
import os
import shutil
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from ncl_jax import cli
from ncl_jax.config import builders
from ncl_jax.core.train_step import eval_step
from ncl_jax.deploy import export, predict
from ncl_jax.errors import ConfigError
from ncl_jax.training import checkpointing
from ncl_jax.training.checkpointing import RunCheckpoints
from tests.programs import run_program
from tests.tiny import IMAGE, NUM_CLASSES, class_counts, tiny_config

NAMES = [f"name{i}" for i in range(NUM_CLASSES)]
NUM_EPOCHS = 3


def _evaluation(top1s, epoch, step):
    experts = [{"top1": t, "many": t, "medium": t, "few": None} for t in top1s]
    best = int(np.argmax(top1s))
    return {
        "epoch": epoch,
        "step": step,
        "num_examples": 100,
        "experts": experts,
        "ensemble": {"top1": max(top1s) - 1.0, "many": 0.0, "medium": 0.0, "few": None},
        "best_single": {**experts[best], "expert": best},
        "aggregation": "mean_logits",
    }


def _random_state(abstract, seed):
    """A train state of `builders.abstract_state`'s shapes with random values: independent
    experts and non-trivial BatchNorm running statistics (variances in [0.5, 1.5]), so that
    train=False and the expert index are really checked; no initialiser is compiled."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        if not np.issubdtype(leaf.dtype, np.floating):
            return np.zeros(leaf.shape, leaf.dtype)
        if jax.tree_util.keystr(path).endswith("['var']"):
            return rng.uniform(0.5, 1.5, leaf.shape).astype(leaf.dtype)
        return (0.3 * rng.standard_normal(leaf.shape)).astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, abstract)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(workdir, config, eval_fn, {step: state}) of a tiny saved run; eval_fn is the jitted
    `train_step.eval_step` of its StepConfig."""
    config = tiny_config(num_experts=3)
    config.num_epochs = NUM_EPOCHS
    workdir = str(tmp_path_factory.mktemp("run"))
    step_cfg = builders.make_step_config(config, class_counts=class_counts(), steps_per_epoch=2)
    abstract = builders.abstract_state(config, step_cfg)
    states = {step: _random_state(abstract, step) for step in (4, 5, 6)}
    at4 = _evaluation([10.0, 30.0, 20.0], epoch=2, step=4)
    at6 = _evaluation([50.0, 40.0, 60.0], epoch=3, step=6)
    best_evals = {"single": at4, "ensemble": at4}
    strip = lambda ev: {k: v for k, v in ev.items() if k not in ("epoch", "step")}
    meta4 = {"epoch": 2, "step": 4, "best": {}, "last_eval": strip(at4), "best_evals": best_evals}
    checkpoints = RunCheckpoints(workdir)
    checkpoints.check_or_write_config(config)
    checkpoints.save("best_single", 4, states[4], meta4)
    checkpoints.save("checkpoints", 4, states[4], meta4)
    checkpoints.save("checkpoints", 5, states[5], {**meta4, "step": 5})  # SIGTERM mid-epoch 2
    meta6 = {"epoch": 3, "step": 6, "best": {}, "last_eval": strip(at6), "best_evals": best_evals}
    checkpoints.save("checkpoints", 6, states[6], meta6)
    checkpoints.wait()
    checkpoints.close()
    return workdir, config, jax.jit(functools.partial(eval_step, cfg=step_cfg)), states


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    """The default export (best_single, expert=best) of the run, with given class names, into
    an existing empty directory (allowed: it is replaced by the finished one)."""
    workdir = run[0]
    out = str(tmp_path_factory.mktemp("export") / "model")
    os.mkdir(out)
    metadata = export.export_workdir(workdir, out, class_names=NAMES)
    return out, metadata


def _images(batch, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (batch, IMAGE, IMAGE, 3), np.uint8)


def _normalized(images, config):
    """(pixel / 255 - mean) / std with the float32 constants of augment.make_view."""
    mean, std = export.normalization_constants(config.dataset.normalization)
    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    scale, offset = (1 / (255 * std)).astype(np.float32), (-mean / std).astype(np.float32)
    return images.astype(np.float32) * scale + offset


def _eval_logits(run, step, images):
    """eval_step's logits [K, b, C] of the state saved at `step` (one compile per batch size)."""
    _, config, eval_fn, states = run
    return np.asarray(eval_fn(states[step], {"image": _normalized(images, config)}))


def test_exported_expert_equals_eval_step_at_any_batch_size(run, exported):
    out, metadata = exported
    assert sorted(os.listdir(out)) == [export.ARTEFACT, export.METADATA]
    # Default: the best_single checkpoint, and its best expert from the metadata (expert 1).
    assert metadata["source"]["checkpoint_kind"] == "best_single"
    assert (metadata["source"]["depth"], metadata["source"]["width"]) == (1, 4)  # tiny_config
    assert (
        metadata["source"]["checkpoint_step"] == 4 and metadata["source"]["checkpoint_epoch"] == 2
    )
    assert (metadata["expert"], metadata["expert_top1"], metadata["expert_selection"]) == (
        1,
        30.0,
        "best",
    )
    assert metadata["class_names"] == NAMES and metadata["num_classes"] == NUM_CLASSES
    assert set(metadata["platforms"]) == {"cpu", "cuda"}
    with open(os.path.join(out, export.METADATA)) as f:
        assert json.load(f) == metadata

    model = predict.ExportedModel(out)
    (aval,) = model.exported.in_avals
    assert str(aval.shape[0]) == "b" and aval.shape[1:] == (IMAGE, IMAGE, 3)
    assert aval.dtype == np.uint8
    images = _images(7)
    want = _eval_logits(run, 4, images)
    assert np.abs(want[0] - want[1]).max() > 0.1  # the experts differ: expert 1 is identified
    got = []
    for part in (images[:5], images[5:]):  # the batch dimension is symbolic: any size runs
        got.append(model.logits(part))
        assert got[-1].shape == (len(part), NUM_CLASSES) and got[-1].dtype == np.float32
    diff = np.abs(np.concatenate(got) - want[1]).max()
    assert diff <= 1e-5, diff


def test_latest_checkpoint_takes_the_final_epochs_best_expert(run, tmp_path):
    out = str(tmp_path / "latest")
    metadata = export.export_workdir(run[0], out, checkpoint="latest", class_names=NAMES)
    assert metadata["source"]["checkpoint_step"] == 6 and metadata["expert"] == 2
    assert metadata["expert_top1"] == 60.0 and metadata["ensemble_top1"] == 59.0
    images = _images(7)
    got = predict.ExportedModel(out).logits(images)
    np.testing.assert_allclose(got, _eval_logits(run, 6, images)[2], atol=1e-5, rtol=0)


def test_recorded_evaluation_is_only_one_of_these_weights():
    at4 = _evaluation([1.0, 3.0, 2.0], 2, 4)
    meta = {"epoch": 2, "step": 5, "last_eval": at4, "best_evals": {"single": at4}}
    assert export.recorded_evaluation(meta, 4, NUM_EPOCHS)["step"] == 4
    assert export.recorded_evaluation(meta, 5, NUM_EPOCHS) is None  # stale last_eval
    final = {"epoch": NUM_EPOCHS, "step": 6, "last_eval": at4, "best_evals": {}}
    assert export.recorded_evaluation(final, 6, NUM_EPOCHS)["step"] == 6
    assert export.choose_expert(None, at4, 3, "w") == 1
    assert export.choose_expert(0, None, 3, "w") == 0
    with pytest.raises(ConfigError, match="pass --expert=K with K in 0..2"):
        export.choose_expert(None, None, 3, "w/checkpoints/5")
    assert export.parse_expert("best") is None and export.parse_expert("2") == 2
    assert checkpointing.parse_checkpoint("7") == 7 and checkpointing.parse_checkpoint(None) is None


def _one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def _refused(capsys, fn):
    with pytest.raises(SystemExit) as exit_info:
        cli.run_cli(fn)
    assert exit_info.value.code == 2
    return _one_error_line(capsys)


def _mismatched_copy(run, tmp_path):
    """A copy of the run whose config.json says width 8: its checkpoints cannot restore."""
    copy = tmp_path / "mismatch"
    shutil.copytree(run[0], copy)
    config = json.loads((copy / "config.json").read_text())
    config["model"]["width"] = 8
    (copy / "config.json").write_text(json.dumps(config))
    return str(copy)


@pytest.mark.parametrize(
    "case, fragments",
    [
        ("no_workdir", ("no config.json", "not an ncl_jax workdir")),
        ("expert_range", ("--expert=3 is out of range", "3 experts (0..2)")),
        ("expert_word", ("--expert='first' is not valid",)),
        ("unknown_best", ("best expert of", "checkpoints/5 is unknown", "pass --expert=K")),
        ("no_step", ("no checkpoint at step 9", "available steps: [4, 5, 6]")),
        ("mismatch", ("does not match the run's config", "params['encoder']", "untouched")),
        ("out_not_empty", ("already exists and is not empty", "never overwrites", "_2")),
        ("out_unwritable", ("cannot be created", "not a writable directory")),
    ],
)
def test_bad_export_input_is_one_line_and_writes_nothing(run, tmp_path, capsys, case, fragments):
    workdir, out = run[0], tmp_path / "out"
    kwargs = {"class_names": NAMES}
    if case == "no_workdir":
        workdir = str(tmp_path / "empty")
    elif case == "expert_range":
        kwargs["expert"] = 3
    elif case == "expert_word":
        kwargs["expert"] = "first"
    elif case == "unknown_best":
        kwargs["checkpoint"] = 5
    elif case == "no_step":
        kwargs["checkpoint"] = "9"
    elif case == "mismatch":
        workdir = _mismatched_copy(run, tmp_path)
    elif case == "out_not_empty":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    elif case == "out_unwritable":
        (tmp_path / "a_file").write_text("x")
        out = tmp_path / "a_file" / "model"
    before = sorted(p.name for p in tmp_path.iterdir())
    line = _refused(capsys, lambda: export.export_workdir(workdir, str(out), **kwargs))
    assert all(fragment in line for fragment in fragments), line
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing new, no temp dir
    if case == "out_not_empty":
        assert os.listdir(out) == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"


def _write_png(path, array):
    Image.fromarray(array).save(path)
    return str(path)


def test_predict_round_trip_top5(run, exported, tmp_path):
    out, _ = exported
    small = _images(1, seed=11)[0]
    paths = [
        _write_png(tmp_path / "a.png", small),  # exactly the model's size: used as it is
        _write_png(tmp_path / "b.png", _images(1, seed=12)[0].repeat(3, 0).repeat(2, 1)),
    ]
    results = predict.predict_files(out, paths)
    assert [p for p, _ in results] == paths
    for _, top in results:
        probs = [p for _, p in top]
        assert len(top) == 5 and all(name in NAMES for name, _ in top)
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    # the 8x8 PNG's probabilities are the softmax of eval_step's logits of expert 1
    batch = np.concatenate([small[None], _images(6)])
    want = predict.softmax(_eval_logits(run, 4, batch)[1])[0]
    order = np.argsort(-want)[:5]
    assert [n for n, _ in results[0][1]] == [NAMES[c] for c in order]
    np.testing.assert_allclose([p for _, p in results[0][1]], want[order], atol=1e-6)
    line = predict.format_line(*results[0])
    assert line.startswith(f"{paths[0]}: {NAMES[order[0]]} 0.") and len(line.split(", ")) == 5


def test_predict_resize_and_center_crop_follow_the_eval_view(tmp_path):
    """resize_center_crop: shorter side to R (torchvision Resize), then the centred crop."""
    image = np.zeros((40, 60, 3), np.uint8)
    image[:, 30:] = 255
    prep = {"resize_shorter": 20, "center_crop": 16, "resize": None}
    got = predict.load_image(_write_png(tmp_path / "wide.png", image), prep, 16)
    want = np.asarray(
        Image.fromarray(image).resize((30, 20), Image.Resampling.BILINEAR).crop((7, 2, 23, 18))
    )
    np.testing.assert_array_equal(got, want)
    assert got.shape == (16, 16, 3)


@pytest.mark.parametrize(
    "case, fragments",
    [
        ("missing_image", ("does not exist",)),
        ("not_an_image", ("is not an image PIL can read",)),
        ("no_model", ("holds no exported model", "python -m ncl_jax.export")),
        ("no_artefact", ("has model.json but no model.jaxexport",)),
        ("damaged", ("does not match the checksum",)),
        ("no_images", ("no image given",)),
    ],
)
def test_bad_predict_input_is_one_line(exported, tmp_path, capsys, case, fragments):
    model = exported[0]
    image = _write_png(tmp_path / "ok.png", _images(1)[0])
    paths = [image]
    if case == "missing_image":
        paths.append(str(tmp_path / "nope.png"))
    elif case == "not_an_image":
        (tmp_path / "notes.png").write_text("not pixels")
        paths.append(str(tmp_path / "notes.png"))
    elif case == "no_images":
        paths = []
    elif case in ("no_model", "no_artefact", "damaged"):
        model = str(tmp_path / "model")
        os.mkdir(model)
        if case != "no_model":
            shutil.copy(os.path.join(exported[0], export.METADATA), model)
        if case == "damaged":
            with open(os.path.join(exported[0], export.ARTEFACT), "rb") as f:
                data = bytearray(f.read())
            data[len(data) // 2] ^= 0xFF
            with open(os.path.join(model, export.ARTEFACT), "wb") as f:
                f.write(bytes(data))
    line = _refused(capsys, lambda: predict.predict_files(model, paths))
    assert all(fragment in line for fragment in fragments), line
    assert capsys.readouterr().out == ""


def test_class_names_come_from_the_source(tmp_path):
    """DatasetInfo.class_names and datasets.class_names: image-folder names; TFDS label names."""
    from ncl_jax.data import datasets
    from tests.data_helpers import dataset_config, write_images

    write_images(
        tmp_path, ["train/cat/0.png", "train/dog/1.png", "test/cat/2.png", "test/dog/3.png"]
    )
    cfg = dataset_config(
        source="image_folder",
        image_root=str(tmp_path),
        num_classes=2,
        imbalance_factor=0.0,
        image_size=8,  # the images' size, which the CIFAR views take
    )
    assert datasets.class_names(cfg) == ("cat", "dog")
    assert datasets.get_dataset_info(cfg).class_names == ("cat", "dog")
    assert datasets.class_names(dataset_config(source="split_list")) is None
    tfds_dir = os.environ.get("TFDS_DATA_DIR", "")
    if os.path.isdir(os.path.join(tfds_dir, "cifar10_jpeg")):
        names = datasets.class_names(dataset_config(name="cifar10_jpeg", num_classes=10))
        assert names[:3] == ("airplane", "automobile", "bird") and len(names) == 10


def test_class_names_fall_back_to_placeholders_without_the_data(monkeypatch, tmp_path):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "no_data"))
    config = tiny_config()  # cifar100 with 10 classes: not prepared there, never downloaded
    names, source = export.lookup_class_names(config)
    assert names == [f"class_{i}" for i in range(NUM_CLASSES)] and source == "placeholder"
    assert not (tmp_path / "no_data").exists()


_FORBIDDEN = ("tensorflow", "tensorflow_datasets", "flax", "orbax", "ml_collections", "optax")
_NCL_HEAVY = (
    "ncl_jax.models",
    "ncl_jax.data",
    "ncl_jax.core",
    "ncl_jax.config",
    "ncl_jax.training",
    "ncl_jax.evaluation",
)

_PREDICT_WRAPPER = """
import json, sys
sys.argv = ["ncl-predict", *sys.argv[1:]]
from ncl_jax.predict import cli
try:
    cli()
except SystemExit as e:
    assert not e.code, e.code
print("MODULES " + json.dumps(sorted(sys.modules)))
"""


@pytest.mark.slow
def test_export_and_predict_command_lines(run, tmp_path):
    """`python -m ncl_jax.export` writes the artefact; the predict CLI prints top-5 lines and
    imports no TensorFlow, TFDS, Flax, Orbax or ncl_jax model/data/training code."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    out = tmp_path / "model"
    export_cmd = [sys.executable, "-m", "ncl_jax.export", f"--workdir={run[0]}", f"--out={out}"]
    done = run_program(export_cmd, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "expert 1 of 3 (top-1 30.00% on test) from best_single/4" in done.stdout
    again = run_program(export_cmd, env=env)
    assert again.returncode == 2 and again.stderr.strip().splitlines()[-1].startswith("error: ")
    paths = [_write_png(tmp_path / f"{i}.png", _images(1, seed=i)[0]) for i in range(2)]
    done = run_program([sys.executable, "-c", _PREDICT_WRAPPER, f"--model={out}", *paths], env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    modules = json.loads(lines[-1].removeprefix("MODULES "))
    assert [line.split(": ")[0] for line in lines[:-1]] == paths
    assert all(len(line.split(": ", 1)[1].split(", ")) == 5 for line in lines[:-1])
    bad = [
        m
        for m in modules
        if m.split(".")[0] in _FORBIDDEN or any(m.startswith(h) for h in _NCL_HEAVY)
    ]
    assert not bad, bad
    assert "jax" in modules and "PIL.Image" in modules


def test_restoring_under_another_config_is_refused_for_every_reader(run):
    """Orbax restores saved shapes whatever the target; RunCheckpoints.restore (used by
    training, evaluate, analyze and export) names the difference instead."""
    from ncl_jax.errors import CheckpointError

    workdir, config, _, _ = run
    wider = tiny_config(num_experts=3)
    wider.model.width = 8
    step_cfg = builders.make_step_config(wider, class_counts=class_counts(), steps_per_epoch=2)
    checkpoints = RunCheckpoints(workdir, read_only=True)
    try:
        with pytest.raises(CheckpointError, match=r"does not match the run's config \(\d+ arrays"):
            checkpoints.restore("checkpoints", 6, builders.abstract_state(wider, step_cfg))
    finally:
        checkpoints.close()
