"""Prepared examples in: the two sources of hybrid instruction tuning (AgentTuning §2.2), loaded and split.

The trainer reads *prepared* examples: token ids and labels (``-100`` where no loss), one source for agent data and
one for general data, each a parquet or JSONL file (or a directory of them) with columns ``input_ids`` and ``labels``
(and optionally ``turn_ends``, used to cut an over-long example after an assistant turn; see
:mod:`agenttuning.tokens.length`). Each row is read as the prepare stage wrote it, by
:meth:`TokenRecord.from_row <agenttuning.tokens.record.TokenRecord.from_row>` (the ``id``, ``source`` and ``family``
columns are not read: the source is the file's, agent or general). The fitted records are then held flat in memory
(:class:`TokenTable`: one int32 array of ids, one of labels, one of turn ends, offsets), so a million examples cost
no Python objects; ``table.example(i)`` gives a :class:`~agenttuning.tokens.record.TokenRecord` back.

Each source is split once into train and a held-out eval slice (``eval_fraction`` of *both* sources, chosen by a
seeded shuffle), so agent and general losses can be followed as two curves — the trade-off hybrid tuning is about.
How the training examples become batches is :mod:`agenttuning.train.batches`.
"""

from __future__ import annotations

import gc
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from agenttuning.data.rows import data_files, iter_rows, located
from agenttuning.jsonl import RecordError
from agenttuning.tokens.length import POLICIES, LengthReport, fit
from agenttuning.tokens.record import IGNORE_INDEX, PACKED_COLUMNS, TokenRecord

AGENT, GENERAL = 0, 1
SOURCE_NAMES = ("agent", "general")


# ------------------------------------------------------------------------------------------------------------------
# Prepared examples, flat


@dataclass(frozen=True)
class TokenTable:
    """Many :class:`~agenttuning.tokens.record.TokenRecord` s stored flat: record ``i`` has the ids
    ``ids[offsets[i]:offsets[i + 1]]`` (and that slice of labels) and the turn ends
    ``turn_ends[turn_offsets[i]:turn_offsets[i + 1]]`` (relative to its own start, as in the record).

    A columnar store, not another record type: the batch planner draws records by index (:meth:`example`) and reads
    every length at once (:attr:`lengths`) without a Python object per example.
    """

    ids: np.ndarray
    labels: np.ndarray
    offsets: np.ndarray
    turn_ends: np.ndarray
    turn_offsets: np.ndarray
    name: str = ""

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def example(self, i: int) -> TokenRecord:
        """Record ``i``, as lists (what packing and prefix sharing read)."""
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        c, d = int(self.turn_offsets[i]), int(self.turn_offsets[i + 1])
        return TokenRecord(self.ids[a:b].tolist(), self.labels[a:b].tolist(), self.turn_ends[c:d].tolist())

    def subset(self, indices: Sequence[int]) -> TokenTable:
        """The records ``indices``, in that order."""
        idx = np.asarray(indices, dtype=np.int64)
        take, offsets = _gather(self.offsets, idx)
        turns, turn_offsets = _gather(self.turn_offsets, idx)
        return TokenTable(self.ids[take], self.labels[take], offsets, self.turn_ends[turns], turn_offsets, self.name)

    @property
    def tokens(self) -> int:
        return int(self.offsets[-1])

    @property
    def trained(self) -> int:
        """Trained tokens, counting the first token of an example as untrained (packing drops its label)."""
        firsts = self.offsets[:-1]
        return int((self.labels != IGNORE_INDEX).sum() - (self.labels[firsts] != IGNORE_INDEX).sum())

    def max_id(self) -> int:
        return int(self.ids.max()) if len(self.ids) else -1

    @staticmethod
    def from_records(records: Sequence[TokenRecord], name: str = "") -> TokenTable:
        """The table of ``records``, in order (their ``id``, ``source`` and ``family`` are not kept)."""
        offsets = _offsets([len(r.input_ids) for r in records])
        turn_offsets = _offsets([len(r.turn_ends) for r in records])
        n, t = int(offsets[-1]), int(turn_offsets[-1])
        return TokenTable(_flat((r.input_ids for r in records), n), _flat((r.labels for r in records), n), offsets,
                          _flat((r.turn_ends for r in records), t), turn_offsets, name)  # fmt: skip


def _flat(lists: Iterator[Sequence[int]], count: int) -> np.ndarray:
    """``lists`` concatenated into one int32 array of ``count`` values."""
    return np.fromiter(chain.from_iterable(lists), dtype=np.int64, count=count).astype(np.int32)


def _offsets(lengths: Sequence[int]) -> np.ndarray:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(np.asarray(lengths, dtype=np.int64), out=offsets[1:])
    return offsets


def _gather(offsets: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat positions of the runs ``idx`` of an offsets-indexed array, and the offsets of those runs."""
    new = _offsets(np.diff(offsets)[idx])
    if len(idx):
        take = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in idx])
    else:
        take = np.zeros(0, dtype=np.int64)
    return take, new


@dataclass(frozen=True)
class LoadReport:
    """What loading one source kept: the length report (:mod:`agenttuning.tokens.length`) and other drops."""

    source: str
    files: list[str]
    length: LengthReport
    untrained: int  # examples dropped for carrying no trained token (after the first position)

    def to_dict(self) -> dict[str, Any]:
        length = self.length.to_dict()
        return {"source": self.source, "files": self.files, "untrained_dropped": self.untrained, **length}


def _read_records(path: Path) -> Iterator[tuple[int, str, TokenRecord]]:
    """``(line, where, record)`` for each row of one prepared file, read by :meth:`TokenRecord.from_row`.

    Parquet: only the token columns are read (column-wise, fast); a RecordError names the file and row of a row that
    is not one example (a packed file is refused at its first row).
    """
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        names = pq.read_schema(path).names
        missing = [c for c in ("input_ids", "labels") if c not in names]
        if missing:
            raise RecordError(path, 1, f"missing column(s) {missing}: expected prepared examples (input_ids, labels)")
        cols = [c for c in ("input_ids", "labels", "turn_ends", *PACKED_COLUMNS) if c in names]
        table = pq.read_table(path, columns=cols)
        columns = [table.column(c).to_pylist() for c in cols]
        rows: Iterator[tuple[int, str, Any]] = (
            (k, f"row {k}", dict(zip(cols, values, strict=True))) for k, values in enumerate(zip(*columns), 1)
        )
    else:
        rows = iter_rows(path)
    for line, where, row in rows:
        try:
            record = TokenRecord.from_row(row)
        except ValueError as e:
            raise located(path, line, where, str(e)) from None
        if not record.input_ids:
            raise located(path, line, where, "input_ids and labels must be non-empty")
        yield line, where, record


def load_token_table(
    path: str | Path, *, max_len: int, policy: str = "truncate_turns", name: str = ""
) -> tuple[TokenTable, LoadReport]:
    """Read prepared examples, fit them to ``max_len`` and drop those with nothing to train.

    Examples of at most ``max_len`` tokens are kept as they are; longer ones are cut after their last assistant turn
    that fits (``policy="truncate_turns"``, only where a ``turn_ends`` column says where turns end: a row without
    one is a single turn, which cannot be cut) or dropped (:func:`agenttuning.tokens.length.fit`).
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown length policy {policy!r}; expected one of {POLICIES}")
    files = data_files(path)
    kept: list[TokenRecord] = []
    report = LengthReport(policy=policy, max_len=max_len)  # type: ignore[arg-type]
    untrained = 0
    with _collector_paused():
        for f in files:
            for line, where, record in _read_records(f):
                try:
                    fitted, one = fit(record, max_len, policy=policy)  # type: ignore[arg-type]
                except ValueError as e:  # turn_ends that do not fit the tokens
                    raise located(f, line, where, str(e)) from None
                report = report + one
                if fitted is None:
                    continue
                if not any(v != IGNORE_INDEX for v in fitted.labels[1:]):
                    untrained += 1
                    continue
                kept.append(fitted)
        table = TokenTable.from_records(kept, name)
    return table, LoadReport(name, [str(f) for f in files], report, untrained)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while rows are read: reading allocates lists of ints by the hundred
    thousand (no cycle among them), and each collection would walk all their items again for nothing."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def split_eval(n: int, fraction: float, seed: int, name: str) -> tuple[list[int], list[int]]:
    """``(train, eval)`` indices: a seeded ``fraction`` of ``n`` held out (at least one, leaving at least one).

    >>> split_eval(10, 0.2, 0, "agent")[1]
    [0, 9]
    """
    if fraction <= 0 or n < 2:
        return list(range(n)), []
    k = min(n - 1, max(1, round(n * fraction)))
    order = random.Random(f"eval:{seed}:{name}").sample(range(n), n)
    return sorted(order[k:]), sorted(order[:k])


@dataclass(frozen=True)
class Sources:
    """Train and held-out examples of both sources (an empty table where a source is unused)."""

    train: tuple[TokenTable, TokenTable]  # (agent, general)
    eval: tuple[TokenTable, TokenTable]
    reports: tuple[LoadReport | None, LoadReport | None]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for s, name in enumerate(SOURCE_NAMES):
            out[name] = {
                "train_examples": len(self.train[s]), "eval_examples": len(self.eval[s]),
                "train_tokens": self.train[s].tokens, "train_trained_tokens": self.train[s].trained,
                "load": self.reports[s].to_dict() if self.reports[s] else None,
            }  # fmt: skip
        return out


def _empty(name: str) -> TokenTable:
    return TokenTable.from_records([], name)


def load_sources(
    agent: str | None, general: str | None, *, eta: float, max_len: int, policy: str, eval_fraction: float, seed: int
) -> Sources:
    """Both sources, loaded (a source with weight 0 in the mixture is not read) and split into train / eval."""
    train, evals, reports = [], [], []
    for name, path, used in (("agent", agent, eta > 0), ("general", general, eta < 1)):
        if not used or path is None:
            train.append(_empty(name))
            evals.append(_empty(name))
            reports.append(None)
            continue
        table, report = load_token_table(path, max_len=max_len, policy=policy, name=name)
        if len(table) == 0:
            raise ValueError(f"{path}: no usable {name} examples (all dropped: {report.to_dict()})")
        tr, ev = split_eval(len(table), eval_fraction, seed, name)
        train.append(table.subset(tr) if ev else table)
        evals.append(table.subset(ev) if ev else _empty(name))
        reports.append(report)
    return Sources((train[0], train[1]), (evals[0], evals[1]), (reports[0], reports[1]))


__all__ = [
    "AGENT",
    "GENERAL",
    "SOURCE_NAMES",
    "LoadReport",
    "Sources",
    "TokenTable",
    "load_token_table",
    "load_sources",
    "split_eval",
]
