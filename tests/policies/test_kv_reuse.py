"""KV reuse in HFPolicy (:mod:`agenttuning.policies.kv_cache`, :mod:`agenttuning.policies.decoding`).

What can go wrong and is checked here: a reused prefix that is not the prompt's (wrong positions, masks, pads, a
stale or mutated stored entry) changes greedy tokens, so every output is compared token for token with the
``kv_reuse=False`` path (``model.generate``); rows of different cached lengths in one batch; rows ending at
different steps (the buffer compaction); a re-rendered reply that tokenises differently from the generated ids;
the byte budget; weights changing under the store; sampling; the fallback for unsupported models; the store
shared by serve's policies; and a real model (SmolLM2-135M) on real db-v1 episodes through the rollout engine.
"""

from __future__ import annotations

import asyncio
import os

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from agenttuning.policies import make_policy  # noqa: E402
from agenttuning.policies.decoding import reuse_unsupported  # noqa: E402
from agenttuning.policies.hf import HFPolicy  # noqa: E402
from agenttuning.policies.kv_cache import PrefixKVStore, shared_store  # noqa: E402
from agenttuning.schema import Task, Turn  # noqa: E402
from tests.tiny_models import tiny_mistral_llama  # noqa: E402

TASK = Task(id="t-0001", env="toy-v1", split="test", instruction="look it up")
MAX_NEW = 8
SYSTEM = "You are an agent in a toy world. " + " ".join(f"Rule {i}: never guess, look things up." for i in range(25))


def lcp(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def first_turns(i: int) -> list[Turn]:
    """An episode's start: the shared long instructions, "Ok.", then its own task."""
    return [
        Turn(role="user", content=SYSTEM),
        Turn(role="assistant", content="Ok.", loss=False),
        Turn(role="user", content=f"Task {i}: find item {i * 17}" + " quickly" * (i % 4)),
    ]


@pytest.fixture(scope="module")
def tiny():
    return tiny_mistral_llama(max_pos=4096)


@pytest.fixture
async def make(tiny):
    made: list[HFPolicy] = []

    def build(model=None, **kwargs) -> HFPolicy:
        kwargs.setdefault("max_new_tokens", MAX_NEW)
        kwargs.setdefault("batch_wait_ms", 20)
        if model is None:
            model, kwargs["tokenizer"] = tiny[0], kwargs.get("tokenizer", tiny[1])
        policy = HFPolicy(model, **kwargs)
        made.append(policy)
        return policy

    yield build
    for policy in made:
        await policy.aclose()


def record(policy: HFPolicy) -> list[tuple[list[list[int]], list[list[int]], list[int]]]:
    """Spy on the policy's batches: (prompts, completions, cached) of each."""
    seen: list = []
    real = policy._generate

    def spy(prompts):
        completions, cached = real(prompts)
        seen.append((prompts, completions, cached))
        return completions, cached

    policy._generate = spy  # type: ignore[method-assign]
    return seen


async def run_staggered(policy: HFPolicy, n_episodes: int = 6, turns: int = 3) -> list[list[str]]:
    """Episodes joining in waves (round r: episodes started so far take one more turn, two new ones start), so a
    batch mixes rows cached up to the shared instructions with rows cached up to their own previous turn."""
    convs: list[list[Turn]] = []
    texts: list[list[str]] = []
    started = 0
    for _round in range(turns + n_episodes // 2):
        for _ in range(2):
            if started < n_episodes:
                convs.append(first_turns(started))
                texts.append([])
                started += 1
        active = [i for i in range(len(convs)) if len(texts[i]) < turns]
        if not active:
            break
        replies = await asyncio.gather(*(policy.act(convs[i], task=TASK) for i in active))
        for i, reply in zip(active, replies, strict=True):
            texts[i].append(reply.text)
            convs[i] += [Turn(role="assistant", content=reply.text, loss=True),
                         Turn(role="user", content=f"Observation: item {len(texts[i])} of episode {i}")]  # fmt: skip
    return texts


# -- the store on its own --------------------------------------------------------------------------------------------


def kv_of(ids: list[int]) -> torch.Tensor:
    """A fake KV tensor ``[1, 2, 1, len, 2]`` whose values encode the token ids (to check what a match returns)."""
    t = torch.tensor(ids, dtype=torch.float32)
    return torch.stack([t, -t], dim=-1)[None, None, None].expand(1, 2, 1, len(ids), 2).clone()


def insert(store: PrefixKVStore, ids: list[int]) -> int:
    return store.insert(ids, lambda a, b: kv_of(ids[a:b]))


def test_store_matches_the_longest_common_prefix_and_splits_edges():
    store = PrefixKVStore(max_bytes=1 << 20)
    assert store.match([1, 2, 3]) == (0, [])
    assert insert(store, [1, 2, 3, 4, 5]) == 5
    assert insert(store, [1, 2, 3, 9]) == 1  # only the new token is asked for; the edge is split at 3
    assert insert(store, [1, 2]) == 0  # already stored (inside an edge)
    assert store.sequences() == [(1, 2, 3, 4, 5), (1, 2, 3, 9)]
    assert store.tokens == 6 and store.stats()["nodes"] == 3
    for query, expected in [([1, 2, 3, 4, 7], 4), ([1, 2, 3, 9, 9], 4), ([1, 5], 1), ([2], 0), ([1, 2, 3, 4, 5, 6], 5)]:
        n, parts = store.match(query)
        assert n == expected
        kv = torch.cat(parts, dim=-2) if parts else torch.empty(1, 2, 1, 0, 2)
        assert torch.equal(kv, kv_of(query[:n]))


def test_store_evicts_least_recently_used_leaves_within_the_byte_budget():
    per_token = kv_of([0]).numel() * 4
    store = PrefixKVStore(max_bytes=10 * per_token)
    insert(store, [1, 2, 3, 4])  # shared prefix 1 2, then 3 4
    insert(store, [1, 2, 5, 6])
    insert(store, [1, 2, 7, 8])  # 8 tokens stored
    store.match([1, 2, 3, 4])  # now the oldest leaf is 5 6
    insert(store, [1, 2, 9, 10, 11])  # 11 tokens > 10: evict the least recently used leaf
    assert store.nbytes <= store.max_bytes
    assert store.sequences() == [(1, 2, 3, 4), (1, 2, 7, 8), (1, 2, 9, 10, 11)]
    assert store.stats()["evicted_tokens"] == 2
    store.max_bytes = 4 * per_token  # shrinking evicts too: 7 8, 3 4, then 9 10 11, the only leaf left; the
    assert store.sequences() == [(1, 2)] and store.nbytes == 2 * per_token  # parent 1 2 is a leaf then, and fits
    insert(store, list(range(100, 120)))  # bigger than the whole budget: stored, then evicted at once
    assert store.nbytes <= store.max_bytes


def test_store_tensors_are_never_mutated_and_validate_clears():
    store = PrefixKVStore()
    insert(store, [1, 2, 3, 4, 5])
    n, parts = store.match([1, 2, 3, 4, 5])
    held = [p.clone() for p in parts]
    insert(store, [1, 2, 8])  # splits the edge the held tensor belongs to
    insert(store, [1, 2, 3, 4, 5, 6])
    assert all(torch.equal(p, h) for p, h in zip(parts, held, strict=True))
    store.validate("weights-1")
    assert store.tokens == 7
    store.validate("weights-1")
    assert store.tokens == 7
    store.validate("weights-2")
    assert store.tokens == 0 and store.match([1, 2]) == (0, [])


def test_shared_store_is_one_per_model_object():
    a, b = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    assert shared_store(a) is shared_store(a) and shared_store(a) is not shared_store(b)
    assert shared_store(a, 123).max_bytes == 123


# -- greedy output identical to the generate path ---------------------------------------------------------------------


async def test_concurrent_multi_turn_episodes_equal_the_generate_path(make):
    reuse, plain = make(), make(kv_reuse=False)
    assert reuse.kv_reuse and reuse.kv_fallback_reason is None and not plain.kv_reuse
    batches = record(reuse)
    plain_batches = record(plain)
    texts = await run_staggered(reuse)
    assert texts == await run_staggered(plain)
    # token for token: every prompt's completion ids are the generate path's
    ours = {tuple(p): c for prompts, comps, _ in batches for p, c in zip(prompts, comps, strict=True)}
    theirs = {tuple(p): c for prompts, comps, _ in plain_batches for p, c in zip(prompts, comps, strict=True)}
    assert ours == theirs and len(ours) == 6 * 3
    # the batches really mixed rows of different cached lengths, and the cache served most of the prompts
    assert any(len(set(cached)) >= 3 and len(cached) >= 4 for _, _, cached in batches)
    assert reuse.stats["cached_tokens"] > 0.7 * reuse.stats["prompt_tokens"]
    assert reuse.stats["prompt_tokens"] == plain.stats["prompt_tokens"] and plain.stats["cached_tokens"] == 0
    assert reuse.stats["requests"] == plain.stats["requests"] == 18


async def test_each_rows_logits_equal_the_generate_paths(make, tiny):
    """Stronger than equal tokens (a random model's argmax is insensitive to small errors): every step's logits of
    every row, in a batch of rows with four different cached lengths, equal ``generate``'s for that row."""
    from agenttuning.policies.decoding import generate_reusing

    model = tiny[0]
    policy = make(max_new_tokens=6)
    episodes = [first_turns(i) for i in range(3)]
    replies = await asyncio.gather(*(policy.act(c, task=TASK) for c in episodes))
    second = [[*c, Turn(role="assistant", content=r.text), Turn(role="user", content="Observation: ok")]
              for c, r in zip(episodes[:2], replies[:2], strict=True)]  # fmt: skip
    prompts = [policy.encode(second[0]), policy.encode(first_turns(3)), policy.encode(second[1][:-2]),
               policy.encode([Turn(role="user", content="An unrelated, short question?")])]  # fmt: skip
    records: list[list[torch.Tensor]] = [[] for _ in prompts]
    with torch.inference_mode():
        out, cached = generate_reusing(
            model, prompts, policy.kv_store, policy._current_layout(), max_new=6, stop_ids=policy.stop_token_ids,
            pad_id=policy.pad_token_id, record_logits=records,
        )  # fmt: skip
    assert len(set(cached)) == 4 and 0 < cached[3] < 10 < cached[1] < cached[0]  # own turn > shared > template
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[policy.pad_token_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.inference_mode():
        ref = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False,
                             eos_token_id=policy.stop_token_ids, pad_token_id=policy.pad_token_id,
                             output_logits=True, return_dict_in_generate=True)  # fmt: skip
    for r, row in enumerate(out):
        assert row == ref.sequences[r, width : width + len(row)].tolist()
        for t in range(len(row)):
            assert torch.allclose(records[r][t], ref.logits[t][r].float(), atol=2e-5, rtol=0), (r, t)


async def test_rows_ending_at_different_steps_equal_the_generate_path(make):
    reuse, plain = make(max_new_tokens=12), make(max_new_tokens=12, kv_reuse=False)
    prompts = [reuse.encode([Turn(role="user", content=f"Task {i}: " + f"word{i} " * (i + 1))]) for i in range(6)]
    free = plain.generate_batch(prompts)
    # stop tokens that rows 0, 1 and 2 emit early: those rows end at steps 2, 3, 4, the rest run to the limit,
    # so the loop compacts its buffer to the live rows midway
    stops = list(dict.fromkeys([free[0][1], free[1][2], free[2][3]]))
    for policy in (reuse, plain):
        policy.stop_token_ids = [*policy.stop_token_ids, *stops]
    expected = plain.generate_batch(prompts)
    assert len({len(c) for c in expected}) >= 3
    assert reuse.generate_batch(prompts) == expected  # cold store: rows 2.. reuse row 1's instructions
    assert reuse.generate_batch(prompts) == expected  # warm store: everything but the last prompt token


async def test_uninitialised_memory_never_reaches_a_row(make, monkeypatch):
    """The buffer is allocated uninitialised: pad columns must be made finite (a masked 0 weight times NaN is NaN)."""
    reuse, plain = make(), make(kv_reuse=False)
    prompts = [reuse.encode([Turn(role="user", content="Question" + " and more" * i)]) for i in range(4)]
    expected = plain.generate_batch(prompts)
    real_empty = torch.empty

    def poisoned(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", poisoned)
    assert reuse.generate_batch(prompts) == expected


async def test_the_cache_is_hit_on_the_second_turn_and_the_second_episode(make):
    policy = make()
    a = first_turns(1)
    reply = await policy.act(a, task=TASK)
    assert policy.stats["cached_tokens"] == 0
    b = first_turns(2)
    await policy.act(b, task=TASK)
    assert policy.stats["cached_tokens"] == lcp(policy.encode(a), policy.encode(b)) > 100  # the instructions
    before = policy.stats["cached_tokens"]
    a2 = [*a, Turn(role="assistant", content=reply.text), Turn(role="user", content="Observation: 42")]
    await policy.act(a2, task=TASK)
    assert policy.stats["cached_tokens"] - before >= len(policy.encode(a))  # the whole first turn at least
    stats = policy.kv_stats()
    assert stats["kv_reuse"] and stats["store"]["bytes"] > 0 and stats["store"]["lookups"] >= 3


async def test_a_reply_retokenised_differently_reuses_only_the_matching_ids(make):
    reuse, plain = make(max_new_tokens=12), make(max_new_tokens=12, kv_reuse=False)
    first = reuse.encode(first_turns(3))
    generated = reuse.generate_batch([first])[0]
    assert len(generated) >= 6
    stored = first + generated[:-1]  # what the store holds now: the prompt and the reply's computed tokens
    # the next prompt carries the reply re-tokenised: the same ids up to its 4th token, then others (as a chat
    # template re-rendering the decoded text may produce), then the rest of the turn
    other = next(t for t in range(1000, 2000) if t != generated[3])
    prompt = first + generated[:3] + [other] + generated[4:-1] + reuse.encode([Turn(role="user", content="Obs: 7")])
    assert lcp(stored, prompt) == len(first) + 3  # diverges mid-reply
    out, cached = reuse._generate([prompt])
    assert cached == [len(first) + 3]
    assert out == plain.generate_batch([prompt])
    # and a whole conversation re-rendered from the decoded reply text reuses whatever still matches
    text = reuse.decode(generated)
    conv = [*first_turns(3), Turn(role="assistant", content=text), Turn(role="user", content="Observation: 7")]
    prompt = reuse.encode(conv)
    expected = max(lcp(list(seq), prompt[:-1]) for seq in reuse.kv_store.sequences())
    out, cached = reuse._generate([prompt])
    assert cached == [expected] and expected >= len(first)
    assert out == plain.generate_batch([prompt])


async def test_the_byte_budget_holds_and_outputs_stay_equal(make, tiny):
    import copy

    model = copy.deepcopy(tiny[0])  # a store of its own (stores are per model object)
    probe = make(model, tokenizer=tiny[1], kv_reuse=False)
    config = model.config
    per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * (
        config.hidden_size // config.num_attention_heads
    ) * 4
    budget = int(1.5 * len(probe.encode(first_turns(0)))) * per_token  # room for one and a half prompts
    reuse = make(model, tokenizer=tiny[1], kv_cache_bytes=budget)
    assert reuse.kv_store.max_bytes == budget
    texts = await run_staggered(reuse, n_episodes=4, turns=2)
    assert texts == await run_staggered(probe, n_episodes=4, turns=2)
    stats = reuse.kv_store.stats()
    assert stats["bytes"] <= budget and stats["evicted_tokens"] > 0
    assert reuse.stats["cached_tokens"] > 0


async def test_stored_kv_is_the_prompts_kv_and_unchanged_by_later_requests(make, tiny):
    from transformers.cache_utils import DynamicCache

    model = tiny[0]
    policy = make()
    prompt = policy.encode(first_turns(4))
    policy.generate_batch([prompt])
    n, parts = policy.kv_store.match(prompt)
    assert n == len(prompt)
    held = [p.clone() for p in parts]
    stored = torch.cat(parts, dim=-2)  # [layers, 2, kv_heads, tokens, head_dim]
    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        model(input_ids=torch.tensor([prompt]), cache=cache, use_cache=True)
    fresh = torch.stack([torch.stack([layer.keys[0], layer.values[0]]) for layer in cache.layers])
    assert torch.allclose(stored, fresh, atol=1e-5)
    # later requests extend and split the same path; what was handed out stays as it was
    await asyncio.gather(*(policy.act(first_turns(i), task=TASK) for i in range(4, 8)))
    policy.generate_batch([prompt[:-5] + [prompt[-1]] * 5])
    assert all(torch.equal(p, h) for p, h in zip(parts, held, strict=True))
    n2, parts2 = policy.kv_store.match(prompt)
    assert n2 == len(prompt) and torch.equal(torch.cat(parts2, dim=-2), stored)


async def test_changed_weights_clear_the_store(make, tiny):
    import copy

    model = copy.deepcopy(tiny[0])  # this test changes weights in place
    reuse, plain = make(model, tokenizer=tiny[1]), make(model, tokenizer=tiny[1], kv_reuse=False)
    prompt = reuse.encode(first_turns(5))
    reuse.generate_batch([prompt])
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.mul_(3.0)  # as an optimizer step would, in place
    out, cached = reuse._generate([prompt])
    assert cached == [0] and out == plain.generate_batch([prompt])
    assert reuse.kv_store.stats()["clears"] >= 1


# -- sampling ---------------------------------------------------------------------------------------------------------


async def test_seeded_sampling_works_with_reuse(make):
    messages = first_turns(6)
    warm = make()
    await warm.act(messages, task=TASK)  # the store now holds this prompt: sampled runs below reuse it
    first = await make(temperature=1.0, seed=7).act(messages, task=TASK)
    again = await make(temperature=1.0, seed=7).act(messages, task=TASK)
    other = await make(temperature=1.0, seed=8).act(messages, task=TASK)
    greedy = await make().act(messages, task=TASK)
    assert first == again and other.text != first.text and greedy.text != first.text
    # one request per batch draws the same noise in both paths, so even the sample is the generate path's
    plain = await make(temperature=1.0, seed=7, kv_reuse=False).act(messages, task=TASK)
    assert plain == first


# -- fallback and plumbing --------------------------------------------------------------------------------------------


async def test_kv_reuse_off_uses_generate(make, monkeypatch):
    policy = make(kv_reuse=False)
    calls = []
    real = policy.model.generate
    monkeypatch.setattr(policy.model, "generate", lambda *a, **k: calls.append(1) or real(*a, **k))
    await policy.act(first_turns(0), task=TASK)
    assert calls and policy.kv_store is None and policy.kv_fallback_reason is None
    assert policy.kv_stats() == {"kv_reuse": False, "prompt_tokens": policy.stats["prompt_tokens"],
                                 "cached_tokens": 0}  # fmt: skip


async def test_unsupported_models_fall_back_to_generate(tiny, make, caplog):
    from transformers import MistralConfig, MistralForCausalLM

    tok = tiny[1]
    config = MistralConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, sliding_window=16,
                           bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)  # fmt: skip
    sliding = MistralForCausalLM(config).eval()
    assert "full attention" in reuse_unsupported(sliding)
    with caplog.at_level("INFO"):
        policy = make(sliding, tokenizer=tok)
    assert not policy.kv_reuse and "DynamicSlidingWindowLayer" in policy.kv_fallback_reason
    assert "KV reuse off" in caplog.text
    assert isinstance((await policy.act(first_turns(0), task=TASK)).text, str)

    import copy

    penalised = copy.deepcopy(tiny[0])
    penalised.generation_config.repetition_penalty = 1.3
    assert "repetition_penalty" in reuse_unsupported(penalised)
    assert not make(penalised, tokenizer=tok).kv_reuse


async def test_make_policy_passes_kv_options(tiny, tmp_path):
    tiny[0].save_pretrained(tmp_path)
    tiny[1].save_pretrained(tmp_path)
    off = make_policy(f"hf:{tmp_path}", kv_reuse=False)
    on = make_policy(f"hf:{tmp_path}", kv_cache_bytes=1 << 20)
    try:
        assert not off.kv_reuse and on.kv_reuse and on.kv_store.max_bytes == 1 << 20
    finally:
        await off.aclose()
        await on.aclose()


async def test_serve_backend_policies_share_one_store(tiny):
    from agenttuning.serve.backends import HFBackend, Sampling

    backend = HFBackend(HFPolicy(tiny[0], tokenizer=tiny[1], max_new_tokens=4))
    try:
        turns = first_turns(7)
        await backend.complete(turns, Sampling(temperature=0.0, top_p=1.0, max_tokens=4))
        await backend.complete(turns, Sampling(temperature=0.7, top_p=1.0, max_tokens=3))
        policies = list(backend._policies.values())
        assert len(policies) == 2 and policies[0].kv_store is policies[1].kv_store is backend.kv_store
        assert policies[1].stats["cached_tokens"] == len(policies[1].encode(turns)) - 1  # the other's prompt
        stats = backend.stats()
        assert stats["kv_reuse"] and stats["cached_tokens"] > 0 and stats["kv_cache"]["bytes"] > 0
    finally:
        await backend.aclose()
    assert backend.kv_store.stats()["bytes"] == 0  # the last policy to leave empties the store
    off = HFBackend(HFPolicy(tiny[0], tokenizer=tiny[1], kv_reuse=False))
    try:
        assert off.stats()["kv_reuse"] is False and "kv_cache" not in off.stats()
    finally:
        await off.aclose()


def test_serve_cli_flags_reach_the_backend(monkeypatch):
    from typer.testing import CliRunner

    import agenttuning.serve as serve_pkg
    from agenttuning.cli import app

    seen: dict = {}
    monkeypatch.setattr(serve_pkg, "serve", lambda model, **kw: seen.update(kw))
    monkeypatch.setattr("agenttuning.models.resolve_model", lambda spec: spec)
    result = CliRunner().invoke(app, ["serve", "some/model", "--no-kv-reuse", "--kv-cache-mb", "64"])
    assert result.exit_code == 0, result.output
    assert seen["kv_reuse"] is False and seen["kv_cache_bytes"] == 64 << 20
    CliRunner().invoke(app, ["serve", "some/model"])
    assert seen["kv_reuse"] is True and seen["kv_cache_bytes"] is None


# -- a real model on real episodes ------------------------------------------------------------------------------------

SMOL_FALLBACK = "/tmp/smol/hf"


@pytest.fixture(scope="module")
def smol_path() -> str:
    """SmolLM2-135M-Instruct: the ``smollm2-135m-instruct`` alias through the model resolver, else a converted
    folder at /tmp/smol/hf; skipped when neither is there."""
    reasons = []
    try:
        from agenttuning.models.sources import resolve_model

        return resolve_model("smollm2-135m-instruct", progress=False)
    except Exception as e:  # noqa: BLE001 - not installed, offline, no resolver yet...
        reasons.append(f"resolve_model('smollm2-135m-instruct') failed: {type(e).__name__}: {e}")
    if os.path.isfile(os.path.join(SMOL_FALLBACK, "config.json")):
        return SMOL_FALLBACK
    reasons.append(f"no converted folder at {SMOL_FALLBACK}")
    pytest.skip("SmolLM2-135M-Instruct is not available: " + "; ".join(reasons))


@pytest.mark.slow
def test_smollm2_db_episodes_are_identical_with_and_without_reuse(smol_path, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agenttuning.envs.base import get
    from agenttuning.jsonl import read_records
    from agenttuning.rollout.engine import EpisodeLimits, rollout
    from agenttuning.schema import Trajectory

    model = AutoModelForCausalLM.from_pretrained(smol_path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(smol_path)
    env = get("db")
    tasks = env.tasks("test")[:3]
    results = {}
    for reuse in (True, False):
        policy = HFPolicy(model, tokenizer=tok, max_new_tokens=24, batch_wait_ms=50, kv_reuse=reuse)
        assert policy.kv_reuse is reuse, policy.kv_fallback_reason
        out = tmp_path / f"{reuse}.jsonl"
        rollout(env, tasks, policy, out, concurrency=3, limits=EpisodeLimits(max_turns=2, timeout_s=None))
        trajs = sorted(read_records(out, Trajectory), key=lambda t: t.task.id)
        results[reuse] = ([[s.reply for s in t.steps] for t in trajs], [t.usage for t in trajs], dict(policy.stats))
    assert results[True][0] == results[False][0]  # the same replies, hence the same actions
    assert results[True][1] == results[False][1]  # the same usage (prompt and completion tokens)
    stats = results[True][2]
    assert stats["cached_tokens"] >= 2 * 800  # rows 2 and 3 of the first batch reuse row 1's instructions
    assert results[False][2]["cached_tokens"] == 0
