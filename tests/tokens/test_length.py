"""Length handling (tokens/length.py): examples fit the context, cut only right after an assistant turn."""

from __future__ import annotations

import random

import pytest

from agenttuning.tokens.length import (
    DEFAULT_MAX_LEN,
    IGNORE_INDEX,
    LengthReport,
    assistant_turns,
    compare_policies,
    fit,
    fit_all,
    trained_tokens,
)
from agenttuning.tokens.record import TokenRecord

def make(turns: list[tuple[int, bool]], prefix: int = 0) -> TokenRecord:
    """An example from ``(token count, is_assistant)`` turns, after ``prefix`` untrained tokens (e.g. BOS/system).

    Token ids count up from 1 so that any reordering or mid-turn cut shows; assistant tokens are labelled.
    """
    ids, labels, ends = [], [], []
    ids += list(range(1, prefix + 1))
    labels += [IGNORE_INDEX] * prefix
    for n, assistant in turns:
        new = list(range(len(ids) + 1, len(ids) + n + 1))
        ids += new
        labels += new if assistant else [IGNORE_INDEX] * n
        ends.append(len(ids))
    return TokenRecord(ids, labels, ends)


def random_example(rng: random.Random) -> TokenRecord:
    turns = []
    for k in range(rng.randint(1, 9)):
        assistant = k % 2 == 1 if rng.random() < 0.9 else rng.random() < 0.5  # mostly alternating, sometimes not
        turns.append((rng.randint(1, 40), assistant))
    return make(turns, prefix=rng.randint(0, 5))


def test_default_context_is_the_papers():
    assert DEFAULT_MAX_LEN == 4096


def test_an_example_that_fits_is_unchanged():
    ex = make([(5, False), (5, True)])
    for policy in ("truncate_turns", "drop"):
        out, report = fit(ex, 10, policy=policy)
        assert out is ex
        assert (report.kept, report.cut, report.dropped) == (1, 0, 0)
        assert report.tokens_lost == report.trained_lost == 0
        assert report.tokens_kept == 10 and report.trained_kept == 5


def test_cut_keeps_the_longest_prefix_ending_after_an_assistant_turn():
    ex = make([(3, False), (4, True), (3, False), (4, True), (3, False), (4, True)], prefix=2)
    # turn ends: 5, 9, 12, 16, 19, 23; assistant ones: 9, 16, 23
    assert ex.turn_ends == [5, 9, 12, 16, 19, 23]
    for max_len, end in [(22, 16), (18, 16), (16, 16), (15, 9), (9, 9)]:
        out, report = fit(ex, max_len)
        assert out.input_ids == ex.input_ids[:end]
        assert out.labels == ex.labels[:end]
        assert out.turn_ends == [e for e in ex.turn_ends if e <= end]
        assert type(out) is TokenRecord
        assert (report.cut, report.tokens_kept, report.tokens_lost) == (1, end, 23 - end)
    # the first assistant turn does not fit: nothing trainable survives a turn-boundary cut
    out, report = fit(ex, 8)
    assert out is None and report.dropped == 1 and report.trained_lost == 12


def test_drop_policy_drops_every_example_that_does_not_fit():
    exs = [make([(3, False), (3, True)]), make([(3, False), (3, True), (3, False), (3, True)])]
    kept, report = fit_all(exs, 8, "drop")
    assert kept == [exs[0]]
    assert (report.kept, report.cut, report.dropped) == (1, 0, 1)
    assert (report.tokens_total, report.tokens_kept, report.tokens_lost) == (18, 6, 12)
    assert (report.trained_total, report.trained_kept, report.trained_lost) == (9, 3, 6)
    kept, report = fit_all(exs, 8, "truncate_turns")
    assert kept == [exs[0], make([(3, False), (3, True)])]
    assert (report.kept, report.cut, report.dropped) == (1, 1, 0)


@pytest.mark.parametrize("policy", ["truncate_turns", "drop"])
def test_random_examples_are_never_cut_mid_turn_and_accounting_is_exact(policy):
    rng = random.Random(1234)
    exs = [random_example(rng) for _ in range(400)]
    for max_len in (1, 10, 25, 60, 120, 400):
        kept, report = fit_all(exs, max_len, policy)
        outs = [fit(ex, max_len, policy=policy)[0] for ex in exs]
        assert [o for o in outs if o is not None] == kept
        assert report.examples == len(exs)
        assert report.tokens_total == sum(len(e.input_ids) for e in exs)
        assert report.trained_total == sum(trained_tokens(e.labels) for e in exs)
        assert report.tokens_kept == sum(len(k.input_ids) for k in kept)
        assert report.trained_kept == sum(trained_tokens(k.labels) for k in kept)
        assert report.tokens_lost == report.tokens_total - report.tokens_kept
        assert report.trained_lost == report.trained_total - report.trained_kept
        assert report.kept == sum(1 for e, o in zip(exs, outs) if o is e)
        assert report.dropped == outs.count(None)
        for ex, out in zip(exs, outs):
            if len(ex.input_ids) <= max_len:
                assert out is ex
                continue
            if policy == "drop":
                assert out is None
                continue
            flags = assistant_turns(ex)
            fitting_ends = [e for e, a in zip(ex.turn_ends, flags) if a and 0 < e <= max_len]
            if out is None:
                assert not fitting_ends
                continue
            end = len(out.input_ids)
            assert end <= max_len
            assert end == max(fitting_ends)  # the longest prefix that ends right after an assistant turn
            k = ex.turn_ends.index(end)
            assert flags[k]  # ends on a trained turn...
            assert out.turn_ends == [e for e in ex.turn_ends if e <= end]  # whole turns only
            assert out.input_ids == ex.input_ids[:end] and out.labels == ex.labels[:end]  # ...and is a prefix


def test_explicit_assistant_flags_override_the_label_heuristic():
    # a caller that trains only the final turn still cuts at the *assistant* boundaries it declares
    ex = make([(2, False), (3, True), (2, False), (3, True)])
    flags = [False, True, False, True]
    unlabelled = TokenRecord(ex.input_ids, [IGNORE_INDEX] * 5 + ex.labels[5:], ex.turn_ends)
    assert fit(unlabelled, 9)[0] is None  # by labels, turn 1 is not an assistant turn: nothing to keep
    out, report = fit(unlabelled, 9, is_assistant=flags)
    assert out.input_ids == ex.input_ids[:5] and report.trained_kept == 0 and report.trained_lost == 3
    with pytest.raises(ValueError, match="flags"):
        fit(ex, 9, is_assistant=[True])
    kept, _ = fit_all([unlabelled, ex], 9, "truncate_turns", is_assistant=[flags, None])
    assert [len(k.input_ids) for k in kept] == [5, 5]


def test_reports_add_and_sum():
    rng = random.Random(7)
    exs = [random_example(rng) for _ in range(60)]
    whole = fit_all(exs, 50, "truncate_turns")[1]
    parts = [fit_all(exs[i : i + 7], 50, "truncate_turns")[1] for i in range(0, 60, 7)]
    assert sum(parts) == whole
    assert parts[0] + parts[1] == fit_all(exs[:14], 50, "truncate_turns")[1]
    with pytest.raises(ValueError, match="different settings"):
        parts[0] + fit_all(exs[:7], 50, "drop")[1]
    with pytest.raises(ValueError, match="different settings"):
        parts[0] + fit_all(exs[:7], 51, "truncate_turns")[1]
    d = whole.to_dict()
    assert d["examples"] == 60 and d["tokens_lost"] == whole.tokens_lost and d["policy"] == "truncate_turns"
    assert LengthReport("drop", 10).trained_kept_fraction == 1.0


def test_compare_policies_shows_what_a_short_context_loses():
    # AgentInstruct-like trajectories of 1.5k-3.5k tokens: a 1,024-token context keeps under half their trained tokens
    rng = random.Random(3)
    exs = []
    for _ in range(30):
        turns = [(rng.randint(150, 400), False)]
        while sum(n for n, _ in turns) < rng.randint(1500, 3500):
            turns += [(rng.randint(40, 120), True), (rng.randint(60, 300), False)]
        exs.append(make(turns[:-1], prefix=1))
    reports = compare_policies(exs)
    assert set(reports) == {(p, n) for p in ("truncate_turns", "drop") for n in (1024, 2048, 4096)}
    assert reports[("drop", 1024)].trained_kept == 0
    assert reports[("truncate_turns", 1024)].trained_kept_fraction < 0.5
    assert reports[("truncate_turns", 4096)].trained_kept_fraction == 1.0
    for n in (1024, 2048):
        assert reports[("truncate_turns", n)].trained_kept >= reports[("drop", n)].trained_kept


def test_a_cut_record_keeps_the_name_of_its_example():
    ex = make([(2, False), (2, True), (2, False), (2, True)])
    named = TokenRecord(ex.input_ids, ex.labels, ex.turn_ends, id="db-train-7", source="agent", family="db")
    out, _ = fit(named, 6)
    assert out.turn_ends == [2, 4] and out.input_ids == ex.input_ids[:4]
    assert (out.id, out.source, out.family) == ("db-train-7", "agent", "db")
    assert named.turn_ends == [2, 4, 6, 8]  # the input record is left as it was


def test_invalid_input_is_rejected():
    with pytest.raises(ValueError, match="policy"):
        fit(make([(2, True)]), 5, policy="truncate")
    with pytest.raises(ValueError, match="labels"):
        fit(TokenRecord([1, 2], [1], [2]), 5)
    with pytest.raises(ValueError, match="turn_ends"):
        fit(TokenRecord([1, 2], [1, 2], [2, 1]), 5)
    with pytest.raises(ValueError, match="turn_ends"):
        fit(TokenRecord([1, 2], [1, 2], [3]), 5)
    with pytest.raises(ValueError, match="max_len"):
        fit(make([(2, True)]), 0)
