"""Atomic, resumable training checkpoints: never a half-written one, the newest ``keep`` kept.

A checkpoint (every ``save_every`` steps and at the last step, so a finished run can be extended with a larger
``max_steps``) is ``<output_dir>/checkpoints/step-00000100/``, holding what ``accelerate``'s ``save_state`` writes
(model weights — only the trainable ones for LoRA —, optimizer, the lr scheduler, gradient scaler, and the RNG
states of Python, NumPy, torch and CUDA of *every* process; DeepSpeed and FSDP write their own sharded states),
plus ``trainer_state.json`` (optimizer step, data-stream position, counters) and ``train_config.yaml``.

Atomicity: everything is written into ``checkpoints/.tmp-step-…`` first; only when every process has finished
does the main process write ``trainer_state.json`` last and rename the folder to ``step-…`` (a rename is atomic
on POSIX file systems). A crash at any moment leaves either the complete checkpoint or a ``.tmp-`` folder that
is ignored and cleared by the next save. With several nodes, ``output_dir`` must be on a shared file system.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agenttuning.train.config import TrainConfig, save_config, write_text_atomic

if TYPE_CHECKING:
    from accelerate import Accelerator

STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^step-(\d+)$")


def checkpoints_root(output_dir: str | os.PathLike[str]) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """Complete checkpoints ``(step, folder)``, oldest first (temporary and incomplete folders are skipped)."""
    root = checkpoints_root(output_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_dir() and (p / STATE_FILE).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(output_dir: str | os.PathLike[str]) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


def read_state(folder: str | os.PathLike[str]) -> dict[str, Any]:
    return json.loads((Path(folder) / STATE_FILE).read_text(encoding="utf-8"))


def save_checkpoint(
    accelerator: Accelerator,
    output_dir: str | os.PathLike[str],
    step: int,
    trainer_state: dict[str, Any],
    config: TrainConfig,
    keep: int,
) -> Path:
    """Write the checkpoint of ``step`` atomically (every process calls this) and prune to the newest ``keep``."""
    root = checkpoints_root(output_dir)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-step-*"):
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_config(config, tmp / "train_config.yaml")
        write_text_atomic(tmp / STATE_FILE, json.dumps(trainer_state, indent=2, sort_keys=True) + "\n")
        _fsync_dir(tmp)
        if final.exists():  # the same step saved again (e.g. a resumed run): swap, never leave neither
            old = root / f".old-step-{step:08d}"
            shutil.rmtree(old, ignore_errors=True)
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
        _fsync_dir(root)
        for _, p in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(p, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, folder: str | os.PathLike[str], *, strict: bool = True) -> dict[str, Any]:
    """Restore model, optimizer, scheduler, scaler and every process's RNG state; return ``trainer_state.json``."""
    kwargs = {} if strict else {"strict": False}
    accelerator.load_state(str(folder), **kwargs)
    return read_state(folder)


def trainable_only_hook(models: list[Any], weights: list[dict[str, Any]], output_dir: str) -> None:
    """``accelerate`` save-state pre-hook: drop frozen parameters from saved weights (LoRA: the base stays out)."""
    for model, state in zip(models, weights, strict=False):
        frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
        for name in [k for k in state if k in frozen]:
            del state[name]


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


__all__ = [
    "STATE_FILE",
    "checkpoints_root",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "read_state",
    "save_checkpoint",
    "trainable_only_hook",
]
