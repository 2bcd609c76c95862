"""Where a run's metrics go: clu's writers (log lines and TensorBoard event files) and
progress reports, or, for a run that must stay free of TensorFlow, JSON lines.

clu's `metric_writers` and `periodic_actions` import TensorFlow when imported, and the
accelerator images have neither TensorFlow nor TensorBoard. A run read from a prepared cache
with the device pipeline (`data.needs_tensorflow` false) therefore writes its scalars to
WORKDIR/metrics.jsonl (one {"step": ..., tag: value} object per line) and the log instead;
no library writes TensorBoard files without TensorFlow or TensorBoard, hence this writer.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from absl import logging

METRICS_FILE = "metrics.jsonl"


class JsonLinesWriter:
    """The part of clu's MetricWriter interface the loop uses, without TensorFlow: scalars
    to WORKDIR/metrics.jsonl and the log; hparams and images only to the log."""

    def __init__(self, workdir: str, *, just_logging: bool):
        self._path = None if just_logging else os.path.join(workdir, METRICS_FILE)

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        values = {k: float(np.asarray(v)) for k, v in scalars.items()}
        logging.info("[%d] %s", step, ", ".join(f"{k}={v:.6g}" for k, v in values.items()))
        if self._path is not None:
            with open(self._path, "a") as f:
                f.write(json.dumps({"step": int(step), **values}) + "\n")

    def write_images(self, step: int, images: Mapping[str, Any]) -> None:
        logging.info("[%d] images %s not written (no TensorBoard).", step, sorted(images))

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        logging.info("hparams: %s", dict(hparams))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def create_writer(workdir: str, *, just_logging: bool, tensorflow_free: bool):
    """clu's default writer, or a JsonLinesWriter when `tensorflow_free`."""
    if tensorflow_free:
        return JsonLinesWriter(workdir, just_logging=just_logging)
    from clu import metric_writers  # lazy: clu's writers import TensorFlow

    return metric_writers.create_default_writer(workdir, just_logging=just_logging)


def create_progress(
    writer, *, num_train_steps: int, every_steps: int, tensorflow_free: bool
) -> Callable[[int], Any]:
    """clu's ReportProgress (steps/s and ETA into `writer`), or nothing when
    `tensorflow_free` (the training scalars still carry img_per_s)."""
    if tensorflow_free:
        return lambda step: None
    from clu import periodic_actions  # lazy: clu's periodic actions import TensorFlow

    return periodic_actions.ReportProgress(
        num_train_steps=num_train_steps, writer=writer, every_steps=every_steps
    )
