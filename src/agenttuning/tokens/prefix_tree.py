"""Shared-prefix layout: examples that begin alike are laid out as a tree — each shared prefix once, then the rest.

Agent trajectories of one environment begin with the same long prompt (db-v1 with SmolLM2's tokenizer: about 850
identical tokens — system prompt, instructions, the in-context example — of about 1,330, of which about 100 are
trained). Packed side by side, every copy of that prefix is computed again. Here the examples of a row are merged
into a *trie* of token segments (a radix tree): a segment holds tokens that every example passing through it has at
the same positions; two trajectories may share 849 tokens, a third 860 with one of them, so segments nest. The row is
the trie laid out depth-first, each segment once. The examples' losses and gradients are unchanged, provided that

* **attention** follows the tree: token ``i`` may attend to token ``j`` iff ``j``'s segment is an ancestor of (or
  is) ``i``'s segment and ``j <= i`` in the layout (:func:`tree_attention_mask`, or per segment in
  :mod:`agenttuning.train.tree_attention`): each token sees exactly the tokens of its own example before it;
* **positions** are each token's position in its own example (a segment's tokens sit at the same positions in every
  example through it), so RoPE sees what it would see in the example alone;
* **the loss** comes from explicit ``(index, target, weight, tag)`` triples, not from shifting labels: the hidden
  state at layout ``index`` predicts ``target``. The last token of a shared segment predicts a different next token
  in each branch (one triple per branch), and a trained target inside a shared segment, common to ``k`` examples, is
  one triple of weight ``k`` (identical ``(index, target, tag)`` merged). As in :mod:`agenttuning.tokens.packing`,
  an example's first label never trains (nothing precedes it).

    >>> from agenttuning.tokens.record import TokenRecord
    >>> exs = [TokenRecord([1, 2, 3, 4], [-100, -100, 3, 4], [2, 4]),
    ...        TokenRecord([1, 2, 5], [-100, -100, 5], [2, 3]),
    ...        TokenRecord([1, 2, 3, 4], [-100, -100, 3, 4], [2, 4])]
    >>> t = tree_layout(exs)
    >>> t.input_ids, t.position_ids, len(t), t.tokens
    ([1, 2, 3, 4, 5], [0, 1, 2, 3, 2], 5, 11)
    >>> [(s.start, s.length, s.parent, s.examples) for s in t.segments]
    [(0, 2, -1, (0, 1, 2)), (2, 2, 0, (0, 2)), (4, 1, 0, (1,))]
    >>> t.targets  # (hidden index, target, weight, tag): token 2 predicts 3 (twice) and 5; token 3 predicts 4
    ((1, 3, 2, 0), (1, 5, 1, 0), (2, 4, 2, 0))
    >>> t.token_index(1), t.trained
    ([0, 1, 4], 5)

:func:`pack_shared` chooses the rows: examples sorted so that those sharing a prefix are neighbours, cut into groups
whose layout fits ``max_len`` *layout* tokens, groups packed best-fit-decreasing (a row holds as many examples as
their layout allows). Examples sharing fewer than ``min_shared`` tokens with every other are laid out side by side
as separate roots, as :mod:`agenttuning.tokens.packing` packs them.

Why a layout has its own type (:class:`TreeLayout`, with :class:`Segment` s) rather than being a TokenRecord or a
:class:`~agenttuning.tokens.packing.PackedRow`: it holds several records merged, so a token may belong to several
examples (its segment's), and the loss comes from explicit targets, not from labels aligned with the ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agenttuning.tokens.packing import pack_bfd
from agenttuning.tokens.record import IGNORE_INDEX, TokenRecord

if TYPE_CHECKING:
    import torch


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token lists (slice comparisons: C speed for lists).

    >>> common_prefix([1, 2, 3, 4], [1, 2, 9]), common_prefix([1], [2]), common_prefix([1, 2], [1, 2, 3])
    (2, 0, 2)
    """
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def shared_order(seqs: Sequence[Sequence[int]]) -> list[int]:
    """Indices in lexicographic order of their tokens (ties by index): examples sharing a prefix become neighbours.

    In that order the longest prefix an example shares with any earlier one is the one it shares with its
    predecessor, and an example that is a prefix of another comes first.

    >>> shared_order([[3, 1], [1, 2, 3], [1, 2], [3, 1]])
    [2, 1, 0, 3]
    """
    return sorted(range(len(seqs)), key=lambda i: (list(seqs[i]), i))


# ------------------------------------------------------------------------------------------------------------------
# The trie and its layout


@dataclass(frozen=True)
class Segment:
    """A node of the trie: ``length`` tokens at layout offset ``start``, at positions ``depth ..`` in its examples."""

    start: int
    length: int
    depth: int  # position of its first token in every example through it (0 for a root)
    parent: int  # index of the parent segment (depth-first order), -1 for a root
    examples: tuple[int, ...]  # the layout's examples (0-based, input order) whose tokens include this segment

    @property
    def end(self) -> int:
        return self.start + self.length


@dataclass(frozen=True)
class TreeLayout:
    """Examples laid out as a trie of shared segments (see the module doc). ``len()`` is the layout's length.

    ``targets`` are ``(index, target, weight, tag)``, sorted: the hidden state at layout position ``index``
    predicts token ``target`` with weight ``weight`` (the number of examples with that trained target there), for
    examples tagged ``tag`` (a source id, say; triples of different tags are never merged). ``example_ids`` and
    ``tags`` are per example, in input order; ``paths[k]`` lists example ``k``'s segments, root first.
    """

    input_ids: list[int]
    position_ids: list[int]
    segments: tuple[Segment, ...]
    targets: tuple[tuple[int, int, int, int], ...]
    paths: tuple[tuple[int, ...], ...]
    seq_lens: tuple[int, ...]
    example_ids: tuple[int, ...] = ()
    tags: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def tokens(self) -> int:
        """The examples' tokens (what packing them side by side would cost); ``len(self)`` is what is computed."""
        return sum(self.seq_lens)

    @property
    def trained(self) -> int:
        """Trained tokens of the examples (weights summed): the loss normaliser's share of this layout."""
        return sum(w for _, _, w, _ in self.targets)

    def token_index(self, k: int) -> list[int]:
        """Layout positions of example ``k``'s tokens, in order (its hidden states are the layout's there)."""
        out: list[int] = []
        for s in self.paths[k]:
            seg = self.segments[s]
            out.extend(range(seg.start, seg.end))
        return out[: self.seq_lens[k]]

    def segment_ids(self) -> list[int]:
        """Per layout token, the index of its segment."""
        return [k for k, s in enumerate(self.segments) for _ in range(s.length)]


def tree_layout(
    examples: Sequence[TokenRecord],
    *,
    tags: Sequence[int] | None = None,
    example_ids: Sequence[int] | None = None,
    min_shared: int = 1,
) -> TreeLayout:
    """Lay ``examples`` out as a trie of shared segments, depth first, children in lexicographic order.

    Prefixes shorter than ``min_shared`` tokens are not shared (those examples become separate roots). Identical
    examples share everything (their targets merge, weight 2); an example that is a prefix of another ends inside
    the other's path. Each example must be non-empty with as many labels as ids.
    """
    seqs = [list(e.input_ids) for e in examples]
    for i, (e, s) in enumerate(zip(examples, seqs, strict=True)):
        if not s or len(e.labels) != len(s):
            raise ValueError(f"example {i}: {len(s)} input_ids and {len(e.labels)} labels")
    tags = tuple(tags) if tags is not None else (0,) * len(seqs)
    # nodes as lists: [depth_start, depth_end, representative example, parent, children]
    nodes: list[list] = []
    roots: list[int] = []
    terminal = [0] * len(seqs)
    stack: list[int] = []  # the previous example's path
    prev: list[int] | None = None
    for i in shared_order(seqs):
        s = seqs[i]
        shared = common_prefix(prev, s) if prev is not None else 0
        if shared < min_shared:
            shared = 0
        while stack and nodes[stack[-1]][0] >= shared:
            stack.pop()
        if stack and nodes[stack[-1]][1] > shared:  # split: the shared part becomes the parent of the rest
            top = stack[-1]
            start, _, rep, parent, _ = nodes[top]
            mid = len(nodes)
            nodes.append([start, shared, rep, parent, [top]])
            siblings = roots if parent < 0 else nodes[parent][4]
            siblings[siblings.index(top)] = mid
            nodes[top][0], nodes[top][3] = shared, mid
            stack[-1] = mid
        if shared == len(s):  # identical to the previous example: same path
            terminal[i] = stack[-1]
        else:
            parent = stack[-1] if stack else -1
            leaf = len(nodes)
            nodes.append([shared, len(s), i, parent, []])
            (roots if parent < 0 else nodes[parent][4]).append(leaf)
            stack.append(leaf)
            terminal[i] = leaf
        prev = s

    # depth-first layout
    order: list[int] = []
    todo = list(reversed(roots))
    while todo:
        n = todo.pop()
        order.append(n)
        todo.extend(reversed(nodes[n][4]))
    index = {n: k for k, n in enumerate(order)}
    members: list[list[int]] = [[] for _ in order]
    paths: list[tuple[int, ...]] = []
    for i, leaf in enumerate(terminal):
        path = []
        n = leaf
        while n >= 0:
            path.append(index[n])
            members[index[n]].append(i)
            n = nodes[n][3]
        paths.append(tuple(reversed(path)))
    input_ids: list[int] = []
    position_ids: list[int] = []
    segments = []
    for k, n in enumerate(order):
        d0, d1, rep, parent, _ = nodes[n]
        segments.append(Segment(len(input_ids), d1 - d0, d0, index[parent] if parent >= 0 else -1,
                                tuple(sorted(members[k]))))  # fmt: skip
        input_ids.extend(seqs[rep][d0:d1])
        position_ids.extend(range(d0, d1))

    # targets: hidden state of token t - 1 predicts label t (t >= 1), merged over examples
    weights: dict[tuple[int, int, int], int] = {}
    for i, e in enumerate(examples):
        labels = e.labels
        trained = [t for t in range(1, len(labels)) if labels[t] != IGNORE_INDEX]
        if not trained:
            continue
        where: list[int] = []
        for k in paths[i]:
            seg = segments[k]
            where.extend(range(seg.start, seg.end))
        for t in trained:
            key = (where[t - 1], int(labels[t]), tags[i])
            weights[key] = weights.get(key, 0) + 1
    targets = tuple((idx, tgt, w, tag) for (idx, tgt, tag), w in sorted(weights.items()))
    ids = tuple(example_ids) if example_ids is not None else tuple(range(len(seqs)))
    return TreeLayout(input_ids, position_ids, tuple(segments), targets, tuple(paths),
                      tuple(len(s) for s in seqs), ids, tags)  # fmt: skip


def layout_length(seqs: Sequence[Sequence[int]], *, min_shared: int = 1) -> int:
    """Tokens of the trie layout of ``seqs`` (without building it): total length minus the prefixes shared.

    >>> layout_length([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3, 4]]), layout_length([[1, 2], [1, 3]], min_shared=2)
    (5, 4)
    """
    order = shared_order(seqs)
    total, prev = 0, None
    for i in order:
        shared = common_prefix(prev, seqs[i]) if prev is not None else 0
        total += len(seqs[i]) - (shared if shared >= min_shared else 0)
        prev = seqs[i]
    return total


# ------------------------------------------------------------------------------------------------------------------
# Rows


def pack_shared(seqs: Sequence[Sequence[int]], max_len: int, *, min_shared: int = 1) -> list[list[int]]:
    """Bins of example indices whose trie layouts hold at most ``max_len`` tokens, sharing as much as they can.

    Examples in lexicographic order (:func:`shared_order`) are cut into consecutive groups, each grown while its
    layout fits ``max_len`` (a new group starts where the prefix shared with the predecessor is under
    ``min_shared``); the groups are then packed best-fit decreasing by layout length
    (:func:`agenttuning.tokens.packing.pack_bfd`). Deterministic; each bin lists its examples in lexicographic order.

    >>> pack_shared([[1, 2, 3, 4], [9, 9], [1, 2, 5], [1, 2, 3, 6]], max_len=6)
    [[0, 3, 2], [1]]
    """
    order = shared_order(seqs)
    groups: list[list[int]] = []
    sizes: list[int] = []
    prev = None
    for i in order:
        n = len(seqs[i])
        if not 1 <= n <= max_len:
            raise ValueError(f"example {i} has length {n}, outside 1..{max_len}: fit it first (tokens.length.fit)")
        shared = common_prefix(prev, seqs[i]) if prev is not None else 0
        extra = n - shared
        if groups and shared >= min_shared and sizes[-1] + extra <= max_len:
            groups[-1].append(i)
            sizes[-1] += extra
        else:
            groups.append([i])
            sizes.append(n)
        prev = seqs[i]
    return [[i for g in b for i in groups[g]] for b in pack_bfd(sizes, max_len)]


# ------------------------------------------------------------------------------------------------------------------
# To the model: the attention mask


def ancestor_matrix(parents: Sequence[int]) -> list[list[bool]]:
    """``m[i][j]``: segment ``j`` is an ancestor of segment ``i`` or ``i`` itself (parents before children).

    >>> ancestor_matrix([-1, 0, 1, 0])[2], ancestor_matrix([-1, 0, 1, 0])[3]
    ([True, True, True, False], [True, False, False, True])
    """
    m = [[False] * len(parents) for _ in parents]
    for i, p in enumerate(parents):
        if p >= i:
            raise ValueError(f"segment {i} has parent {p}: parents must come first (depth-first order)")
        if p >= 0:
            m[i][:] = m[p]
        m[i][i] = True
    return m


def tree_attention_mask(
    layouts: Sequence[TreeLayout], width: int | None = None, *, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """The 4D mask ``(rows, 1, width, width)`` of a batch of layouts: token ``i`` attends to token ``j`` iff
    ``j``'s segment is an ancestor-or-self of ``i``'s and ``j <= i``; the padding after a row is one more sequence
    of its own (causal within itself). ``dtype=torch.bool`` (default; True = attend: what sdpa takes) or a float
    dtype for an additive mask (0 / the dtype's minimum: what eager attention adds to its scores).

    >>> from agenttuning.tokens.record import TokenRecord
    >>> t = tree_layout([TokenRecord([1, 2, 3], [1, 2, 3], [3]), TokenRecord([1, 2, 4], [1, 2, 4], [3])])
    >>> tree_attention_mask([t], 5)[0, 0].int().tolist()
    [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 0, 1, 0], [0, 0, 0, 0, 1]]
    """
    import torch

    width = width if width is not None else max((len(t) for t in layouts), default=0)
    rows = []
    for t in layouts:
        if len(t) > width:
            raise ValueError(f"a layout of {len(t)} tokens does not fit width {width}")
        parents = [s.parent for s in t.segments]
        seg = t.segment_ids()
        if len(t) < width:
            parents.append(-1)
            seg += [len(parents) - 1] * (width - len(t))
        anc = torch.tensor(ancestor_matrix(parents), dtype=torch.bool)
        ids = torch.tensor(seg, dtype=torch.long)
        rows.append(anc[ids[:, None], ids[None, :]])
    allowed = torch.stack(rows) & torch.ones(width, width, dtype=torch.bool).tril()
    if dtype is None or dtype == torch.bool:
        return allowed[:, None]
    mask = torch.zeros(allowed.shape, dtype=dtype)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


__all__ = [
    "Segment",
    "TreeLayout",
    "ancestor_matrix",
    "common_prefix",
    "layout_length",
    "pack_shared",
    "shared_order",
    "tree_attention_mask",
    "tree_layout",
]
