"""ncl_jax.curves: reading runs' TensorBoard scalars and comparing them."""

import pytest

from ncl_jax.analysis import curves
from ncl_jax.errors import ConfigError


def _write_run(path, values, start=10):
    from clu import metric_writers

    writer = metric_writers.create_default_writer(str(path))
    for i, value in enumerate(values):
        writer.write_scalars(start + 10 * i, {"train/loss": value, "train/moco": 2 * value})
    writer.flush()
    writer.close()
    return str(path)


def test_scalars_are_read_back_and_compared_on_common_steps(tmp_path):
    a = _write_run(tmp_path / "a", [4.0, 3.0, 2.0, 1.0])
    b = _write_run(tmp_path / "b", [4.1, 2.8, 2.0], start=20)  # steps 20, 30, 40
    scalars_a, scalars_b = curves.read_scalars(a), curves.read_scalars(b)
    assert scalars_a["train/loss"] == {10: 4.0, 20: 3.0, 30: 2.0, 40: 1.0}
    assert scalars_b["train/moco"][20] == pytest.approx(8.2)
    result = curves.compare([scalars_a["train/loss"], scalars_b["train/loss"]])
    assert result["common_steps"] == [20, 30, 40]
    (diff,) = result["differences"]
    # b - a on steps 20, 30, 40: 1.1, 0.8, 1.0 (|diff| / |a|: 0.367, 0.4, 1.0)
    assert diff["max_abs"] == pytest.approx(1.1, rel=1e-5)
    assert diff["mean_abs"] == pytest.approx((1.1 + 0.8 + 1.0) / 3, rel=1e-5)
    assert diff["max_rel"] == pytest.approx(1.0, rel=1e-5)
    path = curves.plot([a, b], [scalars_a, scalars_b], "train/loss", str(tmp_path / "c.png"))
    assert open(path, "rb").read(4) == b"\x89PNG"


def test_a_tensorflow_free_run_is_read_from_its_metrics_jsonl(tmp_path):
    from ncl_jax.training.writers import JsonLinesWriter

    writer = JsonLinesWriter(str(tmp_path), just_logging=False)
    writer.write_scalars(10, {"train/loss": 4.0, "train/moco": 8.0})
    writer.write_scalars(20, {"train/loss": 3.0})
    writer.write_scalars(20, {"eval/ensemble/top1": 41.5})
    assert curves.read_scalars(str(tmp_path)) == {
        "train/loss": {10: 4.0, 20: 3.0},
        "train/moco": {10: 8.0},
        "eval/ensemble/top1": {20: 41.5},
    }


def test_a_directory_without_event_files_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no TensorBoard event files and no metrics.jsonl"):
        curves.read_scalars(str(tmp_path))
    with pytest.raises(ConfigError, match="no common step"):
        curves.compare([{1: 1.0}, {2: 1.0}])
