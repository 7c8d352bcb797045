"""Shared-prefix training: a trie layout gives the loss and the gradient of every parameter of the separate examples.

The reference is each example alone through the model's own forward (full-vocabulary logits, labels shifted by the
model's convention), summed. Against it: shared-prefix rows (tokens/prefix_tree.py) through the trainer's loss
(train/loss.py, explicit weighted targets) with each attention path — the segment kernel (train/tree_attention.py),
a 4D bool mask (sdpa) and a 4D additive mask (eager) — and each loss implementation; full fine-tuning and LoRA; a tiny
random Llama, and SmolLM2-135M on real db-v1 trajectories (slow). Then whole ``train()`` runs with and without it.
"""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from agenttuning.tokens.prefix_tree import tree_layout
from agenttuning.tokens.record import IGNORE_INDEX, TokenRecord
from agenttuning.train import tree_attention
from agenttuning.train.batches import BatchPlanner, TreeRow, collate
from agenttuning.train.data import AGENT, GENERAL, Sources, TokenTable
from agenttuning.train.loss import CausalLMLoss
from tests.tiny_models import tiny_llama

VOCAB = 80
# float32: sums over the same terms in another order (attention per segment, targets merged) — as in test_loss.py
LOSS_RTOL, GRAD_RTOL = 1e-5, 1e-5
MODES = ["segments", "mask", "additive_mask"]
IMPLS = ["fused", "checkpoint", "full"]


def _ex(ids, trained_from):
    return TokenRecord(list(ids), [IGNORE_INDEX] * trained_from + list(ids[trained_from:]), [len(ids)])


def family(seed: int = 0) -> list[TokenRecord]:
    """Nested shares, an identical pair, an example that is a prefix of another, and one that shares nothing."""
    g = random.Random(seed)
    rand = lambda n: [g.randrange(3, VOCAB) for _ in range(n)]  # noqa: E731
    prompt = [1] + rand(13)
    branch = rand(3)
    a = _ex(prompt + branch + rand(7), 14)
    b = _ex(prompt + rand(6), 12)  # shares the prompt with a and c
    c = _ex(prompt + branch + rand(5), 15)  # shares 17 tokens with a (nested)
    d = _ex(a.input_ids[:16], 9)  # a prefix of a, trained inside the shared segment
    e = _ex([1] + rand(10), 4)  # shares only the first token
    return [a, b, c, copy.deepcopy(a), d, e]


def make_model(*, dtype=torch.float32, attn="sdpa", lora=False, tie=False):
    model = tiny_llama(VOCAB, layers=2, hidden=32, heads=4, kv_heads=2, intermediate=64, tie_word_embeddings=tie)
    model = model.to(dtype)
    model.set_attn_implementation(attn)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0,
                                                 init_lora_weights=False))  # fmt: skip
    return model


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def separately(model, examples) -> tuple[float, dict[str, torch.Tensor]]:
    """The reference: each example alone, the model's own logits, the shifted labels; losses summed."""
    model.zero_grad(set_to_none=True)
    total = 0.0
    for e in examples:
        logits = model(input_ids=torch.tensor([e.input_ids]), use_cache=False).logits[0]
        loss = F.cross_entropy(logits[:-1].to(torch.promote_types(logits.dtype, torch.float32)),
                               torch.tensor(e.labels[1:]), ignore_index=IGNORE_INDEX,
                               reduction="sum")  # fmt: skip
        loss.backward()
        total += float(loss.detach())
    return total, grads(model)


def shared(model, rows, mode, impl) -> tuple[float, dict[str, torch.Tensor], torch.Tensor]:
    """The rows (lists of examples) as shared-prefix rows, one micro-batch, through the trainer's loss module."""
    if mode == "segments":
        assert tree_attention.enable(model)
    model.zero_grad(set_to_none=True)
    tree_rows = [TreeRow(tree_layout(r, tags=[AGENT] * len(r))) for r in rows]
    mb = collate(tree_rows, pad_id=0, tree_attention=mode)
    total, per_target = CausalLMLoss(model, impl=impl, chunk=5)(
        mb.input_ids, mb.labels, mb.position_ids, targets=mb.targets, **mb.extra
    )
    total.backward()
    assert mb.trained == sum(1 for r in rows for e in r for y in e.labels[1:] if y != IGNORE_INDEX)
    assert torch.allclose((per_target * mb.targets[2].to(per_target.dtype)).sum(), total.detach().to(per_target.dtype))
    return float(total.detach()), grads(model), mb.input_ids


def assert_same(got, ref, *, loss_rtol=LOSS_RTOL, grad_rtol=GRAD_RTOL, every=True):
    (loss, g), (ref_loss, ref_g) = got, ref
    assert abs(loss - ref_loss) <= loss_rtol * abs(ref_loss), (loss, ref_loss)
    assert g.keys() == ref_g.keys()
    for name, grad in g.items():
        assert rel(grad, ref_g[name]) < grad_rtol, (name, rel(grad, ref_g[name]))


# ------------------------------------------------------------------------------------------------------------------
# Tiny Llama: every path, full fine-tuning and LoRA


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", MODES)
def test_loss_and_every_gradient_equal_the_separate_examples(mode, impl):
    model = make_model(attn="eager" if mode == "additive_mask" else "sdpa")
    exs = family()
    ref = separately(model, exs)
    loss, g, ids = shared(model, [exs], mode, impl)
    assert ids.shape[1] < sum(len(e.input_ids) for e in exs) - 20  # the layout is shorter: something was shared
    assert len(g) == len(list(model.parameters()))
    assert_same((loss, g), ref)


@pytest.mark.parametrize("mode", ["segments", "mask"])
def test_two_rows_with_padding_and_tied_embeddings(mode):
    model = make_model(tie=True)
    exs = family(1) + family(2)[:3]
    ref = separately(model, exs)
    loss, g, ids = shared(model, [exs[:6], exs[6:]], mode, "fused")
    assert ids.shape[0] == 2
    assert_same((loss, g), ref)


@pytest.mark.parametrize("mode", ["segments", "mask"])
def test_lora(mode):
    model = make_model(lora=True)
    exs = family(3)
    ref = separately(model, exs)
    loss, g, _ = shared(model, [exs], mode, "fused")
    assert g and all("lora_" in n for n in g)
    assert_same((loss, g), ref)


def test_float64_shows_the_differences_are_rounding():
    """In float64 the loss agrees to 1e-12. The gradients agree to ~1e-7, not 1e-12: Llama's RMSNorm computes in
    float32 whatever the model's dtype, so its backward rounds each token's incoming gradient to float32 — and a
    shared token's gradient arrives summed over its examples, where the separate runs round each part."""
    model = make_model(dtype=torch.float64)
    exs = family(4)
    ref = separately(model, exs)
    for mode in ("segments", "mask"):
        assert_same(shared(model, [exs], mode, "fused")[:2], ref, loss_rtol=1e-12, grad_rtol=1e-6)


def test_nothing_shared_is_still_exact():
    """A micro-batch with nothing to share (separate roots) gains nothing and loses nothing."""
    model = make_model()
    g = random.Random(5)
    exs = [_ex([g.randrange(3, VOCAB) for _ in range(n)], 2) for n in (9, 12, 7)]
    ref = separately(model, exs)
    for mode in ("segments", "mask"):
        loss, gr, ids = shared(model, [exs], mode, "fused")
        assert ids.shape[1] == 28
        assert_same((loss, gr), ref)


def test_the_checks_can_fail():
    """Without the tree's attention, or without the weights, the equality breaks (so the tests above mean it)."""
    model = make_model()
    exs = family(6)
    ref_loss, _ = separately(model, exs)
    t = tree_layout(exs, tags=[AGENT] * len(exs))
    mb = collate([TreeRow(t)], tree_attention="mask")
    loss_model = CausalLMLoss(model, impl="fused")
    with torch.no_grad():
        causal = torch.ones(1, 1, len(t), len(t), dtype=torch.bool).tril()  # every token sees all earlier ones
        wrong_mask = float(loss_model(mb.input_ids, mb.labels, mb.position_ids, targets=mb.targets,
                                      attention_mask=causal)[0])  # fmt: skip
        index, tokens, weights = mb.targets
        unweighted = float(loss_model(mb.input_ids, mb.labels, mb.position_ids, targets=(index, tokens, None),
                                      **mb.extra)[0])  # fmt: skip
        right = float(loss_model(mb.input_ids, mb.labels, mb.position_ids, targets=mb.targets, **mb.extra)[0])
        # no mask: transformers reads each backward jump of the positions as a new sequence (tokens/packing.py)
        detected = float(loss_model(mb.input_ids, mb.labels, mb.position_ids, targets=mb.targets)[0])
    assert abs(right - ref_loss) <= LOSS_RTOL * ref_loss
    for wrong in (wrong_mask, unweighted, detected):
        assert abs(wrong - ref_loss) > 1e-4 * ref_loss


def test_the_trainers_probe_catches_an_attention_that_ignores_the_tree():
    from agenttuning.train.trainer import check_sharing

    first = family(7)[0]
    table = TokenTable.from_records([TokenRecord(first.input_ids * 3, first.labels * 3, [len(first) * 3])], "agent")
    empty = TokenTable.from_records([], "general")
    sources = Sources(train=(table, empty), eval=(empty, empty), reports=(None, None))
    model = make_model()
    loss_model = CausalLMLoss(model, impl="fused")
    ok, _, _ = check_sharing(loss_model, sources, "segments", "cpu", 1e-4)  # not switched: sdpa ignores the tree
    assert not ok
    assert check_sharing(loss_model, sources, "mask", "cpu", 1e-4)[0]
    assert tree_attention.enable(model) and check_sharing(loss_model, sources, "segments", "cpu", 1e-4)[0]


def test_the_segment_kernel_computes_fewer_scores_than_a_dense_mask():
    from agenttuning.train.tree_attention import TreeAttention

    exs = family(8)
    t = tree_layout(exs)
    assert TreeAttention.from_layouts([t]).scores < len(t) ** 2 // 2


def test_switching_to_the_kernel_changes_nothing_else(tmp_path):
    """Without ``prefix_tree`` the switched model is sdpa (same logits on a packed row); saving writes no trace."""
    model = make_model()
    ids = torch.tensor([[1, 5, 6, 7, 1, 9, 8]])
    pos = torch.tensor([[0, 1, 2, 3, 0, 1, 2]])
    with torch.no_grad():
        before = model(input_ids=ids, position_ids=pos, use_cache=False).logits
        assert tree_attention.enable(model) and model.config._attn_implementation == tree_attention.NAME
        after = model(input_ids=ids, position_ids=pos, use_cache=False).logits
    assert torch.equal(before, after)
    model.save_pretrained(tmp_path)
    assert tree_attention.NAME not in (tmp_path / "config.json").read_text()
    assert not tree_attention.enable(make_model(attn="eager"))  # eager keeps its own math (the additive mask)


# ------------------------------------------------------------------------------------------------------------------
# The planner


def shared_prefix_tables(seed: int = 0) -> tuple[TokenTable, TokenTable]:
    """Agent examples of two 'environments' (each a fixed 24-token prompt, then a task and a trained reply)."""
    g = random.Random(seed)
    envs = [[1] + [g.randrange(4, 95) for _ in range(23)] for _ in range(2)]
    agent = []
    for i in range(24):
        task = [g.randrange(4, 95) for _ in range(g.randrange(6, 20))]
        reply = [t + 1 for t in task[:6]] + [2]
        x = envs[i % 2] + task + reply
        agent.append(TokenRecord(x, [IGNORE_INDEX] * (len(x) - len(reply)) + reply, [len(x) - len(reply), len(x)]))
    general = [[1] + [g.randrange(4, 95) for _ in range(g.randrange(8, 30))] for _ in range(48)]
    return (TokenTable.from_records(agent, "agent"),
            TokenTable.from_records([TokenRecord(x, [IGNORE_INDEX] * 3 + x[3:], [3, len(x)]) for x in general],
                                    "general"))  # fmt: skip


def test_planner_same_batches_fewer_layout_tokens_and_resume():
    agent, general = shared_prefix_tables()
    def make(sharing: bool) -> BatchPlanner:
        return BatchPlanner(agent, general, eta=0.5, seed=3, max_len=128, n_slots=2, batch_size=12,
                            prefix_sharing=sharing)  # fmt: skip

    plain, tree = make(False), make(True)
    for _ in range(4):
        a, b = plain.next_batch(), tree.next_batch()
        assert (a.examples, a.agent_examples, a.tokens, a.trained, a.trained_by_source, a.draws_after) == (
            b.examples, b.agent_examples, b.tokens, b.trained, b.trained_by_source, b.draws_after)
        assert a.layout_tokens == a.tokens and b.layout_tokens < b.tokens
        rows = [r for s in b.slots for r in s]
        assert all(isinstance(r, TreeRow) and len(r) <= 128 for r in rows)
        assert sorted(i for r in rows for i in r.layout.example_ids) == list(range(12))
        assert len(rows) <= len([r for s in a.slots for r in s])
    resumed = make(True)
    resumed.load_state_dict(tree.state_dict())
    tree_next, resumed_next = tree.next_batch(), resumed.next_batch()
    assert [[r.layout for r in s] for s in tree_next.slots] == [[r.layout for r in s] for s in resumed_next.slots]


def test_collate_marks_targets_and_sources():
    agent, general = shared_prefix_tables(1)
    batch = BatchPlanner(agent, general, eta=0.5, seed=0, max_len=128, n_slots=1, batch_size=10,
                         prefix_sharing=True).next_batch()  # fmt: skip
    mb = collate(batch.slots[0], pad_id=0)
    index, tokens, weights = mb.targets
    assert index.shape == tokens.shape == weights.shape == mb.target_sources.shape
    assert int(weights.sum()) == mb.trained == batch.trained and mb.tokens == batch.tokens
    assert mb.layout_tokens == batch.layout_tokens < batch.tokens
    assert (mb.labels == IGNORE_INDEX).all() and "prefix_tree" in mb.extra
    assert set(mb.target_sources.tolist()) <= {AGENT, GENERAL}
    flat_ids = mb.input_ids.flatten()
    assert (flat_ids[index] != 0).all()  # no target is predicted from padding
    assert "attention_mask" in collate(batch.slots[0], tree_attention="mask").extra
    with pytest.raises(ValueError, match="flattened"):
        collate(batch.slots[0], flatten=True)


# ------------------------------------------------------------------------------------------------------------------
# The trainer


@pytest.fixture(scope="module")
def shared_data(tmp_path_factory):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path_factory.mktemp("shared")
    agent, general = shared_prefix_tables()
    for name, table in (("agent", agent), ("general", general)):
        rows = [table.example(i).to_row() for i in range(len(table))]
        pq.write_table(pa.Table.from_pylist(rows), folder / f"{name}.parquet")
    return folder / "agent.parquet", folder / "general.parquet"


@pytest.fixture
def shared_overrides(model_dir, shared_data):
    agent, general = shared_data
    return [
        f"model={model_dir}", f"agent_data={agent}", f"general_data={general}", "eta=0.5", "batch_size=12",
        "max_len=128", "lr=3e-3", "precision=fp32", "seed=2", "warmup_ratio=0.1", "grad_accum=2",
        "eval_fraction=0.1", "eval_every=3",
    ]  # fmt: skip


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_train_gives_the_same_losses_step_for_step(tmp_path, shared_overrides):
    from agenttuning.train import load_config, train

    plain = train(load_config(None, [*shared_overrides, f"output_dir={tmp_path / 'a'}", "max_steps=6",
                                     "prefix_sharing=false"]))  # fmt: skip
    tree = train(load_config(None, [*shared_overrides, f"output_dir={tmp_path / 'b'}", "max_steps=6"]))
    eager = train(load_config(None, [*shared_overrides, f"output_dir={tmp_path / 'c'}", "max_steps=6",
                                     "attn_implementation=eager"]))  # fmt: skip
    assert plain.prefix_sharing.startswith("off") and tree.prefix_sharing == "segments"
    assert eager.prefix_sharing == "additive_mask"
    assert tree.losses == pytest.approx(plain.losses, rel=1e-5)
    assert eager.losses == pytest.approx(plain.losses, rel=1e-5)
    assert tree.eval == pytest.approx(plain.eval, rel=1e-5) and tree.eval
    assert tree.tokens == plain.tokens and tree.trained_tokens == plain.trained_tokens
    assert tree.layout_tokens < 0.8 * tree.tokens and plain.layout_tokens == plain.tokens
    records = [r for r in _records(tmp_path / "b") if "loss" in r]
    assert all(r["layout_tokens"] < r["tokens"] and r["tokens_per_s"] > 0 for r in records)
    plain_records = [r for r in _records(tmp_path / "a") if "loss" in r]
    assert [r["agent_loss"] for r in records] == pytest.approx([r["agent_loss"] for r in plain_records], rel=1e-5)
    summary = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert summary["prefix_sharing"] == "segments" and summary["layout_tokens"] == tree.layout_tokens


def test_resume_with_sharing_reproduces_the_uninterrupted_run(tmp_path, shared_overrides):
    from agenttuning.train import load_config, train

    common = [*shared_overrides, "max_steps=4", "save_every=2", "eval_fraction=0"]
    straight = train(load_config(None, [*common, f"output_dir={tmp_path / 'a'}"]))
    run = tmp_path / "b"

    def interrupt(event):
        if event.step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(load_config(None, [*common, f"output_dir={run}"]), callbacks=[interrupt])
    resumed = train(load_config(None, [*common, f"output_dir={run}"]))
    assert resumed.resumed_from is not None and resumed.losses == straight.losses[2:]
    assert resumed.layout_tokens == straight.layout_tokens


# ------------------------------------------------------------------------------------------------------------------
# SmolLM2-135M on real db-v1 trajectories


@pytest.fixture(scope="module")
def smollm2() -> str:
    try:
        from agenttuning.models.sources import resolve_model

        return resolve_model("smollm2-135m-instruct", progress=False)
    except Exception as e:  # noqa: BLE001 - any failure to provide it means: try the converted folder
        reason = f"{type(e).__name__}: {e}"
    if Path("/tmp/smol/hf/config.json").is_file():
        return "/tmp/smol/hf"
    pytest.skip(f"SmolLM2-135M-Instruct unavailable: resolve_model('smollm2-135m-instruct') failed ({reason}) "
                "and /tmp/smol/hf has no converted model")  # fmt: skip


def db_trajectories(tokenizer, n: int) -> list:
    """``n`` db-v1 expert trajectories, rendered with the tokenizer's own chat template (as ``prepare`` does)."""
    import tempfile

    from agenttuning.data.example import from_trajectory
    from agenttuning.envs.base import get
    from agenttuning.policies.baselines import ExpertPolicy
    from agenttuning.rollout.engine import rollout
    from agenttuning.tokens.masks import render_batch

    env = get("db")
    with tempfile.TemporaryDirectory() as d:
        summary = rollout(env, env.tasks("train")[:n], ExpertPolicy(env), Path(d) / "t.jsonl", concurrency=1)
    return render_batch([from_trajectory(t).turns for t in summary.trajectories], tokenizer, None)


def _packed_today(model, exs) -> tuple[float, dict[str, torch.Tensor]]:
    """The same examples through today's path: one packed row, positions restarting, labels shifted."""
    from agenttuning.tokens.packing import build_rows, collate_rows
    from agenttuning.train.loss import causal_lm_loss

    model.zero_grad(set_to_none=True)
    b = collate_rows(build_rows(exs, [list(range(len(exs)))]))
    total, _ = causal_lm_loss(model, b["input_ids"], b["labels"], b["position_ids"], impl="fused")
    total.backward()
    return float(total.detach()), grads(model)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_smollm2_on_db_trajectories(smollm2):
    """Three real trajectories (~1,330 tokens, ~850 shared). In float64 the shared layout gives the separate runs'
    loss and gradients (to the float32 rounding of RMSNorm's backward, see above). In float32 a 30-layer model over
    1,300-token sequences rounds differently in any two equivalent computations: today's packed row already differs
    from the separate runs by up to ~3e-4 (relative) in some gradients — so the shared layout must stay within that
    noise floor."""
    import os

    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(os.cpu_count() or 1)  # the conftest's one thread suits tiny models, not this one
    exs = db_trajectories(AutoTokenizer.from_pretrained(smollm2), 3)
    t = tree_layout(exs)
    assert len(t) < 0.7 * t.tokens  # about 850 of ~1,330 tokens shared by all three
    chosen = ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
              "model.layers.15.mlp.down_proj.weight", "model.layers.29.self_attn.v_proj.weight", "model.norm.weight"]
    for dtype in (torch.float64, torch.float32):
        model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=dtype, attn_implementation="sdpa")
        for name, p in model.named_parameters():
            p.requires_grad_(name in chosen)  # the embedding is tied to the head: its gradient has both parts
        ref = separately(model, exs)
        got = shared(model, [exs], "segments", "fused")[:2]
        assert sorted(got[1]) == sorted(chosen)
        if dtype == torch.float64:
            assert_same(got, ref, loss_rtol=1e-10, grad_rtol=1e-6)
            continue
        today = _packed_today(model, exs)
        assert abs(got[0] - ref[0]) <= 2e-5 * abs(ref[0])
        for name, g in got[1].items():
            floor = rel(today[1][name], ref[1][name])
            assert rel(g, ref[1][name]) <= 3 * floor + 1e-5, (name, rel(g, ref[1][name]), floor)
