"""Mixed, packed global batches, identical on every process (AgentTuning §2.2 hybrid instruction tuning).

:class:`BatchPlanner` makes the global batch of every optimizer step:

1. draw examples from the eta-mixture (:class:`agenttuning.data.mix.MixSampler`, seeded; its position — the number
   of draws so far — is the whole data-stream state a checkpoint needs): ``batch_size`` draws, or draws until
   ``batch_tokens`` tokens;
2. pack them into rows of ``max_len`` tokens, best-fit decreasing, positions restarting per example
   (:mod:`agenttuning.tokens.packing`), or one example per row without packing;
3. deal the rows to ``num_processes * grad_accum`` micro-batch slots, longest first to the slot with the fewest
   tokens; slot ``s`` is micro-batch ``s // num_processes`` of process ``s % num_processes``. A slot that gets no
   row runs a one-token dummy row without loss, so every process makes the same number of forward calls
   (required by DDP, FSDP and ZeRO-3).

Because every process plans the same global batch, each knows the number of trained tokens of the whole batch
(``GlobalBatch.trained``) before the forward: the loss normaliser of :mod:`agenttuning.train.loss` needs no
communication. :func:`collate` turns a slot's rows into tensors, marking each token's source so the training loss
can be split into agent and general parts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agenttuning.data.mix import MixSampler, epoch_length
from agenttuning.tokens.length import IGNORE_INDEX
from agenttuning.tokens.packing import PackedRow, build_rows, collate_rows, pack_bfd, single_bins
from agenttuning.train.data import AGENT, GENERAL, TokenTable

if TYPE_CHECKING:
    import torch


# ------------------------------------------------------------------------------------------------------------------
# Global batches


@dataclass(frozen=True)
class Row:
    """A packed row and the source (0 agent, 1 general) of each of its examples."""

    packed: PackedRow
    sources: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.packed)


@dataclass
class GlobalBatch:
    """One optimizer step's data: rows dealt to slots, and totals over the whole batch (all processes)."""

    slots: list[list[Row]]
    examples: int
    agent_examples: int
    tokens: int
    trained: int
    trained_by_source: tuple[int, int] = (0, 0)
    draws_after: int = 0  # the sampler position once this batch is drawn

    def micro_batches(self, process_index: int, num_processes: int) -> list[list[Row]]:
        """This process's micro-batches, in order: slots ``process_index, process_index + num_processes, ...``."""
        return self.slots[process_index::num_processes]


def deal(lengths: Sequence[int], n_slots: int) -> list[list[int]]:
    """Longest-processing-time dealing: row indices per slot, each row to the slot with the fewest tokens so far.

    >>> deal([5, 3, 4, 1], 2)
    [[0, 3], [2, 1]]
    """
    slots: list[list[int]] = [[] for _ in range(n_slots)]
    load = [0] * n_slots
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        s = min(range(n_slots), key=lambda k: (load[k], k))
        slots[s].append(i)
        load[s] += lengths[i]
    return slots


class BatchPlanner:
    """Deterministic global batches from the eta-mixture of two :class:`TokenTable` s; state = draws so far."""

    def __init__(
        self,
        agent: TokenTable,
        general: TokenTable,
        *,
        eta: float,
        seed: int,
        max_len: int,
        n_slots: int,
        batch_size: int | None = None,
        batch_tokens: int | None = None,
        pack: bool = True,
    ):
        if (batch_size is None) == (batch_tokens is None):
            raise ValueError("give exactly one of batch_size and batch_tokens")
        self.tables = (agent, general)
        self.lengths = (agent.lengths, general.lengths)
        self.eta, self.seed, self.max_len, self.n_slots = eta, seed, max_len, n_slots
        self.batch_size, self.batch_tokens, self.pack = batch_size, batch_tokens, pack
        self.sampler = MixSampler(len(agent), len(general), eta, seed)

    # --- state ------------------------------------------------------------------------------------------------
    @property
    def draws(self) -> int:
        return self.sampler.step

    def state_dict(self) -> dict[str, int]:
        return {"draws": self.sampler.step, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"checkpoint data stream has seed {state['seed']}, config has {self.seed}")
        self.sampler = self.sampler.at(int(state["draws"]))

    def epoch_draws(self) -> int:
        """Draws per epoch: ``ceil(n_agent / eta)`` (:func:`agenttuning.data.mix.epoch_length`)."""
        return epoch_length(len(self.tables[0]), len(self.tables[1]), self.eta)

    def steps_for_draws(self, draws: int) -> int:
        """Optimizer steps until at least ``draws`` draws are made (simulated on lengths for ``batch_tokens``)."""
        if self.batch_size is not None:
            return max(1, math.ceil(draws / self.batch_size))
        sampler, steps, made = MixSampler(len(self.tables[0]), len(self.tables[1]), self.eta, self.seed), 0, 0
        while made < draws:
            total = 0
            while total < self.batch_tokens:  # type: ignore[operator]
                src, i = next(sampler)
                total += int(self.lengths[0 if src == "agent" else 1][i])
                made += 1
            steps += 1
        return max(1, steps)

    # --- drawing ----------------------------------------------------------------------------------------------
    def _draw(self) -> list[tuple[int, int]]:
        if self.batch_size is not None:
            return [(AGENT if s == "agent" else GENERAL, i) for s, i in self.sampler.take(self.batch_size)]
        draws, total = [], 0
        while total < self.batch_tokens:  # type: ignore[operator]
            s, i = next(self.sampler)
            src = AGENT if s == "agent" else GENERAL
            draws.append((src, i))
            total += int(self.lengths[src][i])
        return draws

    def next_batch(self) -> GlobalBatch:
        """The next global batch (advances the stream)."""
        draws = self._draw()
        examples = [self.tables[s].example(i) for s, i in draws]
        lengths = [len(e.input_ids) for e in examples]
        bins = pack_bfd(lengths, self.max_len) if self.pack else single_bins(len(examples))
        packed = build_rows(examples, bins)
        rows = [Row(r, tuple(draws[j][0] for j in r.example_ids)) for r in packed]
        slots = [[rows[i] for i in slot] for slot in deal([len(r) for r in rows], self.n_slots)]
        by_source = [0, 0]
        for r in rows:
            _count_trained(r, by_source)
        return GlobalBatch(
            slots=slots,
            examples=len(draws),
            agent_examples=sum(1 for s, _ in draws if s == AGENT),
            tokens=sum(lengths),
            trained=by_source[0] + by_source[1],
            trained_by_source=(by_source[0], by_source[1]),
            draws_after=self.sampler.step,
        )


def _count_trained(row: Row, acc: list[int]) -> None:
    start = 0
    labels = row.packed.labels
    for n, src in zip(row.packed.seq_lens, row.sources, strict=True):
        acc[src] += sum(1 for v in labels[start : start + n] if v != IGNORE_INDEX)
        start += n


# ------------------------------------------------------------------------------------------------------------------
# To tensors


@dataclass
class MicroBatch:
    """Tensors for one forward: ``(rows, width)`` ids/labels/positions, and each token's source (-1: padding)."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor
    source_ids: torch.Tensor
    tokens: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to(self, device: Any) -> MicroBatch:
        return MicroBatch(
            self.input_ids.to(device), self.labels.to(device), self.position_ids.to(device),
            self.source_ids.to(device), self.tokens,
            {k: v.to(device) if hasattr(v, "to") else v for k, v in self.extra.items()},
        )  # fmt: skip


_DUMMY = Row(PackedRow([0], [IGNORE_INDEX], [0], (1,), ()), (-1,))


def collate(rows: Sequence[Row], pad_id: int = 0, *, flatten: bool = False) -> MicroBatch:
    """Rows to tensors (no row: a one-token dummy without loss). ``flatten``: one row of all of them (varlen)."""
    import torch

    from agenttuning.tokens.packing import packed_attention_kwargs

    rows = list(rows) or [_DUMMY]
    if flatten:
        joined = PackedRow(
            [t for r in rows for t in r.packed.input_ids],
            [t for r in rows for t in r.packed.labels],
            [t for r in rows for t in r.packed.position_ids],
            tuple(n for r in rows for n in r.packed.seq_lens),
        )
        rows = [Row(joined, tuple(s for r in rows for s in r.sources))]
    batch = collate_rows([r.packed for r in rows], pad_id)
    width = batch["input_ids"].shape[1]
    source_ids = torch.full((len(rows), width), -1, dtype=torch.long)
    for k, r in enumerate(rows):
        start = 0
        for n, src in zip(r.packed.seq_lens, r.sources, strict=True):
            source_ids[k, start : start + n] = src
            start += n
    extra: dict[str, Any] = {}
    if flatten:
        kwargs = packed_attention_kwargs(batch["position_ids"], "flash")
        extra = {k: v for k, v in kwargs.items() if k not in ("position_ids", "use_cache")}
    tokens = sum(len(r) for r in rows if r is not _DUMMY)
    return MicroBatch(batch["input_ids"], batch["labels"], batch["position_ids"], source_ids, tokens, extra)


def eval_micro_batches(
    table: TokenTable, source: int, *, max_len: int, pack: bool, rows_per_batch: int, process_index: int,
    num_processes: int,
) -> list[list[Row]]:  # fmt: skip
    """This process's share of a held-out table as micro-batches; every process gets the same number (some empty)."""
    if len(table) == 0:
        return []
    examples = [table.example(i) for i in range(len(table))]
    lengths = [len(e.input_ids) for e in examples]
    bins = pack_bfd(lengths, max_len) if pack else single_bins(len(examples))
    rows = [Row(r, (source,) * len(r.seq_lens)) for r in build_rows(examples, bins)]
    mine = rows[process_index::num_processes]
    n_batches = math.ceil(math.ceil(len(rows) / num_processes) / rows_per_batch)
    return [mine[k * rows_per_batch : (k + 1) * rows_per_batch] for k in range(n_batches)]


__all__ = [
    "BatchPlanner",
    "GlobalBatch",
    "MicroBatch",
    "Row",
    "collate",
    "deal",
    "eval_micro_batches",
]
