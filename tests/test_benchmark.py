"""The benchmark CLI end to end: tiny networks, one timed step, no timing checked."""

from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

from ncl_jax.training import host_devices
from tests.programs import run_program

REPO = pathlib.Path(__file__).resolve().parents[1]
REQUIRED = (
    "ms_per_step",
    "img_per_s",
    "compile_s",
    "peak_rss_mb",
    "num_experts",
    "batch_size",
    "platform",
)
TINY = [
    "--config=configs/smoke.py",
    "--config.dataset.image_size=8",
    "--steps=1",
    "--warmup=1",
    "--repeats=1",
]

# Runs the CLI in-process with TensorFlow made unimportable, then reports whether it was loaded.
_NO_TF = """
import importlib.abc, runpy, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "tensorflow_datasets"):
            raise ImportError(f"{name} is blocked by the test")
sys.meta_path.insert(0, Block())
sys.argv = ["benchmark", *sys.argv[1:]]
try:
    runpy.run_module("ncl_jax.benchmark", run_name="__main__")
except SystemExit as exit:
    assert not exit.code, exit.code
print("TF_LOADED", "tensorflow" in sys.modules, file=sys.stderr)
"""


def _run(
    args: list[str], *, env: dict[str, str] | None = None, block_tf: bool = False
) -> subprocess.CompletedProcess:
    command = (
        [sys.executable, "-c", _NO_TF] if block_tf else [sys.executable, "-m", "ncl_jax.benchmark"]
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "", **(env or {})}
    result = run_program(command + args, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_step_benchmark_runs_without_tensorflow_and_ends_with_the_json_line():
    result = _run([*TINY, "--mode=step", "--experts=2,1", "--moco=both"], block_tf=True)
    summary = _last_json(result.stdout)
    assert all(summary[key] is not None for key in REQUIRED), summary
    assert summary["platform"] == "cpu" and summary["num_experts"] == 2
    assert summary["batch_size"] == 16 and summary["moco"] is True
    assert summary["expert_strategy"] == "cpu_loop"  # auto on CPU
    assert [(r["num_experts"], r["moco"]) for r in summary["rows"]] == [
        (2, True),
        (2, False),
        (1, True),
        (1, False),
    ]
    assert [(c["num_experts"], c["moco"]) for c in summary["model_cost"]] == [
        (r["num_experts"], r["moco"]) for r in summary["rows"]
    ]
    assert summary["img_per_s"] == pytest.approx(16e3 / summary["ms_per_step"])
    assert "ms/step" in result.stdout and "GFLOPs/img" in result.stdout  # the tables
    assert "TF_LOADED False" in result.stderr


@pytest.mark.slow
def test_bfloat16_strategy_override_and_two_devices_run_end_to_end():
    two_devices = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    summary = _last_json(
        _run(
            [
                *TINY,
                "--mode=step",
                "--strategies=vmap,loop",
                "--config.model.dtype=bfloat16",
                "--config.model.num_experts=2",
            ],
            env=two_devices,
        ).stdout
    )
    assert summary["dtype"] == "bfloat16" and summary["expert_strategy"] == "vmap"
    assert summary["num_devices"] == 2
    assert [r["strategy"] for r in summary["rows"]] == ["vmap", "loop"]


@pytest.mark.slow
def test_all_mode_reports_a_pipeline_it_cannot_run_and_still_times_the_step(tmp_path):
    # Also: with XLA_FLAGS empty, the host is split as cpu_devices=-1 (auto) says.
    summary = _last_json(
        _run(
            [
                *TINY,
                "--mode=all",
                "--experts=1",
                "--moco=off",
                "--config.batch_size=32",
                f"--config.dataset.data_dir={tmp_path}",
            ],
            env={"TFDS_DATA_DIR": str(tmp_path)},
        ).stdout
    )
    assert summary["ms_per_step"] > 0 and "skipped" in summary["pipeline"]
    expected = host_devices.choose_count(
        -1, batch_sizes=(32, 128), sync_batch_stats=True, cores=host_devices.available_cores()
    )
    assert summary["num_devices"] == expected
    assert (f"--xla_force_host_platform_device_count={expected}" in summary["xla_flags"]) == (
        expected > 1
    )


@pytest.mark.slow
def test_cost_mode_times_nothing_and_costs_each_expert_count_and_moco_setting_once():
    result = _run([*TINY, "--mode=cost", "--experts=2,1", "--strategies=vmap,loop"], block_tf=True)
    summary = _last_json(result.stdout)
    assert (
        summary["ms_per_step"] is None and "rows" not in summary and "ms/step" not in result.stdout
    )
    costs = summary["model_cost"]
    assert [(c["num_experts"], c["moco"]) for c in costs] == [(2, True), (1, True)]
    assert costs[0]["params_ensemble"] == 2 * costs[1]["params_ensemble"]
    assert "GFLOPs/img" in result.stdout and "TF_LOADED False" in result.stderr


@pytest.mark.slow  # compiles a train step and starts tf.data
def test_input_step_times_both_pipelines_alone_and_feeding_the_step(tmp_path, monkeypatch):
    from ncl_jax.perf import input_step
    from tests.device_helpers import install_fake_views, write_tiny_cache
    from tests.tiny import tiny_config

    install_fake_views(monkeypatch)
    config = tiny_config(moco=True)
    config.dataset = write_tiny_cache(tmp_path / "tiny.npz", train_view="cifar_test")
    config.dataset.train_view = config.dataset.key_view = "cifar_test"
    config.batch_size = 16
    result = input_step.time_input_and_step(config, steps=2, warmup=1, repeats=1)
    assert list(result) == ["device", "tfdata"]
    for rates in result.values():
        assert set(rates) == {"input_img_per_s", "input_step_img_per_s"}
        assert all(math.isfinite(v) and v > 0 for v in rates.values())
    table = input_step.format_table(result)
    assert table.splitlines()[0].startswith("| pipeline | input alone")
