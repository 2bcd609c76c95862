"""Out of device memory (ncl_jax.perf.memory_fit): recognising XLA's allocation failure, naming a
batch size that fits, and the one-line training error. CPUs cannot run out of memory, so the
failures and memory figures are faked."""

from __future__ import annotations

import jax
import pytest

from ncl_jax import main
from ncl_jax.errors import ConfigError
from ncl_jax.perf import benchmark, device_grid, memory_fit
from tests.tiny import smoke_config

OOM = "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 12.00GiB."


def test_is_out_of_memory_reads_xla_allocation_failures_only():
    assert memory_fit.is_out_of_memory(jax.errors.JaxRuntimeError(OOM))
    assert memory_fit.is_out_of_memory(RuntimeError("CUDA: out of memory"))
    assert not memory_fit.is_out_of_memory(RuntimeError("INTERNAL: something"))
    assert not memory_fit.is_out_of_memory(ValueError("out of memory"))


def test_fitting_batch_size_halves_until_xla_estimate_fits_the_device_limit():
    gib = 2**30
    needed = lambda batch: batch * gib // 2  # half a GiB per example
    asked = []
    fit = memory_fit.fitting_batch_size(
        512,
        needed_bytes=lambda b: asked.append(b) or needed(b),
        limit_bytes=100 * gib,
        multiple=1,
    )
    assert asked == [256, 128] and fit == memory_fit.Fit(128, "xla_estimate", 64 * gib, 100 * gib)
    # 95% of the limit: 190 examples' worth needs 95 GiB (fits), 192 would not.
    assert (
        memory_fit.fitting_batch_size(384, needed_bytes=needed, limit_bytes=100 * gib).batch_size
        == 96
    )
    # No limit (CPU) or no estimate: half, unchecked.
    assert memory_fit.fitting_batch_size(
        512, needed_bytes=needed, limit_bytes=None
    ) == memory_fit.Fit(256, "halved")
    assert memory_fit.fitting_batch_size(
        512, needed_bytes=lambda b: None, limit_bytes=gib
    ) == memory_fit.Fit(256, "halved", None, gib)
    # Multiples of the device count; none fits; nothing smaller.
    sizes = []
    memory_fit.fitting_batch_size(
        48, needed_bytes=lambda b: sizes.append(b) or 10 * gib, limit_bytes=gib, multiple=8
    )
    assert sizes == [24, 8]
    assert (
        memory_fit.fitting_batch_size(
            48, needed_bytes=lambda b: 10 * gib, limit_bytes=gib, multiple=8
        ).batch_size
        is None
    )
    assert memory_fit.fitting_batch_size(
        8, needed_bytes=needed, limit_bytes=gib, multiple=8
    ) == memory_fit.Fit(None, "none_smaller", None, gib)


def _raise_in(name: str):
    def fail(*args):
        raise jax.errors.JaxRuntimeError(OOM)

    fail.__code__ = fail.__code__.replace(co_name=name)
    return fail


def test_out_of_memory_phase_tells_training_from_evaluation():
    from ncl_jax.evaluation.evaluate import evaluation_counts

    try:  # the per-epoch evaluation's pmapped step runs out of memory
        evaluation_counts(_raise_in("eval_counts_step"), None, [{}])
    except RuntimeError as err:
        assert memory_fit.out_of_memory_phase(err) == "eval"
    try:
        _raise_in("train_and_evaluate")()
    except RuntimeError as err:
        assert memory_fit.out_of_memory_phase(err) == "train"
    assert memory_fit.out_of_memory_phase(RuntimeError("INTERNAL")) is None


def test_training_oom_becomes_one_error_naming_a_batch_that_fits(monkeypatch, tmp_path):
    gib = 2**30
    monkeypatch.setattr(memory_fit, "device_bytes_limit", lambda: 80 * gib)
    monkeypatch.setattr(memory_fit, "step_memory_bytes", lambda config: config.batch_size * gib)

    def out_of_memory(config, workdir, **kwargs):
        raise jax.errors.JaxRuntimeError(OOM)

    monkeypatch.setattr(main, "train_and_evaluate", out_of_memory)
    config = smoke_config(batch_size=256)  # 8 devices here: halvings 128, 64 (fits), ...
    with pytest.raises(ConfigError) as err:
        main.train_reporting_oom(config, str(tmp_path))
    message = str(err.value)
    assert message.startswith("batch_size=256 does not fit in device memory (while training")
    assert "batch_size=64 fits by XLA's estimate (64.0 GiB of 80.0 GiB per device)" in message
    assert message.endswith("rerun with --config.batch_size=64.")
    assert list(tmp_path.iterdir()) == []  # nothing written

    (tmp_path / "checkpoints" / "10").mkdir(parents=True)
    monkeypatch.setattr(memory_fit, "device_bytes_limit", lambda: None)  # CPU: no limit reported
    with pytest.raises(ConfigError) as err:
        main.train_reporting_oom(config, str(tmp_path))
    assert "batch_size=128 should fit (half;" in str(err.value)
    assert f"in a new --workdir ({tmp_path} holds checkpoints of batch_size=256)" in str(err.value)

    def no_estimate(config):
        raise NotImplementedError("no memory analysis")

    monkeypatch.setattr(memory_fit, "device_bytes_limit", lambda: 80 * gib)
    monkeypatch.setattr(memory_fit, "step_memory_bytes", no_estimate)
    with pytest.raises(ConfigError, match="batch_size=128 should fit \\(half; XLA gave no"):
        main.train_reporting_oom(config, str(tmp_path))

    from ncl_jax.evaluation.evaluate import evaluation_counts

    monkeypatch.setattr(
        main,
        "train_and_evaluate",
        lambda *a, **k: evaluation_counts(_raise_in("eval_counts_step"), None, [{}]),
    )
    with pytest.raises(ConfigError, match=r"^eval_batch_size=128 does not fit .*evaluating"):
        main.train_reporting_oom(config, str(tmp_path))
    monkeypatch.setattr(main, "train_and_evaluate", out_of_memory)
    with pytest.raises(ConfigError, match="already the smallest that splits over 8 devices"):
        main.train_reporting_oom(smoke_config(batch_size=8), str(tmp_path))

    def other(*args, **kwargs):
        raise RuntimeError("INTERNAL: not memory")

    monkeypatch.setattr(main, "train_and_evaluate", other)
    with pytest.raises(RuntimeError, match="INTERNAL"):
        main.train_reporting_oom(config, str(tmp_path))


# ------------------------------------------------------------------------------ API fallbacks


class _Stats:
    argument_size_in_bytes, output_size_in_bytes, temp_size_in_bytes = 100, 50, 30
    alias_size_in_bytes = 40


class _Compiled:
    def __init__(self, result):
        self.result = result

    def memory_analysis(self):
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


def test_memory_figures_fall_back_to_none_where_jax_does_not_report_them(monkeypatch):
    assert benchmark.compiled_memory_bytes(_Compiled(_Stats())) == 140
    assert benchmark.compiled_memory_bytes(_Compiled([_Stats()])) == 140
    assert benchmark.compiled_memory_bytes(_Compiled(None)) is None
    assert benchmark.compiled_memory_bytes(_Compiled(NotImplementedError())) is None
    assert benchmark.compiled_memory_bytes(object()) is None
    # The CPU reports no device memory; a device whose stats raise or lack fields neither.
    assert memory_fit.device_bytes_limit() is None and benchmark.device_peak_mb() is None

    class Device:
        def __init__(self, stats):
            self.stats = stats

        def memory_stats(self):
            if isinstance(self.stats, Exception):
                raise self.stats
            return self.stats

    for stats, limit, peak in (
        ({"bytes_limit": 2**30, "peak_bytes_in_use": 2**21}, 2**30, 2.0),
        ({}, None, None),
        (None, None, None),
        (NotImplementedError(), None, None),
    ):
        monkeypatch.setattr(jax, "local_devices", lambda stats=stats: [Device(stats)])
        assert memory_fit.device_bytes_limit() == limit and benchmark.device_peak_mb() == peak


# ------------------------------------------------------------------------------ summaries


@pytest.mark.slow
def test_step_memory_estimate_compiles_the_real_step_on_abstract_shapes():
    config = device_grid.build_config(
        device_grid.Spec("cifar100_tiny", 16, 1, False, "vmap", "float32")
    )
    needed = memory_fit.step_memory_bytes(config)  # 8 fake CPU devices: 2 examples each
    assert isinstance(needed, int) and needed > 0
