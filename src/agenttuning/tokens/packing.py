"""Padding-free packing: best-fit-decreasing bins of examples, concatenated with restarting ``position_ids``.

AgentInstruct trajectories (1k-4k tokens) mixed with ShareGPT chats (mostly a few hundred tokens) waste most of a
padded 4,096-token batch. We pack them instead (the paper trains at 4,096 tokens, AgentTuning §3.1):

1. :func:`pack_bfd` — best-fit decreasing: examples sorted by length (longest first, ties by index), each put into
   the open bin with the *least* room that still fits it (ties: the bin opened first), else a new bin. Bins with the
   same remaining room are grouped, and the distinct remaining rooms (at most ``max_len + 1`` values) kept sorted,
   so each placement is one ``bisect`` plus one heap operation: 100k examples pack in a fraction of a second.
2. :func:`build_rows` — a row is the concatenation of its examples' (:class:`~agenttuning.tokens.record.TokenRecord`
   s) ``input_ids`` and ``labels``, with
   ``position_ids`` restarting at 0 at every example and the per-example lengths (``seq_lens``, ``cu_seqlens``).
   This is the layout of flash-attention's varlen kernels and of Hugging Face's ``DataCollatorWithFlattening``.
   The first label of every example is set to ``-100``: with labels shifted inside the model, that label would
   otherwise train the previous example's last token to predict an unrelated next example.
3. :func:`packed_attention_kwargs` — what to pass the model so that packed examples cannot attend to each other.

Which attention path isolates packed examples (checked in ``tests/tokens/test_packing.py`` against each example run
alone, with a tiny Llama on CPU, transformers 5.23, ``sdpa`` and ``eager``): transformers' mask builder
(``masking_utils.find_packed_sequence_indices``) reads the restarts of ``position_ids`` and builds a block-diagonal
causal mask itself — but only when there is *no* ``attention_mask`` *and no cache*. A model whose config says
``use_cache=True`` (the default of every pretrained config) creates a ``DynamicCache`` even in ``train()`` mode, the
detection is skipped, and every example silently attends to all earlier ones in its row; a 2D padding mask skips it
too. (HF ``Trainer`` happens to be safe: it sets ``config.use_cache = args.use_cache``, default False.) So
:func:`packed_attention_kwargs` always passes ``use_cache=False``, and offers an explicit 4D block-diagonal mask
(``mode="mask"``) that isolates examples whatever the cache or the transformers version, and the ``cu_seq_lens_q/k``
keywords of the flash varlen kernels (``mode="flash"``, GPU only; not exercised on CPU).

Shared-prefix rows (:mod:`agenttuning.tokens.prefix_tree`) must never be left to that detection: their positions
jump *back* where a sibling branch starts (a suffix continues from its prefix's length, not from 0), which the
detector reads as the start of an unrelated sequence — it would cut every suffix off from the prefix it extends
(checked in ``tests/train/test_prefix_sharing.py``, transformers 5.25). Such rows are passed an explicit 4D mask
(:func:`~agenttuning.tokens.prefix_tree.tree_attention_mask`: bool for sdpa, additive for eager — transformers
returns any 4D mask as given, skipping detection and cache-based sizing) or go through the segment kernel of
:mod:`agenttuning.train.tree_attention`, always with ``use_cache=False``.

    >>> from agenttuning.tokens.record import TokenRecord
    >>> exs = [TokenRecord([5, 6, 7], [5, 6, 7], [3]), TokenRecord([8, 9], [-100, 9], [1, 2]),
    ...        TokenRecord([1, 2, 3, 4], [1, 2, 3, 4], [4])]
    >>> bins = pack_bfd([len(e.input_ids) for e in exs], max_len=5)
    >>> bins
    [[2], [0, 1]]
    >>> row = build_rows(exs, bins)[1]
    >>> row.input_ids, row.labels, row.position_ids, row.seq_lens, row.cu_seqlens
    ([5, 6, 7, 8, 9], [-100, 6, 7, -100, 9], [0, 1, 2, 0, 1], (3, 2), (0, 3, 5))

Why a row has its own type (:class:`PackedRow`) rather than being a TokenRecord: it holds several examples, so it
carries what only a concatenation has (``position_ids`` restarting per example, ``seq_lens``, which examples) and
drops what only one example has (``turn_ends``: a packed row is never cut, and its examples' own ids stay with the
records). The ``prepare`` stage writes it with :meth:`PackedRow.to_row` when ``pack=true``; the trainer never reads
such rows (it packs its own batches, :mod:`agenttuning.train.batches`).
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from agenttuning.tokens.record import IGNORE_INDEX, TokenRecord

if TYPE_CHECKING:
    import torch

@dataclass(frozen=True)
class PackedRow:
    """One training row: the records ``example_ids`` concatenated, positions restarting at each.

    ``labels`` are aligned with ``input_ids`` (the model shifts them); the first label of every example is ``-100``.
    """

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]
    seq_lens: tuple[int, ...]
    example_ids: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def cu_seqlens(self) -> tuple[int, ...]:
        """Cumulative example boundaries ``(0, l0, l0 + l1, ...)``, flash-attention's ``cu_seqlens``."""
        out = [0]
        for n in self.seq_lens:
            out.append(out[-1] + n)
        return tuple(out)

    def to_row(self) -> dict[str, Any]:
        """The row the ``prepare`` stage writes for it (``pack=true``): ``input_ids``, ``labels``,
        ``position_ids``, ``seq_lens``, in that order."""
        return {"input_ids": self.input_ids, "labels": self.labels, "position_ids": self.position_ids,
                "seq_lens": list(self.seq_lens)}  # fmt: skip


@dataclass(frozen=True)
class PackingReport:
    """How full the rows are: ``efficiency = tokens / (rows * max_len)`` (1.0 = no padding to ``max_len``)."""

    packed: bool
    max_len: int
    examples: int
    rows: int
    tokens: int

    @property
    def efficiency(self) -> float:
        return self.tokens / (self.rows * self.max_len) if self.rows else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "packed": self.packed,
            "max_len": self.max_len,
            "examples": self.examples,
            "rows": self.rows,
            "tokens": self.tokens,
            "efficiency": self.efficiency,
        }


def pack_bfd(lengths: Sequence[int], max_len: int) -> list[list[int]]:
    """Best-fit-decreasing bins of example indices; no bin holds more than ``max_len`` tokens.

    Deterministic: examples are taken longest first (ties: lower index first), each goes to the fitting bin with the
    least room left (ties: the bin opened first), else opens a new bin. Bins come in the order they were opened,
    their examples in the order placed. Each length must be in ``1..max_len``.
    """
    if max_len < 1:
        raise ValueError(f"max_len must be positive, got {max_len}")
    for i, n in enumerate(lengths):
        if not 1 <= n <= max_len:
            raise ValueError(f"example {i} has length {n}, outside 1..{max_len}: fit it first (tokens.length.fit)")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # stable: ties keep index order
    bins: list[list[int]] = []
    rooms: list[int] = []  # sorted distinct remaining capacities (> 0) that some open bin has
    by_room: dict[int, list[int]] = {}  # remaining capacity -> min-heap of bin ids with exactly that room
    for i in order:
        n = lengths[i]
        k = bisect.bisect_left(rooms, n)
        if k == len(rooms):
            b, room = len(bins), max_len - n
            bins.append([i])
        else:
            old = rooms[k]
            heap = by_room[old]
            b = heapq.heappop(heap)
            if not heap:
                del rooms[k], by_room[old]
            bins[b].append(i)
            room = old - n
        if room:
            heap = by_room.get(room)
            if heap is None:
                by_room[room] = [b]
                bisect.insort(rooms, room)
            else:
                heapq.heappush(heap, b)
    return bins


def single_bins(count: int) -> list[list[int]]:
    """The ``--no-pack`` layout: one example per row, in order."""
    return [[i] for i in range(count)]


def build_rows(records: Sequence[TokenRecord], bins: Iterable[Sequence[int]]) -> list[PackedRow]:
    """Concatenate each bin's records into a :class:`PackedRow` (see the module docstring for the layout)."""
    rows = []
    for bin_ in bins:
        input_ids: list[int] = []
        labels: list[int] = []
        position_ids: list[int] = []
        seq_lens = []
        for i in bin_:
            ex = records[i]
            n = len(ex.input_ids)
            if n == 0 or len(ex.labels) != n:
                raise ValueError(f"example {i}: {n} input_ids and {len(ex.labels)} labels")
            input_ids.extend(ex.input_ids)
            labels.append(IGNORE_INDEX)
            labels.extend(ex.labels[1:])
            position_ids.extend(range(n))
            seq_lens.append(n)
        rows.append(PackedRow(input_ids, labels, position_ids, tuple(seq_lens), tuple(bin_)))
    return rows


def pack(
    records: Sequence[TokenRecord], max_len: int, *, packed: bool = True
) -> tuple[list[PackedRow], PackingReport]:
    """Rows for training plus their :class:`PackingReport`: BFD-packed, or one example per row (``packed=False``).

    Without packing, efficiency is measured against padding every row to ``max_len``.
    """
    lengths = [len(e.input_ids) for e in records]
    if not packed and any(n > max_len for n in lengths):
        raise ValueError(f"an example is longer than max_len={max_len}: fit it first (tokens.length.fit)")
    bins = pack_bfd(lengths, max_len) if packed else single_bins(len(records))
    rows = build_rows(records, bins)
    report = PackingReport(packed, max_len, examples=len(records), rows=len(rows), tokens=sum(lengths))
    return rows, report


def efficiency(row_lengths: Iterable[int], max_len: int) -> float:
    """Real tokens over allotted tokens, ``sum(row_lengths) / (len(row_lengths) * max_len)``.

    ``efficiency(map(len, rows), 4096)`` for :class:`PackedRow` s;
    ``efficiency((sum(lengths[i] for i in b) for b in bins), 4096)`` for bins.

    >>> efficiency([4096, 2048], 4096)
    0.75
    """
    row_lengths = list(row_lengths)
    return sum(row_lengths) / (len(row_lengths) * max_len) if row_lengths else 1.0


# --------------------------------------------------------------------------------------------- to the model


def collate_rows(rows: Sequence[PackedRow], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """A batch ``{input_ids, labels, position_ids}`` of shape ``(len(rows), longest)``, with no attention mask.

    Shorter rows are filled with one extra *padding segment* (``pad_id`` tokens, labels ``-100``, positions
    restarting at 0): it is a sequence of its own, so it stays isolated exactly like a packed example and no
    attention mask is needed. Call ``model(input_ids, labels=labels, **packed_attention_kwargs(position_ids))`` —
    or pass the batch as is where ``use_cache`` is off (HF ``Trainer``); see the module docstring.
    """
    import torch

    width = max((len(r) for r in rows), default=0)
    ids, labels, positions = [], [], []
    for r in rows:
        pad = width - len(r)
        ids.append(r.input_ids + [pad_id] * pad)
        labels.append(r.labels + [IGNORE_INDEX] * pad)
        positions.append(r.position_ids + list(range(pad)))
    return {
        "input_ids": torch.tensor(ids, dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
        "position_ids": torch.tensor(positions, dtype=torch.long),
    }


def segment_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """Per token, the index of its sequence within the row: a new sequence starts wherever positions do not step +1.

    >>> import torch
    >>> segment_ids(torch.tensor([[0, 1, 2, 0, 1, 0]])).tolist()
    [[0, 0, 0, 1, 1, 2]]
    """
    import torch

    position_ids = torch.as_tensor(position_ids)
    if position_ids.ndim == 1:
        position_ids = position_ids[None]
    step = torch.diff(position_ids, prepend=position_ids[:, :1] - 1, dim=-1)
    return (step != 1).cumsum(-1)


def block_causal_mask(position_ids: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A 4D additive mask ``(batch, 1, seq, seq)``: 0 where a token may attend (same sequence, not later), else min.

    transformers uses a 4D mask as given, for eager (added to the scores) and sdpa (passed as ``attn_mask``) alike.
    """
    import torch

    dtype = dtype or torch.get_default_dtype()
    seg = segment_ids(position_ids)
    length = seg.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool, device=seg.device).tril()
    allowed = (seg[:, :, None] == seg[:, None, :]) & causal
    mask = torch.zeros(allowed.shape, dtype=dtype, device=seg.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


AttentionMode = Literal["position_ids", "mask", "flash"]


def packed_attention_kwargs(
    position_ids: torch.Tensor, mode: AttentionMode = "position_ids", *, dtype: torch.dtype | None = None
) -> dict[str, Any]:
    """Keyword arguments that make a Hugging Face causal LM treat each packed example as its own sequence.

    Always ``position_ids`` (RoPE restarts per example) and ``use_cache=False`` (with a cache, transformers skips its
    packed-sequence detection; see the module docstring). ``"position_ids"`` (default; sdpa/eager/flex in
    transformers 5.x): nothing else — transformers derives the block-diagonal mask from the restarts.
    ``"mask"``: also an explicit 4D block-diagonal causal mask (:func:`block_causal_mask`), for eager/sdpa,
    independent of that detection. ``"flash"``: ``cu_seq_lens_q/k`` and ``max_length_q/k`` for the flash varlen
    kernels (one flattened row, as ``DataCollatorWithFlattening(return_flash_attn_kwargs=True)`` gives).

        model(input_ids, labels=labels, **packed_attention_kwargs(position_ids))
    """
    import torch

    position_ids = torch.as_tensor(position_ids)
    if position_ids.ndim == 1:
        position_ids = position_ids[None]
    kwargs: dict[str, Any] = {"position_ids": position_ids, "use_cache": False}
    if mode == "position_ids":
        return kwargs
    if mode == "mask":
        kwargs["attention_mask"] = block_causal_mask(position_ids, dtype)
        return kwargs
    if mode == "flash":
        if position_ids.shape[0] != 1:
            raise ValueError("flash varlen keywords describe one flattened row: flatten the batch first")
        seg = segment_ids(position_ids)[0]
        starts = torch.nonzero(seg.diff(prepend=seg[:1] - 1)).flatten()
        end = torch.tensor([seg.shape[0]], device=seg.device)
        cu = torch.cat([starts, end]).to(torch.int32)
        longest = int(cu.diff().max())
        kwargs.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=longest, max_length_k=longest)
        return kwargs
    raise ValueError(f"unknown mode {mode!r}; expected 'position_ids', 'mask' or 'flash'")


__all__ = [
    "PackedRow",
    "PackingReport",
    "block_causal_mask",
    "build_rows",
    "collate_rows",
    "efficiency",
    "pack",
    "pack_bfd",
    "packed_attention_kwargs",
    "segment_ids",
    "single_bins",
]
