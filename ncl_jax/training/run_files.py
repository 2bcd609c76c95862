"""The JSON files of a workdir beside its checkpoints: config.json (compared on resume),
result.json, written atomically."""

from __future__ import annotations

import json
from typing import Any

from etils import epath
from flax import traverse_util

from ncl_jax.config.resume_rules import resume_differences
from ncl_jax.config.variants import LEGACY_DEFAULTS

# Written once a run has trained every epoch: what ncl_jax.report reads (a workdir without it
# is unfinished).
RESULT_FILE = "result.json"


def flatten(tree: dict) -> dict[str, Any]:
    """A nested config dict with dotted keys."""
    return traverse_util.flatten_dict(tree, sep=".")


def flat_saved(saved: dict) -> dict[str, Any]:
    """A saved config, flat; a field it predates counts as its legacy value
    (ncl_jax.config.variants.LEGACY_DEFAULTS)."""
    return {**LEGACY_DEFAULTS, **flatten(saved)}


def config_differences(saved: dict, current: dict) -> list[str]:
    """Fields (dotted) whose values differ and that change the maths
    (ncl_jax.config.resume_rules: all but RUNTIME_FIELDS)."""
    return resume_differences(flat_saved(saved), flatten(current))[0]


def write_json_atomically(path: epath.PathLike, value: Any) -> None:
    """Writes JSON via a temporary file and a rename (local disks and gs:// alike), so a
    crash never leaves a half-written file."""
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / (path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=True))
    tmp.replace(path)


def config_to_dict(config) -> dict:
    """A JSON-safe dict of a ConfigDict (tuples become lists, as after a JSON round trip)."""
    return json.loads(config.to_json_best_effort(sort_keys=True))
