"""Shared-prefix layouts (tokens/prefix_tree.py): the trie, its layout, the attention it implies, the loss targets."""

from __future__ import annotations

import random
import pytest
import torch

from agenttuning.tokens.packing import block_causal_mask, build_rows
from agenttuning.tokens.prefix_tree import (
    ancestor_matrix,
    common_prefix,
    layout_length,
    pack_shared,
    shared_order,
    tree_attention_mask,
    tree_layout,
)
from agenttuning.tokens.record import IGNORE_INDEX, TokenRecord


def ex(ids, trained_from: int = 0):
    """An example whose tokens from ``trained_from`` on are trained (labels = ids there, -100 before)."""
    return TokenRecord(list(ids), [IGNORE_INDEX] * trained_from + list(ids[trained_from:]), [len(ids)])


def expected_targets(examples, tags=None):
    """The loss terms of the examples run separately: ((token t - 1 of example k, label t), tag) with multiplicity."""
    out = []
    for k, e in enumerate(examples):
        for t in range(1, len(e.labels)):
            if e.labels[t] != IGNORE_INDEX:
                out.append((k, t - 1, e.labels[t], (tags or [0] * len(examples))[k]))
    return out


def check_layout(examples, t):
    """Everything a layout promises, checked against the examples one by one."""
    # each example's tokens, and positions, are found along its path
    for k, e in enumerate(examples):
        where = t.token_index(k)
        assert [t.input_ids[i] for i in where] == list(e.input_ids)
        assert [t.position_ids[i] for i in where] == list(range(len(e.input_ids)))
        assert where == sorted(where)
    # segments tile the layout in depth-first order, parents first, children starting where the parent's tokens end
    assert [s.start for s in t.segments] == sorted(s.start for s in t.segments)
    assert sum(s.length for s in t.segments) == len(t) and all(s.length > 0 for s in t.segments)
    for s in t.segments:
        if s.parent >= 0:
            p = t.segments[s.parent]
            assert p.start < s.start and s.depth == p.depth + p.length and set(s.examples) <= set(p.examples)
        else:
            assert s.depth == 0
    # the targets are the separate examples' loss terms, merged: weights add up, nothing is lost or invented
    expanded: dict[tuple[int, int, int], int] = {}
    for k, pos, label, tag in expected_targets(examples, list(t.tags)):
        key = (t.token_index(k)[pos], label, tag)
        expanded[key] = expanded.get(key, 0) + 1
    assert {(i, y, g): w for i, y, w, g in t.targets} == expanded
    assert t.trained == len(expected_targets(examples))
    assert t.tokens == sum(len(e.input_ids) for e in examples)


def allowed_by_definition(examples, t, width):
    """Token i may attend j iff some example holds both, j at or before i (brute force over the examples)."""
    allowed = torch.zeros(width, width, dtype=torch.bool)
    for k in range(len(examples)):
        where = t.token_index(k)
        for a, i in enumerate(where):
            for j in where[: a + 1]:
                allowed[i, j] = True
    for i in range(len(t), width):  # padding: its own causal sequence
        allowed[i, len(t) : i + 1] = True
    return allowed


# ------------------------------------------------------------------------------------------------------------------
# Hand-made cases


def test_nested_shares():
    """A and B share 6 tokens; C shares 8 with A (nested: the 6 are shared by all three, 2 more by A and C)."""
    shared = [1, 10, 11, 12, 13, 14]
    a = ex(shared + [20, 21, 30, 31], trained_from=6)
    b = ex(shared + [40, 41, 42], trained_from=5)
    c = ex(shared + [20, 21, 50], trained_from=7)
    t = tree_layout([a, b, c])
    check_layout([a, b, c], t)
    assert len(t) == 6 + 2 + 2 + 1 + 3 and t.tokens == 10 + 9 + 9
    assert [(s.length, s.parent, s.examples) for s in t.segments] == [
        (6, -1, (0, 1, 2)), (2, 0, (0, 2)), (2, 1, (0,)), (1, 1, (2,)), (3, 0, (1,)),
    ]  # fmt: skip
    assert t.input_ids == shared + [20, 21, 30, 31, 50, 40, 41, 42]
    assert t.position_ids == list(range(6)) + [6, 7, 8, 9, 8, 6, 7, 8]
    # the last shared token (14, index 5) predicts a different token in each branch: one target per branch (C does
    # not train its token 6, so 20 is A's alone)
    from_last = sorted((y, w) for i, y, w, _ in t.targets if i == 5)
    assert from_last == [(20, 1), (40, 1)]
    # token 20 (index 6, shared by A and C) predicts 21 for both: one target of weight 2
    assert [(y, w) for i, y, w, _ in t.targets if i == 6] == [(21, 2)]
    # B trains from its token 5 on: label 14 at position 5, predicted by token 13 (index 4) — B's alone
    assert [(y, w) for i, y, w, _ in t.targets if i == 4] == [(14, 1)]


def test_identical_examples_share_everything():
    e = ex([1, 5, 6, 7, 8], trained_from=2)
    t = tree_layout([e, e, e])
    check_layout([e, e, e], t)
    assert t.input_ids == e.input_ids and len(t.segments) == 1 and t.segments[0].examples == (0, 1, 2)
    assert [w for _, _, w, _ in t.targets] == [3, 3, 3] and t.trained == 9
    assert t.token_index(0) == t.token_index(2) == [0, 1, 2, 3, 4]


def test_an_example_that_is_a_prefix_of_another():
    long = ex([1, 2, 3, 4, 5, 6], trained_from=1)
    short = ex([1, 2, 3, 4], trained_from=2)
    t = tree_layout([long, short])
    check_layout([long, short], t)
    assert t.input_ids == [1, 2, 3, 4, 5, 6] and len(t) == 6
    assert [(s.start, s.length, s.parent, s.examples) for s in t.segments] == [(0, 4, -1, (0, 1)), (4, 2, 0, (0,))]
    assert t.paths == ((0, 1), (0,))
    # the short one's last token (index 3) predicts nothing for it; the long one's target there stays weight 1
    assert [(i, y, w) for i, y, w, _ in t.targets] == [(0, 2, 1), (1, 3, 2), (2, 4, 2), (3, 5, 1), (4, 6, 1)]


def test_no_sharing_is_plain_packing():
    exs = [ex([7, 8, 9], 1), ex([1, 2, 3, 4], 2), ex([4, 4], 0)]
    t = tree_layout(exs)
    check_layout(exs, t)
    assert all(s.parent == -1 for s in t.segments) and len(t) == t.tokens == 9
    order = shared_order([e.input_ids for e in exs])
    row = build_rows(exs, [order])[0]
    assert t.input_ids == row.input_ids and t.position_ids == row.position_ids
    # the mask is the block-diagonal causal mask of plain packing, padding included
    width = 11
    positions = torch.tensor([row.position_ids + [0, 1]])
    assert torch.equal(tree_attention_mask([t], width)[0, 0], block_causal_mask(positions, torch.float32)[0, 0] == 0)


def test_min_shared_keeps_short_prefixes_apart():
    exs = [ex([1, 2, 3, 9, 9]), ex([1, 2, 3, 8, 8]), ex([1, 2, 3, 9, 7])]
    t = tree_layout(exs, min_shared=4)  # the 3 common tokens are not enough; the 4 of the first and third are
    check_layout(exs, t)
    assert [(s.length, s.parent) for s in t.segments] == [(5, -1), (4, -1), (1, 1), (1, 1)]
    assert len(t) == layout_length([e.input_ids for e in exs], min_shared=4) == 11
    assert len(tree_layout(exs)) == layout_length([e.input_ids for e in exs]) == 3 + 2 + 1 + 1 + 1


def test_tags_are_never_merged():
    e = ex([1, 2, 3, 4], 1)
    t = tree_layout([e, e, e], tags=[0, 1, 0])
    check_layout([e, e, e], t)
    assert sorted({(tag, w) for _, _, w, tag in t.targets}) == [(0, 2), (1, 1)]


def test_the_mask_follows_the_tree():
    a, b, c = ex([1, 2, 3, 4]), ex([1, 2, 5]), ex([1, 2, 3, 6])
    t = tree_layout([a, b, c])  # layout: 1 2 | 3 | 4 | 6 | 5
    m = tree_attention_mask([t], 7)[0, 0]
    assert m.shape == (7, 7) and m.dtype == torch.bool
    assert m[4].tolist() == [True, True, True, False, True, False, False]  # 6 sees 1 2 3 and itself, not its sibling 4
    assert m[5].tolist() == [True, True, False, False, False, True, False]  # 5 sees 1 2, not the 3-branch
    assert m[6].tolist() == [False] * 6 + [True]  # padding: itself only
    assert torch.equal(m, allowed_by_definition([a, b, c], t, 7))
    additive = tree_attention_mask([t], 7, dtype=torch.float32)[0, 0]
    assert additive.dtype == torch.float32 and torch.equal(additive == 0, m)
    assert float(additive.min()) == torch.finfo(torch.float32).min
    with pytest.raises(ValueError, match="does not fit"):
        tree_attention_mask([t], 4)


def test_ancestors_need_parents_first():
    assert ancestor_matrix([-1, 0, 0, 2]) == [
        [True, False, False, False], [True, True, False, False], [True, False, True, False], [True, False, True, True],
    ]  # fmt: skip
    with pytest.raises(ValueError, match="parents must come first"):
        ancestor_matrix([1, -1])


def test_bad_examples_are_refused():
    with pytest.raises(ValueError, match="example 1"):
        tree_layout([ex([1, 2]), TokenRecord([1, 2, 3], [1, 2], [3])])


# ------------------------------------------------------------------------------------------------------------------
# Random tries: many shared prefixes from a small alphabet


def random_examples(rng: random.Random, n: int):
    stems = [[rng.randrange(1, 4) for _ in range(rng.randrange(0, 8))] for _ in range(3)]
    exs = []
    for _ in range(n):
        ids = stems[rng.randrange(3)] + [rng.randrange(1, 4) for _ in range(rng.randrange(0, 6))]
        ids = ids or [1]
        labels = [y if rng.random() < 0.6 else IGNORE_INDEX for y in ids]
        exs.append(TokenRecord(ids, labels, [len(ids)]))
    return exs


@pytest.mark.parametrize("seed", range(25))
def test_random_layouts_keep_every_example_and_loss_term(seed):
    rng = random.Random(seed)
    exs = random_examples(rng, rng.randrange(1, 9))
    tags = [rng.randrange(2) for _ in exs]
    for min_shared in (1, 3):
        t = tree_layout(exs, tags=tags, min_shared=min_shared)
        check_layout(exs, t)
        assert len(t) == layout_length([e.input_ids for e in exs], min_shared=min_shared)
        width = len(t) + rng.randrange(3)
        assert torch.equal(tree_attention_mask([t], width)[0, 0], allowed_by_definition(exs, t, width))


def test_common_prefix_agrees_with_a_loop():
    rng = random.Random(0)
    for _ in range(300):
        a = [rng.randrange(3) for _ in range(rng.randrange(40))]
        b = a[: rng.randrange(len(a) + 1)] + [rng.randrange(3) for _ in range(rng.randrange(40))]
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        assert common_prefix(a, b) == n


# ------------------------------------------------------------------------------------------------------------------
# Rows


def test_pack_shared_fits_and_keeps_sharers_together():
    rng = random.Random(1)
    prompts = [[1] + [rng.randrange(5, 100) for _ in range(40)] for _ in range(3)]  # three "environments"
    seqs = [prompts[i % 3] + [rng.randrange(5, 100) for _ in range(rng.randrange(5, 30))] for i in range(30)]
    seqs += [[rng.randrange(5, 100) for _ in range(rng.randrange(5, 60))] for _ in range(6)]  # unrelated chats
    bins = pack_shared(seqs, 128, min_shared=16)
    assert sorted(i for b in bins for i in b) == list(range(len(seqs)))
    assert all(layout_length([seqs[i] for i in b], min_shared=16) <= 128 for b in bins)
    assert bins == pack_shared(seqs, 128, min_shared=16)  # deterministic
    for b in bins:  # a row's trajectories come from as few environments as the layout allows: mostly one
        envs = {i % 3 for i in b if i < 30}
        assert len(envs) <= 2
    total = sum(len(s) for s in seqs)
    layout = sum(layout_length([seqs[i] for i in b], min_shared=16) for b in bins)
    assert layout < 0.6 * total  # 40 of ~57 tokens shared by ten trajectories each
    with pytest.raises(ValueError, match="outside 1..128"):
        pack_shared([[1] * 129], 128)
