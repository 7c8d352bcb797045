"""Prepared examples in: the two sources of hybrid instruction tuning (AgentTuning §2.2), loaded and split.

The trainer reads *prepared* examples: token ids and labels (``-100`` where no loss), one source for agent data and
one for general data, each a parquet or JSONL file (or a directory of them) with columns ``input_ids`` and ``labels``
(and optionally ``turn_ends``, used to cut an over-long example after an assistant turn; see
:mod:`agenttuning.tokens.length`). They are held flat in memory (:class:`TokenTable`: one int32 array of ids, one
of labels, offsets), so a million examples cost no Python objects.

Each source is split once into train and a held-out eval slice (``eval_fraction`` of *both* sources, chosen by a
seeded shuffle), so agent and general losses can be followed as two curves — the trade-off hybrid tuning is about.
How the training examples become batches is :mod:`agenttuning.train.batches`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from agenttuning.data.rows import data_files, iter_rows
from agenttuning.jsonl import RecordError
from agenttuning.tokens.length import IGNORE_INDEX, LengthReport, fit

AGENT, GENERAL = 0, 1
SOURCE_NAMES = ("agent", "general")


# ------------------------------------------------------------------------------------------------------------------
# Prepared examples, flat


@dataclass(frozen=True)
class TokenTable:
    """Examples stored flat: example ``i`` is ``ids[offsets[i]:offsets[i + 1]]`` (and the same slice of labels)."""

    ids: np.ndarray
    labels: np.ndarray
    offsets: np.ndarray
    name: str = ""

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def example(self, i: int) -> SimpleNamespace:
        """Example ``i`` as lists (what :func:`agenttuning.tokens.packing.build_rows` reads)."""
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return SimpleNamespace(input_ids=self.ids[a:b].tolist(), labels=self.labels[a:b].tolist())

    def subset(self, indices: Sequence[int]) -> TokenTable:
        """The examples ``indices``, in that order."""
        idx = np.asarray(indices, dtype=np.int64)
        lengths = self.lengths[idx]
        offsets = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        if len(idx):
            take = np.concatenate([np.arange(self.offsets[i], self.offsets[i + 1]) for i in idx])
        else:
            take = np.zeros(0, dtype=np.int64)
        return TokenTable(self.ids[take], self.labels[take], offsets, self.name)

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
    def from_lists(ids: Sequence[Sequence[int]], labels: Sequence[Sequence[int]], name: str = "") -> TokenTable:
        lengths = np.array([len(x) for x in ids], dtype=np.int64)
        offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = lambda xs: np.fromiter((v for x in xs for v in x), dtype=np.int64, count=int(offsets[-1]))
        return TokenTable(flat(ids).astype(np.int32), flat(labels).astype(np.int32), offsets, name)


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


def _read_file(path: Path) -> tuple[list[Any], list[Any], list[Any] | None]:
    """``(input_ids, labels, turn_ends or None)`` columns of one prepared file."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        schema = pq.read_schema(path)
        missing = [c for c in ("input_ids", "labels") if c not in schema.names]
        if missing:
            raise RecordError(path, 1, f"missing column(s) {missing}: expected prepared examples (input_ids, labels)")
        cols = ["input_ids", "labels"] + (["turn_ends"] if "turn_ends" in schema.names else [])
        table = pq.read_table(path, columns=cols)
        out = [table.column(c).to_pylist() for c in cols]
        return out[0], out[1], out[2] if len(out) > 2 else None
    ids, labels, ends = [], [], []
    for _, where, row in iter_rows(path):
        if not isinstance(row, dict) or "input_ids" not in row or "labels" not in row:
            raise RecordError(path, int(where.split()[-1]), "expected an object with input_ids and labels")
        if "position_ids" in row or "seq_lens" in row:
            # a packed row holds several examples: read as one, they would attend to each other
            raise RecordError(path, int(where.split()[-1]), "packed rows: prepare training data with --no-pack "
                              "(the trainer packs its own batches from the eta-mixture)")
        ids.append(row["input_ids"])
        labels.append(row["labels"])
        ends.append(row.get("turn_ends"))
    return ids, labels, ends if any(e is not None for e in ends) else None


def load_token_table(
    path: str | Path, *, max_len: int, policy: str = "truncate_turns", name: str = ""
) -> tuple[TokenTable, LoadReport]:
    """Read prepared examples, fit them to ``max_len`` and drop those with nothing to train.

    Examples of at most ``max_len`` tokens are kept as they are; longer ones are cut after their last assistant turn
    that fits (``policy="truncate_turns"``, only where a ``turn_ends`` column says where turns end) or dropped.
    """
    files = data_files(path)
    ids_all: list[Any] = []
    labels_all: list[Any] = []
    report = LengthReport(policy=policy, max_len=max_len)  # type: ignore[arg-type]
    untrained = 0
    for f in files:
        ids, labels, ends = _read_file(f)
        for k, (x, y) in enumerate(zip(ids, labels, strict=True)):
            if x is None or y is None or len(x) != len(y) or not x:
                raise RecordError(f, k + 1, f"row {k + 1}: input_ids and labels must be non-empty and equally long")
            n = len(x)
            trained_total = sum(1 for v in y if v != IGNORE_INDEX)
            if n <= max_len:
                report = report + LengthReport(policy, max_len, kept=1, tokens_total=n, tokens_kept=n,  # type: ignore[arg-type]
                                               trained_total=trained_total, trained_kept=trained_total)  # fmt: skip
            else:
                turn_ends = ends[k] if ends is not None else None
                if turn_ends is None:
                    report = report + LengthReport(policy, max_len, dropped=1, tokens_total=n,  # type: ignore[arg-type]
                                                   trained_total=trained_total)  # fmt: skip
                    continue
                kept, one = fit(SimpleNamespace(input_ids=x, labels=y, turn_ends=turn_ends), max_len, policy=policy)  # type: ignore[arg-type]
                report = report + one
                if kept is None:
                    continue
                x, y = kept.input_ids, kept.labels
            if not any(v != IGNORE_INDEX for v in y[1:]):
                untrained += 1
                continue
            ids_all.append(x)
            labels_all.append(y)
    table = TokenTable.from_lists(ids_all, labels_all, name)
    return table, LoadReport(name, [str(f) for f in files], report, untrained)


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
    return TokenTable(np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(1, np.int64), name)


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
