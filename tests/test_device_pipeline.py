"""The prepared cache (ncl_jax/data/cache.py) and the device-resident pipeline
(ncl_jax/data/device_pipeline.py), with a stand-in for the JAX views."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from ncl_jax import data
from ncl_jax.config.base import get_base_config
from ncl_jax.config.variants import resolve_config
from ncl_jax.data import cache, datasets, device_pipeline
from ncl_jax.data.datasets import ResolvedDataset
from ncl_jax.data.long_tail import DatasetInfo
from ncl_jax.data.splits import IndexedSplit
from ncl_jax.errors import ConfigError, DataError
from tests.device_helpers import id_images, install_fake_views, read_ids, write_tiny_cache
from tests.programs import run_program

REPO = pathlib.Path(__file__).resolve().parents[1]
SEED, EPOCH = 7, 3


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    install_fake_views(monkeypatch)
    return write_tiny_cache(tmp_path / "tiny.npz")


def _global(batches, key):
    """[steps, B, ...] from per-process lists of [D, b, ...] batches (process order)."""
    per_process = [
        np.stack([np.asarray(b[key]).reshape(-1, *np.shape(b[key])[2:]) for b in bs])
        for bs in batches
    ]
    return np.concatenate(per_process, axis=1)


def _train(cfg, *, devices=8, process=0, processes=1, start=0, two_views=True, batch=16):
    return list(
        data.train_iterator(
            cfg,
            global_batch_size=batch,
            seed=SEED,
            epoch=EPOCH,
            start_step=start,
            two_views=two_views,
            num_local_devices=devices,
            process_index=process,
            process_count=processes,
        )
    )


def test_cache_round_trip_keeps_every_array_and_the_subset_parameters(cfg):
    prepared = cache.read_cache(cfg.cache_path)
    assert prepared.train_images.shape == (60, 8, 8, 3) and prepared.eval_images.shape[0] == 37
    np.testing.assert_array_equal(read_ids_raw(prepared.train_images), np.arange(60))
    np.testing.assert_array_equal(read_ids_raw(prepared.eval_images), 1000 + np.arange(37))
    assert prepared.class_names == tuple(f"c{i}" for i in range(10))
    assert prepared.params["imbalance_factor"] == 100.0 and prepared.params["subset_seed"] == 0
    np.testing.assert_array_equal(
        prepared.class_counts, np.bincount(prepared.train_labels, minlength=10)
    )
    resolved = datasets.resolve(cfg)
    assert resolved.info.num_train == 60 and resolved.info.num_eval == 37
    np.testing.assert_array_equal(resolved.info.class_counts, prepared.class_counts)
    assert datasets.class_names(cfg) == prepared.class_names


def read_ids_raw(images):
    pixels = images[:, 0, 0].astype(np.int64)
    return pixels[:, 0] + 256 * pixels[:, 1]


def test_cache_refuses_damage_a_missing_file_overwriting_and_another_subset(cfg, tmp_path):
    stored = dict(np.load(cfg.cache_path))
    stored["train_labels"] = stored["train_labels"].copy()
    stored["train_labels"][0] += 1
    damaged = tmp_path / "damaged.npz"
    np.savez(damaged, **stored)
    with pytest.raises(DataError, match="fails its checksum"):
        cache.read_cache(str(damaged))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable"):
        cache.read_cache(str(tmp_path / "junk.npz"))
    with pytest.raises(ConfigError, match="does not exist"):
        cache.read_cache(str(tmp_path / "missing.npz"))
    with pytest.raises(ConfigError, match="needs dataset.cache_path"):
        cache.read_cache("")
    with pytest.raises(ConfigError, match="exists; pass --overwrite"):
        write_tiny_cache(cfg.cache_path)
    cfg.imbalance_factor = 50.0
    with pytest.raises(ConfigError, match="imbalance_factor=50.0 but the cache"):
        datasets.resolve(cfg)


def test_batches_follow_the_epoch_order_with_one_key_per_example_and_view(cfg):
    (first, *_) = _train(cfg, devices=8)
    order = np.random.default_rng([SEED, EPOCH]).permutation(60)  # the tf.data epoch order
    ids = order[:16]
    np.testing.assert_array_equal(read_ids(first["image"]).reshape(-1), ids)
    np.testing.assert_array_equal(read_ids(first["key_image"]).reshape(-1), ids)
    labels = cache.read_cache(cfg.cache_path).train_labels
    np.testing.assert_array_equal(np.asarray(first["label"]).reshape(-1), labels[ids])
    assert first["image"].shape == (8, 2, 8, 8, 3) and first["image"].dtype == np.float32
    base = jax.random.fold_in(jax.random.key(SEED), EPOCH)
    for view, field, shift in ((0, "image", 0.0), (1, "key_image", 1.0)):
        keys = [jax.random.fold_in(jax.random.fold_in(base, p), view) for p in range(16)]
        want = jax.vmap(jax.random.uniform)(jax.numpy.stack(keys))
        got = np.asarray(first[field])[..., 1, 1, 0].reshape(-1) - 77 / 255 - shift
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_same_pixels_for_any_device_or_process_count_and_after_a_resume(cfg):
    reference = _global([_train(cfg, devices=1)], "image")
    assert reference.shape[:2] == (3, 16)  # 60 // 16 steps, the remainder dropped
    np.testing.assert_array_equal(_global([_train(cfg, devices=8)], "image"), reference)
    two_processes = [_train(cfg, devices=4, process=p, processes=2) for p in range(2)]
    np.testing.assert_array_equal(_global(two_processes, "image"), reference)
    np.testing.assert_array_equal(
        _global([_train(cfg, devices=8, start=2)], "image"), reference[2:]
    )
    assert _train(cfg, start=3) == []
    with pytest.raises(ConfigError, match="start_step=4"):
        _train(cfg, start=4)


def test_eval_batches_hold_every_example_once_and_pad_with_a_mask(cfg):
    batches = list(data.eval_iterator(cfg, global_batch_size=16, num_local_devices=8))
    assert len(batches) == 3
    mask = np.concatenate([np.asarray(b["mask"]).reshape(-1) for b in batches])
    ids = np.concatenate([read_ids(b["image"]).reshape(-1) for b in batches])
    labels = np.concatenate([np.asarray(b["label"]).reshape(-1) for b in batches])
    np.testing.assert_array_equal(mask, np.arange(48) < 37)
    np.testing.assert_array_equal(ids[mask], 1000 + np.arange(37))
    np.testing.assert_array_equal(labels[mask], cache.read_cache(cfg.cache_path).eval_labels)
    assert (labels[~mask] == 0).all()
    cfg.eval_max_examples = 5
    batches = list(data.eval_iterator(cfg, global_batch_size=16, num_local_devices=8))
    assert len(batches) == 1 and int(np.asarray(batches[0]["mask"]).sum()) == 5


def test_pipeline_choice(cfg, monkeypatch):
    assert device_pipeline.resolve_pipeline(cfg) == "device"  # auto: a cache is on the device
    assert not data.needs_tensorflow(cfg)
    cfg.pipeline = "tfdata"
    assert data.needs_tensorflow(cfg)
    cfg.pipeline = "fast"
    with pytest.raises(ConfigError, match="dataset.pipeline='fast' is unknown"):
        device_pipeline.resolve_pipeline(cfg)
    cfg.pipeline = "device"
    cfg.train_view = "imagenet_randaugment"
    with pytest.raises(ConfigError, match="'imagenet_randaugment' has no JAX implementation"):
        device_pipeline.resolve_pipeline(cfg)
    tfds = get_base_config().dataset
    assert device_pipeline.resolve_pipeline(tfds) == "tfdata"  # auto on a CPU keeps tf.data
    monkeypatch.delitem(sys.modules, device_pipeline.VIEW_MODULE)
    monkeypatch.setattr(device_pipeline, "VIEW_MODULE", "ncl_jax.data.no_such_views")
    cfg.train_view = "cifar_randaugment"
    with pytest.raises(ConfigError, match="JAX views: none"):
        device_pipeline.resolve_pipeline(cfg)


# Runs a program in-process with the stand-in JAX views installed, then reports whether
# TensorFlow was loaded. (Not blocked by an import hook as in test_benchmark.py: Orbax's
# paths ask importlib whether TensorFlow is installed, and a hook cannot answer "no".)
_REPORT_TF = """
import runpy, sys
from ncl_jax.data.device_pipeline import VIEW_MODULE
from tests.device_helpers import fake_view_module
sys.modules[VIEW_MODULE] = fake_view_module()
program, sys.argv = sys.argv[1], sys.argv[1:]
try:
    runpy.run_module(program, run_name="__main__")
except SystemExit as exit:
    assert not exit.code, exit.code
print("TF_LOADED", "tensorflow" in sys.modules, file=sys.stderr)
"""


def _run_script(script: str, *args: str, xla_flags: str = "") -> subprocess.CompletedProcess:
    """python -c SCRIPT ARGS in a fresh CPU-only process at the repo root; asserts exit 0."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla_flags, "PYTHONPATH": str(REPO)}
    result = run_program([sys.executable, "-c", script, *args], env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _run_without_tensorflow(program: str, *args: str) -> subprocess.CompletedProcess:
    result = _run_script(_REPORT_TF, program, *args)
    assert "TF_LOADED False" in result.stderr, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_training_evaluation_and_analysis_from_a_cache_import_no_tensorflow(tmp_path):
    cfg = write_tiny_cache(tmp_path / "tiny.npz")
    workdir, out = tmp_path / "run", tmp_path / "analysis"
    trained = _run_without_tensorflow(
        "ncl_jax.main",
        "--config=configs/smoke.py",
        f"--workdir={workdir}",
        "--config.dataset.source=cache",
        f"--config.dataset.cache_path={cfg.cache_path}",
        "--config.dataset.name=tiny",
        "--config.dataset.pipeline=device",
        "--config.dataset.image_size=8",
    )
    # Until the pipelines' gap is explained (docs/results.md), a device run says so.
    assert "trained below the tf.data pipeline" in trained.stderr
    result = json.loads((workdir / "result.json").read_text())
    assert result["step"] == 6 and not result["preempted"]
    logged = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "train/loss" in r] == [1, 2, 3, 4, 5, 6]
    evaluated = _run_without_tensorflow("ncl_jax.evaluate", f"--workdir={workdir}")
    assert "ensemble" in evaluated.stdout
    _run_without_tensorflow("ncl_jax.analyze", f"--workdir={workdir}", f"--out={out}")
    assert (out / "analysis.json").is_file()


# Device-pipeline batches (the real JAX RandAugment view) and a pmapped all-reduce, all
# dispatched ahead on 2 host devices, as a training loop does.
_DISPATCH_AHEAD = """
import sys
import jax, jax.numpy as jnp
from ncl_jax import data
from tests.device_helpers import write_tiny_cache
cfg = write_tiny_cache(sys.argv[1], num_train=640)
step = jax.pmap(lambda x, y: jax.lax.psum(jnp.mean(x) + jnp.sum(y), "i"), axis_name="i")
outs = []
for epoch in range(30):
    for b in data.train_iterator(cfg, global_batch_size=64, seed=1, epoch=epoch,
                                 num_local_devices=2):
        outs.append(step(b["image"], b["label"]))
jax.block_until_ready(outs)
print("DISPATCHED", len(outs))
"""


@pytest.mark.slow
def test_views_and_an_all_reduce_dispatched_far_ahead_on_cpu_devices_finish(tmp_path):
    """XLA:CPU aborted this (300 calls ahead; a host device waited past the all-reduce's
    rendezvous timeout) until the device pipeline waited for each batch's views on CPU."""
    two_devices = "--xla_force_host_platform_device_count=2"
    result = _run_script(_DISPATCH_AHEAD, str(tmp_path / "tiny.npz"), xla_flags=two_devices)
    assert "DISPATCHED 300" in result.stdout


def test_cache_stores_the_subset_rows_in_subset_order(tmp_path):
    # As a TFDS in-memory split after the long-tailed subset: storage rows chosen and reordered.
    storage = id_images(np.arange(20))
    rows = np.array([7, 3, 19, 0, 11, 4], np.int64)
    labels = np.array([0, 0, 1, 1, 1, 0], np.int64)
    train = IndexedSplit(labels=labels, rows=rows, images=storage)
    evals = IndexedSplit(labels=labels[:2], rows=np.array([5, 6]), images=storage)
    info = DatasetInfo("x", 2, np.array([3, 3]), 6, 2, None)
    cfg = get_base_config().dataset
    cfg.num_classes = 2
    cache.write_cache(str(tmp_path / "x.npz"), ResolvedDataset(info, train, evals), cfg)
    prepared = cache.read_cache(str(tmp_path / "x.npz"))
    np.testing.assert_array_equal(prepared.train_images, storage[rows])
    np.testing.assert_array_equal(prepared.eval_images, storage[[5, 6]])
    np.testing.assert_array_equal(prepared.train_labels, labels)
    assert prepared.class_names is None and prepared.params["num_classes"] == 2


def test_the_device_pipeline_refuses_a_dataset_read_from_files(monkeypatch):
    install_fake_views(monkeypatch)
    files = IndexedSplit(
        labels=np.zeros(2, np.int64), rows=np.arange(2), paths=np.array(["a", "b"])
    )
    info = DatasetInfo("folder", 2, np.array([1, 1]), 2, 2, None)
    monkeypatch.setattr(datasets, "resolve", lambda cfg: ResolvedDataset(info, files, files))
    cfg = get_base_config().dataset
    cfg.update(source="image_folder", name="folder", pipeline="device")
    with pytest.raises(ConfigError, match="is read from files: use --config.dataset.pipeline"):
        device_pipeline.resolve_pipeline(cfg)


def test_an_older_run_config_gets_the_pipeline_it_was_trained_with():
    saved = get_base_config().to_dict()
    del saved["dataset"]["pipeline"], saved["dataset"]["cache_path"]
    config = resolve_config(ml_collections.ConfigDict(saved))
    assert config.dataset.pipeline == "auto" and config.dataset.cache_path == ""
    assert device_pipeline.resolve_pipeline(config.dataset) == "tfdata"  # on this CPU host


@pytest.mark.parametrize("devices,processes", [(1, 1), (8, 1), (4, 2)])
def test_with_a_deterministic_view_both_pipelines_yield_the_same_batches(
    tmp_path, devices, processes
):
    """The two pipelines share everything but the random streams of their views: with the
    identity view (the real JAX one) the tf.data and device batches are equal bit for bit, so
    a difference in training between them can only come from the views' randomness (this is
    how docs/results.md's parity section rules out the batching, order and normalisation)."""
    cfg = write_tiny_cache(tmp_path / "tiny.npz")
    cfg.train_view = "cifar_test"
    batches = {}
    for pipeline in ("tfdata", "device"):
        cfg.pipeline = pipeline
        per_process = [
            _train(cfg, devices=devices, process=p, processes=processes, two_views=False)
            for p in range(processes)
        ]
        batches[pipeline] = {k: _global(per_process, k) for k in ("image", "label")}
    for key in ("image", "label"):
        np.testing.assert_array_equal(batches["tfdata"][key], batches["device"][key])
    assert batches["device"]["image"].shape == (3, 16, 8, 8, 3)
