"""Content-addressed stage outputs: a stage's folder is named by a hash of everything its output depends on.

A stage's **key** hashes its name, its code version, its settings, and the keys of the stages it reads (so a change
anywhere upstream changes every key below it), plus the content of any outside file it reads. Its output lives in
``<out>/stages/<name>-<key[:12]>/`` and counts as complete only once ``manifest.json`` is written there, last and
atomically, by the one manifest writer (:mod:`agenttuning.stages.manifest`) with the key in it — a killed stage leaves no manifest, and the next run picks the same folder up again (stages that can
resume, like rollout and training, continue where they stopped; the others start over).

>>> a = stage_key("mix", {"eta": 0.2}, {"prepare": "k1"})
>>> a == stage_key("mix", {"eta": 0.2}, {"prepare": "k1"}), a == stage_key("mix", {"eta": 0.5}, {"prepare": "k1"})
(True, False)
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agenttuning.stages.manifest import MANIFEST, Manifest, read_stage_manifest, write_stage_manifest

__all__ = ["MANIFEST", "StageDir", "file_digest", "stage_key"]

KEY_LENGTH = 12


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def stage_key(name: str, settings: dict[str, Any], inputs: dict[str, str], *, version: int = 1) -> str:
    """sha256 of the stage's name, code version, settings and input keys (full hex)."""
    blob = _canonical({"stage": name, "version": version, "settings": settings, "inputs": inputs})
    return hashlib.sha256(blob.encode()).hexdigest()


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes, or of a folder's files (relative names and bytes, in sorted order)."""
    p = Path(path)
    h = hashlib.sha256()
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    for f in files:
        h.update(str(f.relative_to(p) if f != p else f.name).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class StageDir:
    """One stage's content-addressed folder."""

    name: str
    key: str
    path: Path

    @classmethod
    def at(cls, root: str | Path, name: str, key: str) -> StageDir:
        return cls(name, key, Path(root) / "stages" / f"{name}-{key[:KEY_LENGTH]}")

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def complete(self) -> bool:
        """True when the manifest exists and names this key (a folder-name collision is not a hit)."""
        m = self.manifest()
        return m is not None and m.key == self.key

    def manifest(self) -> Manifest | None:
        return read_stage_manifest(self.path)

    def prepare(self, *, keep_partial: bool) -> None:
        """Make the folder ready to (re)run: resumable stages keep partial output, the others start empty."""
        if self.path.exists() and not keep_partial:
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)

    def finish(self, *, settings: dict[str, Any], inputs: dict[str, str], result: Any, seconds: float) -> Manifest:
        """Write the manifest last, with this stage's key (the one writer): from here on the stage counts as done."""
        return write_stage_manifest(self.path, stage=self.name, key=self.key, config=settings, inputs=inputs,
                              result=result, seconds=seconds)  # fmt: skip
