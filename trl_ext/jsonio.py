"""Checkpoint and result JSON files: atomic writes and reads that name the file when it is wrong (no heavy imports)."""

from __future__ import annotations

import json
import os
from typing import Any

__all__ = ["read_json_object", "write_json_atomic"]


def write_json_atomic(path: str | os.PathLike, payload: Any, *, indent: int | None = None) -> None:
    """Write JSON through a temporary file and a rename, so that a kill mid-write never leaves a half file."""
    tmp = f"{os.fspath(path)}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=indent)
    os.replace(tmp, path)


def read_json_object(path: str, what: str) -> dict[str, Any]:
    """A checkpoint's JSON object file, or a ``ValueError`` naming the file and what is wrong with it."""
    try:
        with open(path) as f:
            value = json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); {what} cannot be restored. "
            "The checkpoint may have been cut off while saving: resume from an earlier checkpoint"
        ) from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object with {what}, got a {type(value).__name__}")
    return value
