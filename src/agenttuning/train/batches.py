"""Mixed, packed global batches, identical on every process (AgentTuning §2.2 hybrid instruction tuning).

:class:`BatchPlanner` makes the global batch of every optimizer step:

1. draw examples from the eta-mixture (:class:`agenttuning.data.mix.MixSampler`, seeded; its position — the number
   of draws so far — is the whole data-stream state a checkpoint needs): ``batch_size`` draws, or draws until
   ``batch_tokens`` tokens;
2. pack them into rows of ``max_len`` tokens, best-fit decreasing, positions restarting per example
   (:mod:`agenttuning.tokens.packing`), or one example per row without packing. With ``prefix_sharing`` the rows are
   shared-prefix layouts instead (:class:`TreeRow`, :mod:`agenttuning.tokens.prefix_tree`): the batch's examples
   sorted so that those beginning alike (the trajectories of one environment) are neighbours, cut into groups whose
   trie layout fits ``max_len`` *layout* tokens, groups packed best-fit decreasing — each shared prefix is computed
   once per row, so a row holds more examples. The batch's content (the draws), its trained-token count and the
   data-stream state are the same either way;
3. deal the rows to ``num_processes * grad_accum`` micro-batch slots, longest first to the slot with the fewest
   tokens; slot ``s`` is micro-batch ``s // num_processes`` of process ``s % num_processes``. A slot that gets no
   row runs a one-token dummy row without loss, so every process makes the same number of forward calls
   (required by DDP, FSDP and ZeRO-3).

Because every process plans the same global batch, each knows the number of trained tokens of the whole batch
(``GlobalBatch.trained``) before the forward: the loss normaliser of :mod:`agenttuning.train.loss` needs no
communication. :func:`collate` turns a slot's rows into tensors, marking each token's source so the training loss
can be split into agent and general parts; for shared-prefix rows it also builds the explicit loss targets
``(index, token, weight)`` with each target's source, and what attention needs (the segments for
:mod:`agenttuning.train.tree_attention`, or a 4D mask).

One example is a :class:`~agenttuning.tokens.record.TokenRecord` up to here (``table.example(i)``); the types of this
module each hold several, and exist for what only several have: :class:`Row` is a
:class:`~agenttuning.tokens.packing.PackedRow` with the source of each of its examples, :class:`TreeRow` a
:class:`~agenttuning.tokens.prefix_tree.TreeLayout` (its tags are the sources), both with the length and token count
that dealing reads; :class:`GlobalBatch` is one optimizer step's rows dealt to slots with whole-batch totals (the
loss normaliser); :class:`MicroBatch` is one forward's tensors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from agenttuning.data.mix import MixSampler, epoch_length
from agenttuning.tokens.packing import PackedRow, build_rows, collate_rows, pack_bfd, single_bins
from agenttuning.tokens.prefix_tree import TreeLayout, pack_shared, tree_attention_mask, tree_layout
from agenttuning.tokens.record import IGNORE_INDEX, TokenRecord
from agenttuning.train.data import AGENT, GENERAL, TokenTable

if TYPE_CHECKING:
    import torch

# Prefixes shorter than this are not shared: a chat template's first tokens save little and would tie unrelated
# examples into one tree (a segment per example where a root would do).
MIN_SHARED = 16


# ------------------------------------------------------------------------------------------------------------------
# Global batches


@dataclass(frozen=True)
class Row:
    """A packed row and the source (0 agent, 1 general) of each of its examples."""

    packed: PackedRow
    sources: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.packed)

    @property
    def tokens(self) -> int:
        return len(self.packed)


@dataclass(frozen=True)
class TreeRow:
    """A shared-prefix row: its examples laid out as a trie of segments, tagged with their sources (0 / 1).

    ``len()`` is the layout's length (what is computed), ``tokens`` the examples' own tokens.
    """

    layout: TreeLayout

    def __len__(self) -> int:
        return len(self.layout)

    @property
    def tokens(self) -> int:
        return self.layout.tokens

    @property
    def sources(self) -> tuple[int, ...]:
        return self.layout.tags


AnyRow = Row | TreeRow


@dataclass
class GlobalBatch:
    """One optimizer step's data: rows dealt to slots, and totals over the whole batch (all processes).

    ``tokens`` counts the examples' tokens; ``layout_tokens`` the tokens of the rows as computed (fewer with
    prefix sharing: the difference is the saving).
    """

    slots: list[list[AnyRow]]
    examples: int
    agent_examples: int
    tokens: int
    trained: int
    trained_by_source: tuple[int, int] = (0, 0)
    draws_after: int = 0  # the sampler position once this batch is drawn
    layout_tokens: int = 0

    def micro_batches(self, process_index: int, num_processes: int) -> list[list[AnyRow]]:
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
        prefix_sharing: bool = False,
        min_shared: int = MIN_SHARED,
    ):
        if (batch_size is None) == (batch_tokens is None):
            raise ValueError("give exactly one of batch_size and batch_tokens")
        self.tables = (agent, general)
        self.lengths = (agent.lengths, general.lengths)
        self.eta, self.seed, self.max_len, self.n_slots = eta, seed, max_len, n_slots
        self.batch_size, self.batch_tokens, self.pack = batch_size, batch_tokens, pack
        self.prefix_sharing, self.min_shared = prefix_sharing and pack, min_shared
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
        rows: list[AnyRow]
        if self.prefix_sharing:
            rows = shared_rows(examples, [s for s, _ in draws], self.max_len, self.min_shared)
        else:
            bins = pack_bfd(lengths, self.max_len) if self.pack else single_bins(len(examples))
            rows = [Row(r, tuple(draws[j][0] for j in r.example_ids)) for r in build_rows(examples, bins)]
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
            layout_tokens=sum(len(r) for r in rows),
        )


def shared_rows(examples: Sequence[TokenRecord], sources: Sequence[int], max_len: int, min_shared: int
                ) -> list[TreeRow]:  # fmt: skip
    """Shared-prefix rows of at most ``max_len`` layout tokens (:func:`agenttuning.tokens.prefix_tree.pack_shared`)."""
    bins = pack_shared([e.input_ids for e in examples], max_len, min_shared=min_shared)
    return [TreeRow(tree_layout([examples[j] for j in b], tags=[sources[j] for j in b], example_ids=b,
                                min_shared=min_shared)) for b in bins]  # fmt: skip


def _count_trained(row: AnyRow, acc: list[int]) -> None:
    if isinstance(row, TreeRow):
        for _, _, weight, src in row.layout.targets:
            acc[src] += weight
        return
    start = 0
    labels = row.packed.labels
    for n, src in zip(row.packed.seq_lens, row.sources, strict=True):
        acc[src] += sum(1 for v in labels[start : start + n] if v != IGNORE_INDEX)
        start += n


# ------------------------------------------------------------------------------------------------------------------
# To tensors


@dataclass
class MicroBatch:
    """Tensors for one forward: ``(rows, width)`` ids/labels/positions, and each token's source (-1: padding).

    Shared-prefix micro-batches also carry ``targets`` — ``(index, token, weight)``, the explicit loss targets of
    :func:`agenttuning.train.loss.causal_lm_loss` (``labels`` are then all -100) — and ``target_sources``; their
    ``source_ids`` mark a token shared by examples of both sources with -2. ``tokens`` counts the examples' tokens,
    ``layout_tokens`` those computed, ``trained`` the trained tokens (the weights' sum for shared-prefix rows).
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor
    source_ids: torch.Tensor
    tokens: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    targets: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    target_sources: torch.Tensor | None = None
    trained: int = 0
    layout_tokens: int = 0

    def to(self, device: Any) -> MicroBatch:
        move = lambda x: x.to(device) if hasattr(x, "to") else x  # noqa: E731
        return MicroBatch(
            self.input_ids.to(device), self.labels.to(device), self.position_ids.to(device),
            self.source_ids.to(device), self.tokens, {k: move(v) for k, v in self.extra.items()},
            tuple(t.to(device) for t in self.targets) if self.targets is not None else None,  # type: ignore[arg-type]
            move(self.target_sources), self.trained, self.layout_tokens,
        )  # fmt: skip


_DUMMY = Row(PackedRow([0], [IGNORE_INDEX], [0], (1,), ()), (-1,))


TreeAttentionMode = Literal["segments", "mask", "additive_mask"]


def collate(
    rows: Sequence[AnyRow], pad_id: int = 0, *, flatten: bool = False, tree_attention: TreeAttentionMode = "segments"
) -> MicroBatch:
    """Rows to tensors (no row: a one-token dummy without loss). ``flatten``: one row of all of them (varlen).

    Shared-prefix rows (:class:`TreeRow`; a micro-batch is all of one kind) attend per ``tree_attention``:
    ``"segments"`` passes a :class:`~agenttuning.train.tree_attention.TreeAttention` (``prefix_tree`` keyword, for a
    model switched by :func:`agenttuning.train.tree_attention.enable`), ``"mask"`` a 4D bool mask (sdpa),
    ``"additive_mask"`` a 4D float mask (eager attention).
    """
    import torch

    from agenttuning.tokens.packing import packed_attention_kwargs

    trees = [r for r in rows if isinstance(r, TreeRow)]
    if trees:
        if len(trees) != len(rows):
            raise ValueError("a micro-batch holds shared-prefix rows or packed rows, not both")
        if flatten:
            raise ValueError("shared-prefix rows cannot be flattened into one varlen row")
        return _collate_trees(trees, pad_id, tree_attention)
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
    trained = int((batch["labels"] != IGNORE_INDEX).sum())
    return MicroBatch(batch["input_ids"], batch["labels"], batch["position_ids"], source_ids, tokens, extra,
                      trained=trained, layout_tokens=tokens)  # fmt: skip


def _collate_trees(rows: Sequence[TreeRow], pad_id: int, mode: TreeAttentionMode) -> MicroBatch:
    import torch

    layouts = [r.layout for r in rows]
    width = max(len(t) for t in layouts)
    ids, positions, index, tokens, weights, sources = [], [], [], [], [], []
    source_ids = torch.full((len(rows), width), -1, dtype=torch.long)
    for k, t in enumerate(layouts):
        pad = width - len(t)
        ids.append(t.input_ids + [pad_id] * pad)
        positions.append(t.position_ids + list(range(pad)))
        for seg in t.segments:
            tags = {t.tags[e] for e in seg.examples}
            source_ids[k, seg.start : seg.end] = tags.pop() if len(tags) == 1 else -2
        for idx, tgt, w, tag in t.targets:
            index.append(k * width + idx)
            tokens.append(tgt)
            weights.append(w)
            sources.append(tag)
    extra: dict[str, Any]
    if mode == "segments":
        from agenttuning.train.tree_attention import TreeAttention

        extra = {"prefix_tree": TreeAttention.from_layouts(layouts, width)}
    elif mode in ("mask", "additive_mask"):
        dtype = torch.bool if mode == "mask" else torch.float32
        extra = {"attention_mask": tree_attention_mask(layouts, width, dtype=dtype)}
    else:
        raise ValueError(f"unknown tree_attention {mode!r}; expected segments, mask or additive_mask")
    long = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731
    targets = (long(index), long(tokens), torch.tensor(weights, dtype=torch.float32))
    return MicroBatch(
        long(ids), torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long), long(positions), source_ids,
        sum(t.tokens for t in layouts), extra, targets, long(sources), sum(weights), sum(len(t) for t in layouts),
    )  # fmt: skip


def eval_micro_batches(
    table: TokenTable, source: int, *, max_len: int, pack: bool, rows_per_batch: int, process_index: int,
    num_processes: int, prefix_sharing: bool = False, min_shared: int = MIN_SHARED,
) -> list[list[AnyRow]]:  # fmt: skip
    """This process's share of a held-out table as micro-batches; every process gets the same number (some empty)."""
    if len(table) == 0:
        return []
    examples = [table.example(i) for i in range(len(table))]
    lengths = [len(e.input_ids) for e in examples]
    rows: list[AnyRow]
    if prefix_sharing and pack:
        rows = list(shared_rows(examples, [source] * len(examples), max_len, min_shared))
    else:
        bins = pack_bfd(lengths, max_len) if pack else single_bins(len(examples))
        rows = [Row(r, (source,) * len(r.seq_lens)) for r in build_rows(examples, bins)]
    mine = rows[process_index::num_processes]
    n_batches = math.ceil(math.ceil(len(rows) / num_processes) / rows_per_batch)
    return [mine[k * rows_per_batch : (k + 1) * rows_per_batch] for k in range(n_batches)]


__all__ = [
    "MIN_SHARED",
    "AnyRow",
    "BatchPlanner",
    "GlobalBatch",
    "MicroBatch",
    "Row",
    "TreeAttentionMode",
    "TreeRow",
    "collate",
    "deal",
    "eval_micro_batches",
    "shared_rows",
]
