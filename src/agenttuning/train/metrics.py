"""The one small metrics logger of a training run (ARCHITECTURE habit 11).

Every record goes to ``<output_dir>/metrics.jsonl`` (one JSON object per line, appended and fsync'd, main process
only) and, when ``report_to`` names one, to TensorBoard or Weights & Biases through ``accelerate``'s trackers.
Training records carry ``step, loss, lr, grad_norm, tokens_per_s, ...``; eval records carry ``step`` and
``eval_agent_loss`` / ``eval_general_loss`` (the two curves of the agent/general trade-off, AgentTuning §2.2). The
report reads this file, never the console. On resume, records after the checkpoint's step are cut first, so the
file reads as one uninterrupted run.

The console shows a rich progress bar (step, loss, tokens/s, ETA) on a terminal, and one plain line every
``log_every`` steps otherwise.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agenttuning.jsonl import AppendWriter, repair_tail, write_atomic

if TYPE_CHECKING:
    from accelerate import Accelerator


def truncate_after(path: Path, step: int) -> int:
    """Keep only records with ``step <= step`` (a resumed run re-does the later ones); returns records dropped."""
    if not path.exists():
        return 0
    repair_tail(path)
    kept, dropped = [], 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            record = json.loads(line)
            if record.get("step", 0) <= step:
                kept.append(record)
            else:
                dropped += 1
    if dropped:
        write_atomic(path, kept)
    return dropped


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLogger:
    """``metrics.jsonl`` + trackers + console; a no-op except on the main process."""

    def __init__(self, output_dir: Path, accelerator: Accelerator, *, total_steps: int, start_step: int = 0,
                 log_every: int = 1, trackers: bool = False):  # fmt: skip
        self.accelerator = accelerator
        self.main = accelerator.is_main_process
        self.path = output_dir / "metrics.jsonl"
        self.total, self.log_every, self.trackers = total_steps, log_every, trackers
        self._writer: AppendWriter | None = None
        self._progress: Any = None
        self._task: Any = None
        self._console: Any = None
        if self.main:
            if start_step == 0:
                self.path.unlink(missing_ok=True)  # a fresh run: nothing of an earlier one survives
            else:
                truncate_after(self.path, start_step)
            self._writer = AppendWriter(self.path)
            from rich.console import Console

            self._console = Console(stderr=True)
            if self._console.is_terminal:
                from rich.progress import (
                    BarColumn,
                    MofNCompleteColumn,
                    Progress,
                    TextColumn,
                    TimeElapsedColumn,
                    TimeRemainingColumn,
                )

                self._progress = Progress(
                    TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[tps]} tok/s"),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=self._console,
                )  # fmt: skip
                self._progress.start()
                self._task = self._progress.add_task("train", total=total_steps, completed=start_step, loss="-",
                                                     tps="-")  # fmt: skip

    def log(self, record: dict[str, Any]) -> None:
        """Append one record (must hold ``step``) everywhere it goes."""
        if not self.main:
            return
        record = {k: _clean(v) for k, v in record.items()}
        assert self._writer is not None
        self._writer.write(record)
        if self.trackers:
            numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
            self.accelerator.log(numbers, step=record["step"])

    def step(self, record: dict[str, Any]) -> None:
        """A training step's record: logged every ``log_every`` steps (and the last), progress always advanced."""
        step = record["step"]
        if step % self.log_every == 0 or step == self.total:
            self.log(record)
            if self.main and self._progress is None:
                self.print(
                    f"step {step}/{self.total}  loss {record['loss']:.4f}  lr {record['lr']:.3g}  "
                    f"{record['tokens_per_s']:.0f} tok/s"
                )
        if self._progress is not None:
            self._progress.update(self._task, completed=step, loss=f"{record['loss']:.4f}",
                                  tps=f"{record['tokens_per_s']:.0f}")  # fmt: skip

    def print(self, text: str) -> None:
        if self.main and self._console is not None:
            self._console.print(text, highlight=False)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class Timer:
    """Wall time of the current step, and tokens/s over it."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        elapsed, self.start = now - self.start, now
        return elapsed


__all__ = ["MetricsLogger", "Timer", "truncate_after"]
