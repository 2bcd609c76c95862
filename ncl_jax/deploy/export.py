"""One expert of a trained run as a self-contained inference artefact (`jax.export`).

NCL's point is that one expert, trained with its siblings, is enough at inference. This
program freezes one expert of a checkpoint into a serialized `jax.export` function

  logits float32 [b, C] = f(images uint8 [b, S, S, 3])     (RGB, S = dataset.image_size)

with the weights and BatchNorm running statistics baked in (train=False), the batch size b
symbolic (any b >= 1) and the run's normalisation, (pixel / 255 - mean) / std, done inside.
It runs with jax alone (no Flax, no TensorFlow, no ncl_jax model code): see `ncl_jax.predict`.

DIR (new, or empty) receives `model.jaxexport` (the serialized function) and `model.json`
(class names, image size, the resize/crop that reproduces the eval view with PIL, the
normalisation constants, the expert, its recorded top-1, the source checkpoint, versions).
The default checkpoint is the best-single-expert one when the run has it, else the newest
periodic/final one; `--expert=best` takes the best expert recorded in that checkpoint's
evaluation metadata. Bad input is one `error:` line (exit status 2) and writes nothing.

The program: `python -m ncl_jax.export` (ncl_jax/export.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax import export

import ncl_jax
from ncl_jax.config import builders
from ncl_jax.data.normalization import NORMALIZATION
from ncl_jax.errors import ConfigError
from ncl_jax.training.checkpointing import RunCheckpoints, parse_checkpoint
from ncl_jax.training.saved_runs import read_result, read_run_config

ARTEFACT = "model.jaxexport"
METADATA = "model.json"
FORMAT = "ncl_jax.export/1"
# jax.export platform names; "cuda" also covers the GPU of a machine whose jax reports "gpu".
KNOWN_PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
DEFAULT_PLATFORMS = ("cpu", "cuda")


# ----------------------------------------------------------------------------- input checks
def parse_expert(value: str | int | None) -> int | None:
    """`--expert`: None for "best" (or unset), else the expert index K >= 0 (ConfigError)."""
    if value is None or str(value).strip().lower() == "best":
        return None
    try:
        index = int(str(value).strip())
    except ValueError:
        raise ConfigError(
            f"--expert={value!r} is not valid; use --expert=best or an expert index, e.g. 0."
        ) from None
    if index < 0:
        raise ConfigError(f"--expert={index} is negative; use an index from 0, or best.")
    return index


def parse_platforms(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """`--platforms`: jax.export platform names (ConfigError for an unknown one)."""
    if value is None:
        return DEFAULT_PLATFORMS
    items = value.split(",") if isinstance(value, str) else list(value)
    platforms = tuple(dict.fromkeys(p.strip().lower() for p in items if p.strip()))
    unknown = [p for p in platforms if p not in KNOWN_PLATFORMS]
    if not platforms or unknown:
        raise ConfigError(
            f"--platforms={value!r} is not valid; use a comma-separated subset of "
            f"{', '.join(KNOWN_PLATFORMS)}, e.g. cpu,cuda."
        )
    return platforms


def check_out_dir(out: str) -> None:
    """Refuses an --out that exists and is not an empty directory, or that cannot be created.

    Nothing is created here: the artefact is written into a temporary sibling directory that
    is renamed to `out` at the end (`write_export`), so a failed export leaves nothing."""
    if not out:
        raise ConfigError("--out is empty; give a new directory for the exported model.")
    out = os.path.abspath(out)
    hint = f"pass a new directory, e.g. --out={out.rstrip('/')}_2"
    if os.path.lexists(out):
        if not os.path.isdir(out):
            raise ConfigError(f"--out={out} exists and is not a directory; {hint}.")
        if os.listdir(out):
            raise ConfigError(
                f"--out={out} already exists and is not empty; export never overwrites: {hint}."
            )
    ancestor = os.path.dirname(out)
    while not os.path.lexists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor) or not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(
            f"--out={out} cannot be created: {ancestor} is not a writable directory; "
            "choose a directory you can write to."
        )


# ----------------------------------------------------------------------------- checkpoints
def recorded_evaluation(
    meta: dict, step: int, num_epochs: int, result: dict | None = None
) -> dict | None:
    """The evaluation of exactly this checkpoint's weights found in its metadata or in the
    run's result.json (`result`), or None.

    `best_evals` entries carry their step, so one at `step` describes these weights. The
    training loop saves each epoch's checkpoint before evaluating it (meta `eval_pending`), so
    the final checkpoint's evaluation is result.json's `final` (same step); checkpoints of
    older runs evaluated first, so their `last_eval` describes them when meta["epoch"] ==
    num_epochs. Other periodic and SIGTERM checkpoints may postdate their `last_eval`, which
    is then not used."""
    for which in ("single", "ensemble"):
        body = (meta.get("best_evals") or {}).get(which)
        if body and body.get("step") == step and body.get("experts"):
            return dict(body)
    final = (result or {}).get("final")
    if final and final.get("experts") and result.get("step") == step:
        return {**final, "epoch": num_epochs, "step": step}
    last = meta.get("last_eval")
    if last and last.get("experts") and meta.get("epoch") == num_epochs:
        if not meta.get("eval_pending"):
            return {**last, "epoch": num_epochs, "step": step}
    return None


def choose_expert(
    requested: int | None, evaluation: dict | None, num_experts: int, where: str
) -> int:
    """The expert index: `requested`, or (None) the best single expert of `evaluation`.

    ConfigError when the best expert cannot be known from the metadata (then the user picks)."""
    if requested is not None:
        return requested
    if evaluation is None:
        raise ConfigError(
            f"the best expert of {where} is unknown: its metadata records no evaluation of "
            f"these weights; pass --expert=K with K in 0..{num_experts - 1}, or "
            "--checkpoint=best_single."
        )
    best = (evaluation.get("best_single") or {}).get("expert")
    if best is None:
        best = int(np.argmax([e["top1"] for e in evaluation["experts"]]))
    return int(best)


# ----------------------------------------------------------------------------- the function
def normalization_constants(name: str) -> tuple[list[float], list[float]]:
    """(mean, std) of a named normalisation (`ncl_jax.data.normalization`; ConfigError)."""

    if name not in NORMALIZATION:
        raise ConfigError(
            f"dataset.normalization={name!r} is unknown; use one of {', '.join(NORMALIZATION)}."
        )
    mean, std = NORMALIZATION[name]
    return list(mean), list(std)


def serving_function(
    expert, params, batch_stats, *, mean: Sequence[float], std: Sequence[float]
) -> Callable[[Any], Any]:
    """images uint8 [b, H, W, 3] -> logits float32 [b, C] of ONE expert (unstacked variables).

    BatchNorm uses the running statistics (train=False). Normalisation is one multiply-add
    with float32 constants folded in float64 exactly as `augment.make_view` does, so the
    function sees the pixels evaluation saw. `params` / `batch_stats` are closed over and
    become constants of the exported program."""

    mean64, std64 = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    scale = (1.0 / (255.0 * std64)).astype(np.float32)
    offset = (-mean64 / std64).astype(np.float32)
    variables = {"params": params, "batch_stats": batch_stats}

    def serve(images):
        x = images.astype(jnp.float32) * scale + offset
        return expert.apply(variables, x, train=False)["logits"].astype(jnp.float32)

    return serve


def export_function(fn: Callable, image_size: int, platforms: Sequence[str]):
    """`jax.export` of fn for uint8 [b, S, S, 3] inputs, b symbolic; returns the Exported."""

    shape = export.symbolic_shape(f"b, {image_size}, {image_size}, 3")
    spec = jax.ShapeDtypeStruct(shape, jnp.uint8)
    return export.export(jax.jit(fn), platforms=tuple(platforms))(spec)


def preprocessing(dataset) -> dict:
    """What `ncl_jax.predict` does with PIL to reproduce the run's eval view (uint8 output).

    cifar_test: the image as it is, resized (bilinear) to S x S only when it has another
    size. resize_center_crop: shorter side to round(S * 256 / 224) (bilinear, antialiased
    when shrinking, as PIL and the TF view do), then the centred S x S crop. Normalisation is
    inside the artefact; its constants are recorded for reference."""
    size = int(dataset.image_size)
    mean, std = normalization_constants(dataset.normalization)
    common = {
        "eval_view": dataset.eval_view,
        "interpolation": "bilinear",
        "color": "RGB",
        "normalization": dataset.normalization,
        "mean": mean,
        "std": std,
        "normalized_in_artefact": True,
        "formula": "(pixel / 255 - mean) / std, inside the artefact",
    }
    if dataset.eval_view == "cifar_test":
        return {**common, "resize": size, "resize_shorter": None, "center_crop": None}
    if dataset.eval_view == "resize_center_crop":
        return {
            **common,
            "resize": None,
            "resize_shorter": round(size * 256 / 224),
            "center_crop": size,
        }
    raise ConfigError(
        f"dataset.eval_view={dataset.eval_view!r} has no PIL equivalent in ncl_jax.predict; "
        "export supports the eval views cifar_test and resize_center_crop."
    )


def lookup_class_names(config) -> tuple[list[str], str]:
    """(names by label, where they came from): the dataset's (`data.datasets.class_names`,
    never downloading), else placeholders "class_<i>" with a warning, so that a machine
    without the data can still export."""

    num_classes = int(config.dataset.num_classes)
    dataset = ml_collections.ConfigDict({**config.dataset.to_dict(), "download": "false"})
    names, reason = None, "this source has no class names"
    try:
        from ncl_jax.data import datasets  # lazy: TensorFlow, only to look up class names

        names = datasets.class_names(dataset)
    except (ValueError, OSError) as err:  # ConfigError, DataError: no data on this machine
        reason = " ".join(str(err).split())[:300]
    if names is not None and len(names) == num_classes:
        return list(names), dataset.source
    logging.warning("class names unavailable (%s); using class_<i>.", reason)
    return [f"class_{i}" for i in range(num_classes)], "placeholder"


# ----------------------------------------------------------------------------- writing
def write_export(out: str, serialized: bytes, metadata: dict) -> None:
    """Writes ARTEFACT and METADATA into a temporary sibling directory, then renames it to
    `out` (which must not exist, or be empty): a crash or a refusal leaves nothing behind."""
    out = os.path.abspath(out)
    parent = os.path.dirname(out)
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-", dir=parent)
    except OSError as err:
        raise ConfigError(
            f"--out={out} cannot be created ({err.strerror}); choose another directory."
        ) from None
    try:
        with open(os.path.join(tmp, ARTEFACT), "wb") as f:
            f.write(serialized)
        with open(os.path.join(tmp, METADATA), "w") as f:
            json.dump(metadata, f, indent=2)
            f.write("\n")
        os.chmod(tmp, 0o755)
        os.rename(tmp, out)  # atomic; replaces only an empty directory
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConfigError(
            f"--out={out} cannot be written ({err.strerror}); pass a new, writable directory."
        ) from err


def export_workdir(
    workdir: str,
    out: str,
    *,
    expert: str | int | None = "best",
    checkpoint: str | int | None = None,
    platforms: str | Sequence[str] | None = DEFAULT_PLATFORMS,
    class_names: Sequence[str] | None = None,
) -> dict:
    """Exports one expert of a workdir's checkpoint into `out`; returns the metadata written.

    expert: "best" / None (the best recorded single expert of that checkpoint) or an index.
    checkpoint: see `checkpointing.parse_checkpoint` (default: best_single if saved, else
    latest). class_names: given, or looked up (`lookup_class_names`).
    Raises ConfigError / CheckpointError (one sentence with the fix) before writing anything:
    no config.json or checkpoint, an expert out of range or not determinable, a checkpoint
    that does not restore under the run's config, an --out that exists or is unwritable."""

    requested = parse_expert(expert)
    which = parse_checkpoint(checkpoint)
    platforms = parse_platforms(platforms)
    config = read_run_config(workdir)
    num_experts = int(config.model.num_experts)
    if requested is not None and requested >= num_experts:
        raise ConfigError(
            f"--expert={requested} is out of range: the run has {num_experts} experts "
            f"(0..{num_experts - 1})."
        )
    check_out_dir(out)
    num_classes = int(config.dataset.num_classes)
    if class_names is not None and len(class_names) != num_classes:
        raise ConfigError(f"{len(class_names)} class names given for {num_classes} classes.")
    info = preprocessing(config.dataset)

    checkpoints = RunCheckpoints(workdir, read_only=True)
    try:
        if which is None:  # deploy the expert selected as best, where the run saved it
            which = "best_single" if checkpoints.steps("best_single") else "latest"
        checkpoints.select(which)  # a missing checkpoint fails before anything is built
        step_cfg = builders.make_step_config(
            config, class_counts=np.ones(num_classes, np.float32), steps_per_epoch=1
        )
        target = builders.abstract_state(config, step_cfg)
        kind, step, state, meta = checkpoints.restore_selected(which, target)
    finally:
        checkpoints.close()
    where = f"{workdir}/{kind}/{step}"
    evaluation = recorded_evaluation(
        meta, step, int(config.num_epochs), read_result(workdir) if kind == "checkpoints" else None
    )
    index = choose_expert(requested, evaluation, num_experts, where)
    names, names_source = (
        (list(map(str, class_names)), "given")
        if class_names is not None
        else lookup_class_names(config)
    )

    module = step_cfg.expert.clone(bn_axis_name=None)
    take = lambda tree: jax.tree.map(lambda leaf: np.asarray(leaf[index]), tree)
    fn = serving_function(
        module, take(state.params), take(state.batch_stats), mean=info["mean"], std=info["std"]
    )
    size = int(config.dataset.image_size)
    exported = export_function(fn, size, platforms)
    serialized = bytes(exported.serialize())

    top1 = evaluation["experts"][index]["top1"] if evaluation else None
    metadata = {
        "format": FORMAT,
        "artefact": ARTEFACT,
        "artefact_sha256": hashlib.sha256(serialized).hexdigest(),
        "platforms": list(exported.platforms),
        "input": {"dtype": "uint8", "shape": ["b", size, size, 3], "layout": "NHWC, RGB"},
        "output": {"dtype": "float32", "shape": ["b", num_classes], "values": "logits"},
        "num_classes": num_classes,
        "class_names": names,
        "class_names_source": names_source,
        "image_size": size,
        "preprocessing": info,
        "expert": index,
        "num_experts": num_experts,
        "expert_selection": "best" if requested is None else "given",
        "expert_top1": top1,
        "ensemble_top1": (evaluation or {}).get("ensemble", {}).get("top1"),
        "evaluation": None
        if evaluation is None
        else {
            "split": config.dataset.eval_split,
            "epoch": evaluation.get("epoch"),
            "step": evaluation.get("step"),
            "num_examples": evaluation.get("num_examples"),
            "note": "top-1 in percent, raw logits, as recorded during training",
        },
        "source": {
            "workdir": os.path.abspath(workdir),
            "checkpoint_kind": kind,
            "checkpoint_step": int(step),
            "checkpoint_epoch": meta.get("epoch"),
            "dataset": config.dataset.name,
            "backbone": config.model.backbone,
            # -1: the backbone's standard depth / width (e.g. ResNet-32: 5 blocks, width 16).
            "depth": int(config.model.depth),
            "width": int(config.model.width),
            "variant": config.get("variant"),
        },
        "jax_version": jax.__version__,
        "ncl_jax_version": ncl_jax.__version__,
    }
    write_export(out, serialized, metadata)
    return metadata


def summary(metadata: dict, out: str) -> str:
    """The line printed after an export."""
    top1 = metadata["expert_top1"]
    recorded = (
        f"top-1 {top1:.2f}% on {metadata['evaluation']['split']}"
        if isinstance(top1, int | float) and math.isfinite(top1)
        else "no recorded top-1"
    )
    src = metadata["source"]
    return (
        f"wrote {os.path.join(out, ARTEFACT)} and {METADATA}: expert {metadata['expert']} of "
        f"{metadata['num_experts']} ({recorded}) from {src['checkpoint_kind']}/"
        f"{src['checkpoint_step']} (epoch {src['checkpoint_epoch']}), "
        f"{metadata['num_classes']} classes, {metadata['image_size']}px, platforms "
        f"{','.join(metadata['platforms'])}"
    )
