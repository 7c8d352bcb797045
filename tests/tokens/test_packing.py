"""Packing (tokens/packing.py): best-fit-decreasing bins, padding-free rows, and no attention across examples."""

from __future__ import annotations

import math
import random
import time

import pytest

from agenttuning.tokens.packing import (
    PackedRow,
    block_causal_mask,
    build_rows,
    collate_rows,
    efficiency,
    pack,
    pack_bfd,
    packed_attention_kwargs,
    segment_ids,
    single_bins,
)
from agenttuning.tokens.record import IGNORE_INDEX, TokenRecord


def random_encoded(rng: random.Random, n: int, vocab: int = 1000) -> TokenRecord:
    """``n`` tokens: an untrained prompt then a trained reply (labels aligned with ids, -100 elsewhere)."""
    ids = [rng.randrange(vocab) for _ in range(n)]
    prompt = rng.randint(0, n - 1)
    return TokenRecord(ids, [IGNORE_INDEX] * prompt + ids[prompt:], [prompt, n] if prompt else [n])


# ------------------------------------------------------------------------------------------- bin packing


def naive_bfd(lengths: list[int], cap: int) -> list[list[int]]:
    """Reference best-fit decreasing: scan every bin for each example (same tie rules as pack_bfd)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        fitting = [b for b in range(len(bins)) if room[b] >= lengths[i]]
        if fitting:
            b = min(fitting, key=lambda b: (room[b], b))
            bins[b].append(i)
            room[b] -= lengths[i]
        else:
            bins.append([i])
            room.append(cap - lengths[i])
    return bins


def ffd_count(lengths: list[int], cap: int) -> int:
    """Bins used by first-fit decreasing."""
    room: list[int] = []
    for n in sorted(lengths, reverse=True):
        for b, r in enumerate(room):
            if r >= n:
                room[b] -= n
                break
        else:
            room.append(cap - n)
    return len(room)


def optimum(lengths: list[int], cap: int) -> int:
    """Exact minimum number of bins (branch and bound; tiny inputs only)."""
    items = sorted(lengths, reverse=True)
    best = [len(items)]

    def place(i: int, loads: list[int]) -> None:
        if len(loads) >= best[0]:
            return
        if i == len(items):
            best[0] = len(loads)
            return
        tried = set()
        for b, load in enumerate(loads):
            if load + items[i] <= cap and load not in tried:
                tried.add(load)
                loads[b] += items[i]
                place(i + 1, loads)
                loads[b] -= items[i]
        place(i + 1, loads + [items[i]])

    place(0, [])
    return best[0]


def check_bins(bins: list[list[int]], lengths: list[int], cap: int) -> None:
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))  # every example exactly once
    loads = [sum(lengths[i] for i in b) for b in bins]
    assert all(0 < load <= cap for load in loads)  # no empty bin, none over capacity
    # any-fit property: a bin was only opened because its first example fitted in no earlier bin, so no two bins
    # could be merged (hence at most one bin is at most half full)
    assert all(loads[a] + loads[b] > cap for a in range(len(loads)) for b in range(a))


def test_bfd_matches_the_brute_force_reference_on_small_random_cases():
    rng = random.Random(0)
    for _ in range(400):
        cap = rng.randint(1, 40)
        lengths = [rng.randint(1, cap) for _ in range(rng.randint(0, 25))]
        bins = pack_bfd(lengths, cap)
        assert bins == naive_bfd(lengths, cap)
        check_bins(bins, lengths, cap)


def test_bfd_is_near_optimal_and_at_least_as_good_as_ffd_overall():
    rng = random.Random(1)
    bfd_total = ffd_total = 0
    for _ in range(300):
        cap = rng.randint(6, 30)
        lengths = [rng.randint(max(1, cap // 6), cap) for _ in range(rng.randint(1, 9))]
        bfd, opt = len(pack_bfd(lengths, cap)), optimum(lengths, cap)
        assert opt <= bfd <= 11 / 9 * opt + 6 / 9  # the tight worst-case bound of the decreasing any-fit rules
        bfd_total += bfd
        ffd_total += ffd_count(lengths, cap)
    for _ in range(200):
        cap = rng.randint(50, 500)
        lengths = [rng.randint(1, cap) for _ in range(rng.randint(50, 300))]
        bfd_total += len(pack_bfd(lengths, cap))
        ffd_total += ffd_count(lengths, cap)
    assert bfd_total <= ffd_total
    # ...but not on every instance: best fit can leave a worse combination of gaps than first fit
    lengths = [4, 20, 9, 2, 7, 11, 4, 24, 18, 5, 3, 17]
    assert (len(pack_bfd(lengths, 25)), ffd_count(lengths, 25), optimum(lengths, 25)) == (6, 5, 5)


def test_bfd_ties_are_deterministic():
    assert pack_bfd([3, 3, 3, 3], 6) == [[0, 1], [2, 3]]
    assert pack_bfd([2, 4, 2, 4, 1, 1], 6) == [[1, 0], [3, 2], [4, 5]]
    assert pack_bfd([], 8) == []
    assert pack_bfd([8, 8], 8) == [[0], [1]]


def test_invalid_lengths_are_rejected():
    with pytest.raises(ValueError, match="outside"):
        pack_bfd([3, 9], 8)
    with pytest.raises(ValueError, match="outside"):
        pack_bfd([0], 8)
    with pytest.raises(ValueError, match="max_len"):
        pack_bfd([1], 0)


def agentinstruct_like_lengths(count: int, seed: int) -> list[int]:
    """~20% agent trajectories (1k-4k tokens, lognormal around 2k) + ~80% ShareGPT-like chats (100-2k, around 450)."""
    rng = random.Random(seed)
    lengths = []
    for _ in range(count):
        if rng.random() < 0.2:
            lengths.append(min(4096, max(1000, round(rng.lognormvariate(math.log(2000), 0.4)))))
        else:
            lengths.append(min(2000, max(100, round(rng.lognormvariate(math.log(450), 0.7)))))
    return lengths


def test_packing_efficiency_on_an_agentinstruct_like_mix():
    lengths = agentinstruct_like_lengths(4000, seed=2023)
    encodeds = [TokenRecord([1] * n, [1] * n, [n]) for n in lengths]
    rows, report = pack(encodeds, 4096)
    check_bins([list(r.example_ids) for r in rows], lengths, 4096)
    assert report.tokens == sum(lengths) and report.rows == len(rows) and report.examples == 4000
    assert report.efficiency == efficiency(map(len, rows), 4096)
    assert report.efficiency >= 0.98, report.to_dict()
    assert report.rows <= math.ceil(sum(lengths) / 4096) + 2  # within two rows of the volume bound
    _, unpacked = pack(encodeds, 4096, packed=False)
    assert unpacked.rows == 4000 and unpacked.efficiency < 0.3  # what padding every example to 4,096 would waste


def test_packing_100k_examples_takes_well_under_a_second():
    rng = random.Random(5)
    lengths = [rng.randint(1, 4096) for _ in range(100_000)]
    start = time.perf_counter()
    bins = pack_bfd(lengths, 4096)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"{elapsed:.2f}s"
    assert sorted(i for b in bins for i in b) == list(range(100_000))
    assert max(sum(lengths[i] for i in b) for b in bins) <= 4096


# ------------------------------------------------------------------------------------------- row layout


def test_rows_concatenate_examples_with_restarting_positions():
    rng = random.Random(3)
    encodeds = [random_encoded(rng, n) for n in (5, 1, 7, 3, 4)]
    encodeds.append(TokenRecord([7, 8, 9], [-100, 8, 9], [1, 3]))  # first label already -100: stays so
    bins = [[2, 0], [5, 1, 4, 3]]
    rows = build_rows(encodeds, bins)
    for row, bin_ in zip(rows, bins):
        assert row.example_ids == tuple(bin_)
        assert row.input_ids == [t for i in bin_ for t in encodeds[i].input_ids]
        assert row.position_ids == [p for i in bin_ for p in range(len(encodeds[i].input_ids))]
        assert row.seq_lens == tuple(len(encodeds[i].input_ids) for i in bin_)
        assert row.cu_seqlens == tuple([0] + [sum(row.seq_lens[: k + 1]) for k in range(len(bin_))])
        assert len(row) == len(row.labels) == len(row.position_ids) == row.cu_seqlens[-1]
        for k, i in enumerate(bin_):
            start, end = row.cu_seqlens[k], row.cu_seqlens[k + 1]
            assert row.labels[start] == IGNORE_INDEX  # never predict an example's first token from another one
            assert row.labels[start + 1 : end] == encodeds[i].labels[1:]  # every other label untouched


def test_no_pack_rows_are_single_examples():
    rng = random.Random(4)
    encodeds = [random_encoded(rng, n) for n in (5, 9, 2)]
    rows, report = pack(encodeds, 16, packed=False)
    assert rows == build_rows(encodeds, single_bins(3))
    for row, ex in zip(rows, encodeds):
        assert row.input_ids == ex.input_ids and row.position_ids == list(range(len(ex.input_ids)))
        assert row.labels == [IGNORE_INDEX] + ex.labels[1:]  # the first label never counts in a causal LM anyway
    assert (report.packed, report.rows, report.tokens) == (False, 3, 16)
    assert report.efficiency == pytest.approx(16 / 48)
    assert report.to_dict()["efficiency"] == report.efficiency
    with pytest.raises(ValueError, match="longer than max_len"):
        pack(encodeds, 8, packed=False)
    assert efficiency([], 8) == 1.0 and efficiency([8, 4], 8) == 0.75


def test_layout_matches_transformers_data_collator_with_flattening():
    torch = pytest.importorskip("torch")
    from transformers import DataCollatorWithFlattening

    rng = random.Random(6)
    encodeds = [random_encoded(rng, n) for n in (6, 1, 9, 4)]
    (row,) = build_rows(encodeds, [[0, 1, 2, 3]])
    features = [{"input_ids": e.input_ids, "labels": e.labels} for e in encodeds]
    theirs = DataCollatorWithFlattening(return_flash_attn_kwargs=True)(features, return_tensors="pt")
    assert theirs["input_ids"].tolist() == [row.input_ids]
    assert theirs["labels"].tolist() == [row.labels]
    assert theirs["position_ids"].tolist() == [row.position_ids]
    assert theirs["cu_seq_lens_q"].tolist() == list(row.cu_seqlens)
    ours = packed_attention_kwargs(torch.tensor([row.position_ids]), "flash")
    assert ours["cu_seq_lens_q"].tolist() == ours["cu_seq_lens_k"].tolist() == list(row.cu_seqlens)
    assert ours["max_length_q"] == theirs["max_length_q"] == max(row.seq_lens)


def test_segment_ids_and_block_causal_mask():
    torch = pytest.importorskip("torch")
    pos = torch.tensor([[0, 1, 2, 0, 0, 1]])
    assert segment_ids(pos).tolist() == [[0, 0, 0, 1, 2, 2]]
    allowed = block_causal_mask(pos, torch.float32)[0, 0] == 0
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
            [0, 0, 0, 1, 0, 0],
            [0, 0, 0, 0, 1, 0],
            [0, 0, 0, 0, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(allowed, expected)
    with pytest.raises(ValueError, match="mode"):
        packed_attention_kwargs(pos, "varlen")


# ------------------------------------------------------------------------------------------- through a model


@pytest.fixture(scope="module")
def model():
    pytest.importorskip("torch")
    from tests.tiny_models import tiny_llama

    return tiny_llama(1000, seed=0)  # float32, eval mode


@pytest.fixture(params=["sdpa", "eager"])
def attn_model(request, model):
    model.set_attn_implementation(request.param)
    yield model
    model.set_attn_implementation("sdpa")


def packed_examples() -> tuple[list[TokenRecord], list[PackedRow]]:
    rng = random.Random(7)
    encodeds = [random_encoded(rng, n) for n in (9, 1, 14, 6, 11, 3)]
    for k in (2, 5):  # examples trained on every token, whose first label is not -100 before packing
        encodeds[k] = TokenRecord(encodeds[k].input_ids, list(encodeds[k].input_ids), [len(encodeds[k].input_ids)])
    return encodeds, build_rows(encodeds, [[0, 1, 2, 3], [4, 5]])


def logits_alone(model, ex: TokenRecord):
    import torch

    with torch.no_grad():
        return model(torch.tensor([ex.input_ids]), use_cache=False).logits[0]


@pytest.mark.parametrize("mode", ["position_ids", "mask"])
def test_packed_examples_do_not_attend_to_each_other(attn_model, mode):
    import torch

    encodeds, rows = packed_examples()
    for row in rows:
        ids = torch.tensor([row.input_ids])
        with torch.no_grad():
            packed = attn_model(ids, **packed_attention_kwargs(torch.tensor([row.position_ids]), mode)).logits[0]
        for k, i in enumerate(row.example_ids):
            start, end = row.cu_seqlens[k], row.cu_seqlens[k + 1]
            torch.testing.assert_close(packed[start:end], logits_alone(attn_model, encodeds[i]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["position_ids", "mask"])
def test_a_padded_batch_of_packed_rows_keeps_examples_apart(model, mode):
    import torch

    encodeds, rows = packed_examples()
    batch = collate_rows(rows, pad_id=0)
    assert batch["input_ids"].shape == (2, max(map(len, rows)))
    assert batch["labels"][1, len(rows[1]) :].eq(IGNORE_INDEX).all()
    with torch.no_grad():
        packed = model(batch["input_ids"], **packed_attention_kwargs(batch["position_ids"], mode)).logits
    for b, row in enumerate(rows):
        for k, i in enumerate(row.example_ids):
            start, end = row.cu_seqlens[k], row.cu_seqlens[k + 1]
            torch.testing.assert_close(packed[b, start:end], logits_alone(model, encodeds[i]), atol=1e-5, rtol=0)


def test_without_use_cache_false_transformers_lets_packed_examples_attend_across(model):
    """The pitfall packed_attention_kwargs avoids: with a cache (config.use_cache=True, the default, even in train()
    mode) transformers 5.23 skips its packed-sequence detection, so position_ids alone do NOT isolate examples.
    If this test starts failing, transformers changed that behaviour: update the packing module's docstring."""
    import torch

    encodeds, rows = packed_examples()
    row = rows[0]
    assert model.config.use_cache
    with torch.no_grad():
        packed = model(torch.tensor([row.input_ids]), position_ids=torch.tensor([row.position_ids])).logits[0]
    start, end = row.cu_seqlens[2], row.cu_seqlens[3]
    assert (packed[start:end] - logits_alone(model, encodeds[row.example_ids[2]])).abs().max() > 1e-2


def summed_loss(logits, labels):
    """Summed next-token cross-entropy with labels aligned to the inputs (shifted here, as HF models do)."""
    import torch

    return torch.nn.functional.cross_entropy(
        logits[:-1].float(), labels[1:], ignore_index=IGNORE_INDEX, reduction="sum"
    )


def test_packed_loss_is_the_sum_of_the_examples_losses(attn_model):
    import torch

    encodeds, rows = packed_examples()
    for row in rows:
        ids, labels = torch.tensor([row.input_ids]), torch.tensor([row.labels])
        with torch.no_grad():
            out = attn_model(ids, labels=labels, **packed_attention_kwargs(torch.tensor([row.position_ids])))
        packed = summed_loss(out.logits[0], labels[0])
        alone = sum(
            summed_loss(logits_alone(attn_model, encodeds[i]), torch.tensor(encodeds[i].labels))
            for i in row.example_ids
        )
        torch.testing.assert_close(packed, alone, atol=1e-4, rtol=1e-5)
        trained = sum(1 for t in row.labels[1:] if t != IGNORE_INDEX)  # HF's loss is the mean over these
        torch.testing.assert_close(out.loss * trained, alone, atol=1e-4, rtol=1e-5)
        # without the first-token rule the row would also train "last token of one example -> first of the next"
        raw = torch.tensor([[t for i in row.example_ids for t in encodeds[i].labels]])
        extra = sum(1 for i in row.example_ids[1:] if encodeds[i].labels[0] != IGNORE_INDEX)
        assert extra >= 1
        assert summed_loss(out.logits[0], raw[0]) > packed + extra  # extra terms of ~log(1000) each (random model)
