"""The one manifest writer: every stage's output folder is complete once its ``manifest.json`` is written, last.

A manifest is the stage's frozen result (what it wrote and counted) with the config that made it, the inputs it
read and how long it took. The same writer serves a single command (``agenttuning filter ... --out D``) and the
pipeline, which adds the stage's content key (:mod:`agenttuning.pipeline.cache`); so the two write the same
manifest body for the same work, and the pipeline's cache check is "is there a manifest with my key".

The manifest is written atomically (temporary file + rename) and after every other file of the stage, so a killed
stage leaves no manifest and its folder never counts as done.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> m = write_stage_manifest(d, stage="mix", config={"eta": 0.2}, inputs={"agent": "a"}, result={"n": 5}, seconds=0.1)
>>> read_stage_manifest(d).result, read_stage_manifest(d).stage
({'n': 5}, 'mix')
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agenttuning.jsonl import write_text_atomic

__all__ = ["MANIFEST", "Manifest", "StageResult", "read_stage_manifest", "write_stage_manifest"]

MANIFEST = "manifest.json"


class StageResult(BaseModel):
    """Base of every stage's result: frozen, JSON-serialisable, the body of its manifest (no paths outside the
    stage's folder, no timings, so equal work gives equal results)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Manifest(BaseModel):
    """What a finished stage folder holds and how it was made."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    stage: str = Field(description="The stage's name: filter, decontaminate, mix, prepare, ...")
    key: str | None = Field(None, description="The pipeline's content key of this output; None for a single command.")
    config: dict[str, Any] = Field(description="The stage config (for the pipeline: the settings its key hashes).")
    inputs: dict[str, Any] = Field(description="What it read: paths (a command) or upstream stage keys (pipeline).")
    result: dict[str, Any] = Field(description="The stage's result: files written (relative names) and counts.")
    seconds: float = Field(description="Wall time of the stage.")
    finished: str = Field(description="UTC time the manifest was written (ISO 8601).")


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return json.loads(json.dumps(value, default=str))  # Paths, Counters, tuples -> JSON values


def write_stage_manifest(folder: str | os.PathLike[str], *, stage: str, config: Any, inputs: Any, result: Any,
                   seconds: float, key: str | None = None) -> Manifest:  # fmt: skip
    """Write ``<folder>/manifest.json`` atomically; call it after every other file of the stage is written."""
    manifest = Manifest(stage=stage, key=key, config=_plain(config), inputs=_plain(inputs), result=_plain(result),
                        seconds=round(seconds, 3),
                        finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))  # fmt: skip
    body = json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True, ensure_ascii=False)
    write_text_atomic(Path(folder) / MANIFEST, body + "\n")
    return manifest


def read_stage_manifest(folder: str | os.PathLike[str]) -> Manifest | None:
    """The folder's manifest, or None when there is none or it is not a manifest (an unfinished or foreign folder)."""
    try:
        return Manifest.model_validate_json((Path(folder) / MANIFEST).read_bytes())
    except (FileNotFoundError, NotADirectoryError, ValidationError):
        return None
