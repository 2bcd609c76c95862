"""The prepared accelerator check (ncl_jax.device_check): grid order, budget trimming,
out-of-memory handling (faked: a CPU cannot run out), projections, the auto choice, output
files and bad input in process; one slow test runs launch/device_check.sh end to end."""

from __future__ import annotations

import json
import os
import pathlib
import sys

import jax
import pytest

from ncl_jax import cli
from ncl_jax.errors import ConfigError
from ncl_jax.perf import device_check as dc
from ncl_jax.perf import device_grid, device_report, memory_fit
from tests.programs import run_program

REPO = pathlib.Path(__file__).resolve().parents[1]
OOM = "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 12.00GiB."


def _row(ms: float, batch: int = 64, **fields) -> dict:
    """What measure() returns for a timed row (the fields of benchmark.Row)."""
    return {
        "ms_per_step": ms,
        "img_per_s": batch / (ms / 1e3),
        "compile_s": 1.0,
        "cpu_ms_per_step": ms,
        "peak_rss_mb": 100.0,
        "peak_device_mb": None,
        "repeats_ms": [ms],
        "step_memory_mb": 1.0,
        **fields,
    }


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# ------------------------------------------------------------------------------ grid


def test_full_grid_puts_the_recipe_shape_and_resnet50_first_and_holds_every_combination():
    grid = device_grid.make_grid("full")
    names = [s.name for s in grid.specs]
    assert len(names) == len(set(names)) == 48 + 4
    assert names[:5] == [
        "cifar100-b64-k3-moco-fp32-vmap",
        "cifar100-b64-k3-moco-fp32-loop",
        "imagenet-b128-k3-nomoco-fp32-vmap",
        "imagenet-b128-k3-nomoco-bf16-vmap",
        "cifar100-b64-k3-moco-bf16-vmap",  # then one changed axis at a time
    ]
    assert names[5:9] == [
        "cifar100-b64-k3-nomoco-fp32-vmap",
        "cifar100-b128-k3-moco-fp32-vmap",
        "cifar100-b512-k3-moco-fp32-vmap",
        "cifar100-b64-k1-moco-fp32-vmap",
    ]
    assert names[9] == "imagenet-b128-k3-nomoco-fp32-loop"  # after the one-axis changes
    cifar = {s for s in grid.specs if s.family == "cifar100"}
    assert {(s.batch_size, s.num_experts, s.moco, s.strategy, s.dtype) for s in cifar} == {
        (b, k, m, s, d)
        for b in (64, 128, 512)
        for k in (3, 1)
        for m in (True, False)
        for s in ("vmap", "loop")
        for d in ("float32", "bfloat16")
    }
    assert grid.mains["cifar100"].name == names[0]
    assert grid.mains["imagenet"].name == names[2]


def test_reduced_grid_covers_each_axis_in_five_tiny_rows():
    grid = device_grid.make_grid("reduced")
    assert [s.name for s in grid.specs] == [
        "cifar100_tiny-b16-k2-moco-fp32-vmap",
        "cifar100_tiny-b16-k2-moco-fp32-loop",
        "imagenet_tiny-b8-k2-nomoco-fp32-vmap",
        "cifar100_tiny-b16-k2-moco-bf16-vmap",
        "cifar100_tiny-b16-k1-moco-fp32-vmap",
    ]
    config = device_grid.build_config(grid.specs[2])
    assert config.model.backbone == "resnet50" and config.dataset.image_size == 32
    assert (config.model.depth, config.model.width, config.batch_size) == (1, 4, 8)
    assert grid.timing["cifar100_tiny"] == {"steps": 2, "warmup": 1, "repeats": 1}


def test_every_full_grid_row_is_a_valid_config_of_its_recipe_file():
    from ncl_jax.config.validation import validate_config

    for spec in device_grid.make_grid("full").specs:
        config = device_grid.build_config(spec)
        validate_config(config, num_devices=1)
        assert (config.batch_size, config.model.num_experts) == (spec.batch_size, spec.num_experts)
        assert (config.model.expert_strategy, config.model.dtype) == (spec.strategy, spec.dtype)
    big = device_grid.build_config(device_grid.make_grid("full").mains["imagenet"])
    assert (big.model.backbone, big.dataset.image_size, big.moco.enabled) == (
        "resnet50",
        224,
        False,
    )


# ------------------------------------------------------------------------------ budget


def test_rows_that_would_end_past_the_budget_are_skipped_and_listed():
    grid = device_grid.make_grid("reduced")  # first guesses: 10 s (ResNet-32), 15 s (ResNet-50)
    clock, measured = FakeClock(), []

    def measure(spec):
        measured.append(spec.name)
        clock.now += 10.0
        return _row(5.0, spec.batch_size)

    records = dc.run_grid(grid, measure=measure, budget_s=35.0, start=0.0, clock=clock)
    assert [r["status"] for r in records] == ["ok", "ok", "ok", "skipped", "skipped"]
    assert measured == [s.name for s in grid.specs[:3]]  # 10 + 10 + 15 <= 35
    assert records[3]["reason"] == "budget: 30 s used + ~10 s for this row > 35 s"
    assert records[1]["estimate_s"] == 10.0  # measured row 0 (same network, K and MoCo)
    summary = device_report.summarize(
        records,
        grid,
        meta={"backend": "cpu"},
        budget_s=35.0,
        elapsed_s=30.0,
        complete=True,
    )
    assert summary["trimmed"]["skipped_for_budget"] == [s.name for s in grid.specs[3:]]
    assert summary["counts"] == {"ok": 3, "oom": 0, "error": 0, "skipped": 2}
    assert "2 of 5 rows skipped to stay within the 35 s budget" in summary["trimmed"]["note"]


def test_estimate_uses_the_slowest_matching_row_then_the_network_then_the_first_guess():
    spec = device_grid.Spec("cifar100", 64, 1, False, "vmap", "float32")
    first = {"cifar100": 60.0}
    done = [
        {"status": "ok", "family": "cifar100", "num_experts": 3, "moco": True, "wall_s": 40.0},
        {"status": "ok", "family": "cifar100", "num_experts": 3, "moco": True, "wall_s": 50.0},
        {"status": "error", "family": "cifar100", "num_experts": 1, "moco": False, "wall_s": 1.0},
    ]
    assert dc.estimate_s(spec, [], first) == 60.0
    assert dc.estimate_s(spec, done, first) == 50.0
    done.append(
        {"status": "ok", "family": "cifar100", "num_experts": 1, "moco": False, "wall_s": 20.0}
    )
    assert dc.estimate_s(spec, done, first) == 20.0


# ------------------------------------------------------------------------------ out of memory


def _grid(*specs):
    return device_grid.Grid("full", specs, {}, {}, {"cifar100": 1.0, "imagenet": 1.0})


def test_an_oom_row_names_the_largest_measured_batch_and_the_run_goes_on():
    small, big = (device_grid.Spec("cifar100", b, 3, True, "vmap", "float32") for b in (64, 512))
    other = device_grid.Spec("cifar100", 128, 1, True, "vmap", "float32")

    def measure(spec):
        if spec.batch_size == 512:
            raise jax.errors.JaxRuntimeError(OOM)
        if spec.num_experts == 1:
            raise ValueError("something else broke")
        return _row(3.0)

    fits = []
    records = dc.run_grid(
        _grid(small, big, other),
        measure=measure,
        budget_s=1e9,
        start=0.0,
        clock=FakeClock(),
        fit=lambda spec: fits.append(spec) or memory_fit.Fit(256, "xla_estimate"),
    )
    assert [r["status"] for r in records] == ["ok", "oom", "error"]
    assert records[1]["largest_fitting_batch"] == 64 and records[1]["fitting_how"] == "measured"
    assert "RESOURCE_EXHAUSTED" in records[1]["reason"] and not fits
    assert records[2]["reason"] == "ValueError: something else broke"


def test_an_oom_row_without_a_smaller_measured_batch_asks_the_estimate():
    spec = device_grid.Spec("imagenet", 128, 3, False, "vmap", "bfloat16")

    def measure(spec):
        raise RuntimeError(f"XlaRuntimeError: {OOM}")

    fit = lambda s: memory_fit.Fit(s.batch_size // 4, "xla_estimate", 50 * 2**30, 100 * 2**30)
    clock = FakeClock()
    records = dc.run_grid(
        _grid(spec), measure=measure, budget_s=1e9, start=0.0, clock=clock, fit=fit
    )
    assert records[0]["status"] == "oom"
    assert (records[0]["largest_fitting_batch"], records[0]["fitting_how"]) == (
        32,
        "xla_estimate",
    )
    # Without the time for two more compilations, it does not search.
    records = dc.run_grid(
        _grid(spec), measure=measure, budget_s=1.5, start=0.0, clock=clock, fit=fit
    )
    assert records[0]["fitting_how"] == "not searched (budget)"


def test_projection_arithmetic_matches_the_hand_computed_recipes():
    # CIFAR-100-LT IF100: 10,847 // 64 = 169 steps/epoch, 400 epochs = 67,600 steps; at
    # 10 ms/step (6,400 img/s) that is 676 s.
    cifar = device_report.projection(
        train_images=10_847, epochs=400, batch_size=64, img_per_s=6400.0
    )
    assert cifar == {
        "steps_per_epoch": 169,
        "total_steps": 67_600,
        "projected_s": 676.0,
        "projected_h": 0.188,
    }
    # ImageNet-LT: 115,846 // 256 = 452, 200 epochs = 90,400 steps = 23,142,400 images; at
    # 1,000 img/s (e.g. 128 ms/step at batch 128) that is 23,142.4 s.
    inlt = device_report.projection(
        train_images=115_846, epochs=200, batch_size=256, img_per_s=1000.0
    )
    assert (inlt["steps_per_epoch"], inlt["total_steps"], inlt["projected_s"]) == (
        452,
        90_400,
        23_142.4,
    )
    assert device_report.recipe_settings("cifar100", "paper") == {
        "config": "configs/cifar100_lt.py:paper",
        "epochs": 400,
        "batch_size": 64,
        "num_experts": 3,
        "moco": True,
    }
    assert device_report.recipe_settings("imagenet", "official")["epochs"] == 200
    assert device_report.recipe_settings("imagenet", "official")["batch_size"] == 256


def _records(grid, ms: dict[str, float]) -> list[dict]:
    out = []
    for i, spec in enumerate(grid.specs):
        record = dc._record(spec, i)
        if spec.name in ms:
            record.update(_row(ms[spec.name], spec.batch_size), status="ok", wall_s=1.0)
        else:
            record["reason"] = "budget: test"
        out.append(record)
    return out


def test_projections_and_auto_choice_use_the_fastest_strategy_of_the_recipe_shape():
    grid = device_grid.make_grid("full")
    records = _records(
        grid,
        {
            "cifar100-b64-k3-moco-fp32-vmap": 12.0,
            "cifar100-b64-k3-moco-fp32-loop": 10.0,
            "imagenet-b128-k3-nomoco-fp32-vmap": 128.0,
        },
    )
    projections = {(p["recipe"], p["dtype"]): p for p in device_report.projections(records, grid)}
    paper = projections[("CIFAR-100-LT IF100, paper (MoCo)", "float32")]
    assert paper["row"] == "cifar100-b64-k3-moco-fp32-loop"
    assert paper["projected_s"] == pytest.approx(676.0)  # 67,600 steps x 10 ms
    inlt = projections[("ImageNet-LT, official", "float32")]
    assert inlt["row"] == "imagenet-b128-k3-nomoco-fp32-vmap"
    assert inlt["projected_s"] == pytest.approx(23_142.4)  # 1,000 img/s
    assert "applied to the recipe's batch 256" in inlt["note"]
    assert projections[("CIFAR-100-LT IF100, paper (MoCo)", "bfloat16")]["row"] is None

    choice = device_report.auto_choice(records, grid, "gpu")[0]
    assert choice["ms_per_step"] == {"vmap": 12.0, "loop": 10.0}
    assert (choice["fastest"], choice["resolve_strategy_auto"], choice["agrees"]) == (
        "loop",
        "vmap",
        False,
    )
    assert (
        device_report.auto_choice(records, grid, "cpu")[0]["agrees"] is None
    )  # cpu_loop not measured


def test_json_and_markdown_hold_rows_projections_auto_choice_and_what_was_trimmed(tmp_path):
    grid = device_grid.make_grid("full")
    records = _records(
        grid, {"cifar100-b64-k3-moco-fp32-vmap": 12.0, "cifar100-b64-k3-moco-fp32-loop": 10.0}
    )[:10]
    records[1]["peak_device_mb"], records[1]["peak_device_own"] = 900.0, False
    meta = {
        "date": "2026-12-01T00:00:00+00:00",
        "command": "launch/device_check.sh /out",
        "backend": "gpu",
        "device_kind": "NVIDIA H200",
        "device_count": 1,
        "jax": "0.11.0",
        "jaxlib": "0.11.0",
        "python": "3.12.3",
        "grid": "full",
    }
    summary = device_report.summarize(
        records, grid, meta=meta, budget_s=420.0, elapsed_s=400.0, complete=False
    )
    summary["device_pipeline"] = device_report.pipeline_summary(
        {
            "status": "ok",
            "reason": "",
            "config": "configs/cifar10_lt.py:if100",
            "num_train": 12_406,
            "batch_size": 64,
            "epochs": 400,
            "input_img_per_s": 90_000.0,
            "input_step_img_per_s": 25_600.0,
            "wall_s": 70.0,
        }
    )
    device_report.write_outputs(str(tmp_path), summary)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["device_check.json", "device_check.md"]
    loaded = json.loads((tmp_path / "device_check.json").read_text())
    assert loaded["meta"]["budget_s"] == 420.0 and loaded["complete"] is False
    assert len(loaded["rows"]) == 10 and len(loaded["trimmed"]["not_reached"]) == 42
    md = (tmp_path / "device_check.md").read_text()
    assert "INCOMPLETE" in md and "NVIDIA H200 x 1" in md and "jax 0.11.0" in md
    assert "| 1 | cifar100-b64-k3-moco-fp32-loop |" in md and "| <= 900 |" in md
    assert "## Projected wall time of the recipes (step time only)" in md
    assert "| gpu | ResNet-32 32px | b64 K3 MoCo float32 | vmap 12.00, loop 10.00 | loop" in md
    assert "8 of 52 rows skipped" in md and "42 not reached" in md
    assert "On gpu, `auto` should pick **loop**" in md and "picks vmap now" in md
    # 12,406 // 64 = 193 steps per epoch, 400 epochs, 64 images a step at 25,600 img/s:
    # 77,200 * 64 / 25,600 = 193 s = 3.2 min.
    projection = loaded["device_pipeline"]["projection"]
    assert (projection["steps_per_epoch"], projection["total_steps"]) == (193, 77_200)
    assert projection["projected_s"] == pytest.approx(193.0)
    assert "## The device pipeline end to end (configs/cifar10_lt.py:if100)" in md
    assert "| ok | 90000 | 25600 | 193 | 400 | 3.2 | 70.0 |" in md


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"strategies": ["vmapp"]},
            "model.expert_strategy='vmapp' is unknown; use one of ('auto', 'vmap', 'loop', "
            "'cpu_loop').",
        ),
        (
            {"dtypes": ["float16"]},
            "model.dtype='float16' is unknown; use one of ('float32', 'bfloat16').",
        ),
        ({"grid_kind": "huge"}, "--grid='huge' is unknown; use auto, full or reduced."),
    ],
)
def test_bad_values_are_one_error_line_and_write_nothing(tmp_path, capsys, kwargs, message):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit:
        cli.run_cli(lambda: dc.run(out_dir=str(out), **kwargs))
    assert exit.value.code == 2
    assert capsys.readouterr().err == f"error: {message}\n"
    assert not out.exists()


def test_an_existing_result_or_an_unwritable_out_dir_is_refused(tmp_path):
    (tmp_path / "device_check.json").write_text("{}")
    with pytest.raises(ConfigError, match="device_check.json exists; pass --overwrite"):
        dc.run(out_dir=str(tmp_path))
    assert (tmp_path / "device_check.json").read_text() == "{}"
    dc.prepare_out_dir(str(tmp_path), overwrite=True)  # allowed, still untouched
    assert (tmp_path / "device_check.json").read_text() == "{}"
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="cannot be created or written"):
        dc.run(out_dir=str(blocker / "out"))
    with pytest.raises(ConfigError, match="--out is required"):
        dc.run(out_dir="")


def test_a_run_required_on_gpu_stops_on_a_cpu_host_before_making_out_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("NCL_REQUIRE_PLATFORM", "gpu")
    with pytest.raises(ConfigError, match="launched for GPU"):
        dc.run(out_dir=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_list_prints_the_ordered_grid_and_writes_nothing(tmp_path, capsys):
    assert dc.run(out_dir=str(tmp_path / "never"), grid_kind="full", list_only=True) is None
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 52 and lines[0].split() == ["0", "cifar100-b64-k3-moco-fp32-vmap"]
    assert not (tmp_path / "never").exists()


# ------------------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_launcher_runs_the_reduced_grid_without_tensorflow_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "check"
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "",
    }
    command = ["bash", str(REPO / "launch" / "device_check.sh"), str(out), "--budget_s=600"]
    result = run_program(command, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "device_check.json").read_text())
    meta = summary["meta"]
    assert summary["complete"] and meta["grid"] == "reduced" and meta["fast_compile"]
    assert meta["backend"] == "cpu" and meta["jax"] == jax.__version__
    assert meta["command"].startswith("launch/device_check.sh ")
    assert meta["imported"] == {
        "tensorflow": False,
        "tensorflow_datasets": False,
        "clu": False,
        "ml_collections": True,
    }
    rows = summary["rows"]
    assert [r["status"] for r in rows] == ["ok"] * 5, rows
    assert all(r["ms_per_step"] > 0 and r["compile_s"] > 0 for r in rows)
    assert {r["strategy"] for r in rows} == {"vmap", "loop"}
    assert {r["dtype"] for r in rows} == {"float32", "bfloat16"}
    assert {r["num_experts"] for r in rows} == {2, 1} and {r["moco"] for r in rows} == {True, False}
    assert any(p["row"] for p in summary["projections"])
    assert summary["auto_strategy"][0]["fastest"] in ("vmap", "loop")
    md = (out / "device_check.md").read_text()
    assert md.count("| ok |") == 6 and "## `auto` expert strategy" in md  # 5 rows, pipeline
    pipeline = summary["device_pipeline"]
    assert pipeline["status"] == "ok" and pipeline["input_step_img_per_s"] > 0, pipeline
    assert "no `auto` choice follows" in md and "should pick" not in md  # unoptimised times
    assert "| ok |" in result.stdout  # the table is printed too

    before = (out / "device_check.json").read_text()
    again = run_program(command, env=env)
    assert again.returncode == 2
    assert again.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "pass --overwrite" in again.stderr
    assert (out / "device_check.json").read_text() == before
