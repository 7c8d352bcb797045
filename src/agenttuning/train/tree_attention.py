"""Attention over a shared-prefix layout, segment by segment, instead of through a dense ``(width, width)`` mask.

A micro-batch of :class:`~agenttuning.tokens.prefix_tree.TreeLayout` rows can be run through any eager/sdpa model
with the 4D mask of :func:`~agenttuning.tokens.prefix_tree.tree_attention_mask`; but with an arbitrary mask sdpa's
CPU and math kernels compute every one of the ``width²`` scores and only then mask them (only ``is_causal`` skips
blocks). A layout's attention is much sparser than that: a segment's queries see only the segments on its path
from the root. So here each segment is one ``scaled_dot_product_attention`` call over its own queries and the keys
of its path — ancestors fully, itself causally (a root: plain ``is_causal``) — which costs
``sum(len(segment) * len(path))`` scores instead of ``width²`` (for 6 db-v1 trajectories sharing an 850-token
prefix, in a 4,096-token row: about a quarter).

It plugs into Hugging Face models through ``transformers``' attention registry: :func:`enable` switches a model to
the implementation :data:`NAME`, which behaves exactly as ``"sdpa"`` (same function, same mask builder) unless the
forward receives a ``prefix_tree`` keyword (a :class:`TreeAttention`), passed down by the model to every attention
call. Models whose attention modules call the registry with ``sliding_window`` or ``softcap`` set are refused (the
segment kernel does not implement them): the caller then uses the 4D mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from agenttuning.tokens.prefix_tree import TreeLayout

NAME = "agenttuning_tree_sdpa"

_Segment = tuple[int, int, "torch.Tensor | slice | None", "torch.Tensor | None"]


class TreeAttention:
    """What the segment kernel needs for one micro-batch, built once and shared by every layer.

    Per row, per segment: ``(start, end, keys, mask)``: ``keys`` selects the layout positions the segment attends
    to (its path's tokens, its own last: a ``slice`` where they are contiguous, else an index tensor; None for a
    root, which attends causally to itself alone), ``mask`` the ``(length, len(keys))`` bool mask (ancestors all
    visible, itself causal; None for a root). ``lengths[b]`` is row ``b``'s layout length (the rest is padding).
    """

    def __init__(self, rows: list[list[_Segment]], lengths: list[int], width: int):
        self.rows, self.lengths, self.width = rows, lengths, width

    @classmethod
    def from_layouts(cls, layouts: Sequence[TreeLayout], width: int | None = None) -> TreeAttention:
        width = width if width is not None else max(len(t) for t in layouts)
        rows = []
        for t in layouts:
            segs: list[_Segment] = []
            chains: list[list[tuple[int, int]]] = []  # per segment, its path's (start, end) spans, root first
            for s in t.segments:
                chain = ([*chains[s.parent]] if s.parent >= 0 else []) + [(s.start, s.end)]
                chains.append(chain)
                if s.parent < 0:
                    segs.append((s.start, s.end, None, None))
                    continue
                context = sum(b - a for a, b in chain[:-1])
                contiguous = all(chain[k][1] == chain[k + 1][0] for k in range(len(chain) - 1))
                if contiguous:
                    keys: torch.Tensor | slice = slice(chain[0][0], s.end)
                else:
                    keys = torch.cat([torch.arange(a, b) for a, b in chain])
                mask = torch.ones(s.length, context + s.length, dtype=torch.bool)
                mask[:, context:] = torch.ones(s.length, s.length, dtype=torch.bool).tril()
                segs.append((s.start, s.end, keys, mask))
            rows.append(segs)
        return cls(rows, [len(t) for t in layouts], width)

    def to(self, device: Any) -> TreeAttention:
        def move(x: Any) -> Any:
            return x.to(device) if isinstance(x, torch.Tensor) else x

        rows = [[(a, b, move(k), move(m)) for a, b, k, m in row] for row in self.rows]
        return TreeAttention(rows, self.lengths, self.width)

    @property
    def scores(self) -> int:
        """Query-key pairs computed per head and layer (a dense mask computes ``rows * width²``)."""
        total = 0
        for row in self.rows:
            for a, b, keys, _ in row:
                n = b - a
                if keys is None:
                    total += n * (n + 1) // 2
                else:
                    total += n * ((keys.stop - keys.start) if isinstance(keys, slice) else keys.numel())
        return total


def tree_sdpa(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, tree: TreeAttention, *, scaling: float | None,
    dropout: float = 0.0,
) -> torch.Tensor:  # fmt: skip
    """``(batch, heads, width, dim)`` queries, ``(batch, kv_heads, width, dim)`` keys/values -> ``(batch, width,
    heads, dim)``: each segment attends to its path (see :class:`TreeAttention`); padding positions get zeros."""
    gqa = query.shape[1] != key.shape[1]
    out_rows = []
    for b, segs in enumerate(tree.rows):
        parts = []
        q_row, k_row, v_row = query[b : b + 1], key[b : b + 1], value[b : b + 1]
        for start, end, keys, mask in segs:
            q = q_row[:, :, start:end]
            if keys is None:
                k, v = k_row[:, :, start:end], v_row[:, :, start:end]
                parts.append(F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True,
                                                            scale=scaling, enable_gqa=gqa))  # fmt: skip
                continue
            if isinstance(keys, slice):
                k, v = k_row[:, :, keys], v_row[:, :, keys]
            else:
                k, v = k_row.index_select(2, keys), v_row.index_select(2, keys)
            parts.append(F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scaling,
                                                        enable_gqa=gqa))  # fmt: skip
        pad = query.shape[2] - tree.lengths[b]
        if pad:
            parts.append(query.new_zeros(1, query.shape[1], pad, query.shape[3]))
        out_rows.append(torch.cat(parts, dim=2))
    return torch.cat(out_rows).transpose(1, 2).contiguous()


def _attention(module: Any, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """The registered implementation: the segment kernel when given ``prefix_tree``, else transformers' sdpa."""
    tree = kwargs.pop("prefix_tree", None)
    if tree is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)  # fmt: skip
    for unsupported in ("sliding_window", "softcap", "s_aux"):
        if kwargs.get(unsupported) is not None:
            raise NotImplementedError(f"prefix-tree attention: {unsupported}={kwargs[unsupported]!r} is not "
                                      "implemented; use the 4D mask")  # fmt: skip
    return tree_sdpa(query, key, value, tree, scaling=scaling, dropout=dropout), None


def register_tree_attention() -> None:
    """Register :data:`NAME` with transformers (idempotent): the attention function and sdpa's mask builder."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, _attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)


def enable(model: Any) -> bool:
    """Switch a Hugging Face model (or the one inside a PEFT wrapper) from ``"sdpa"`` to :data:`NAME`.

    Returns whether the model now uses it: only models on sdpa are switched (eager keeps its own math; flash and
    others are left alone). Nothing changes for calls without ``prefix_tree``, nor in what ``save_pretrained``
    writes.
    """
    from agenttuning.train.loss import base_model_of

    base = base_model_of(model)
    config = getattr(base, "config", None)
    current = getattr(config, "_attn_implementation", None)
    if current == NAME:
        return True
    if current != "sdpa" or not callable(getattr(base, "set_attn_implementation", None)):
        return False
    register_tree_attention()
    base.set_attn_implementation(NAME)
    return getattr(base.config, "_attn_implementation", None) == NAME


__all__ = ["NAME", "TreeAttention", "enable", "register_tree_attention", "tree_sdpa"]
