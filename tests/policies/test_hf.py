"""HFPolicy with a tiny random-init Llama and the real Llama 3 tokenizer, all offline.

What can go wrong and is checked here: the prompt rendering, greedy replies equal to a direct unbatched
``model.generate`` token for token (left padding, attention mask, positions), concurrent requests really batched,
stop tokens (eos, the template's end of turn, the generation config's), usage counts, loading by path, context
limits, a failing ``generate`` failing only its batch, cancellation, closing, and seeded sampling.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from agenttuning.policies import make_policy  # noqa: E402
from agenttuning.policies.base import PolicyError  # noqa: E402
from agenttuning.policies.hf import HFPolicy, _GumbelSampler, encode_prompt, turn_end_token  # noqa: E402
from agenttuning.schema import Task, Turn  # noqa: E402
from tests.tiny_models import tiny_llama3  # noqa: E402

TASK = Task(id="t-0001", env="toy-v1", split="test", instruction="look it up")
MAX_NEW = 10
ASSISTANT_HEADER = [128006, 78191, 128007, 271]  # <|start_header_id|>assistant<|end_header_id|>\n\n


def conversation(i: int) -> list[Turn]:
    """Conversations of different lengths (so batches need padding), ending on a user turn."""
    turns = [
        Turn(role="user", content="You are an agent. Reply with Thought and Action."),
        Turn(role="assistant", content="Ok.", loss=False),
        Turn(role="user", content=f"Task {i}: find the word" + " please" * i),
    ]
    if i % 3 == 2:
        turns += [
            Turn(role="assistant", content="Thought: look.\nAction: lookup x", loss=True),
            Turn(role="user", content=f"Observation: {i * 7}"),
        ]
    return turns


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama3()


@pytest.fixture
async def make(tiny):
    made: list[HFPolicy] = []

    def build(model=None, **kwargs) -> HFPolicy:
        kwargs.setdefault("max_new_tokens", MAX_NEW)
        if model is None:
            model, kwargs["tokenizer"] = tiny[0], kwargs.get("tokenizer", tiny[1])
        policy = HFPolicy(model, **kwargs)
        made.append(policy)
        return policy

    yield build
    for policy in made:
        await policy.aclose()


def unbatched(model, prompt: list[int], stops: list[int], pad: int, max_new: int = MAX_NEW) -> list[int]:
    """The reference: one prompt alone through ``model.generate``, cut after the first stop token."""
    with torch.inference_mode():
        out = model.generate(
            input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=max_new, do_sample=False, eos_token_id=stops, pad_token_id=pad,
        )
    new = out[0, len(prompt):].tolist()
    return next((new[: i + 1] for i, t in enumerate(new) if t in stops), new)


# -- rendering -------------------------------------------------------------------------------------------------------


async def test_prompt_is_the_chat_template_with_generation_prompt(make, tiny):
    policy = make()
    messages = conversation(2)
    ids = policy.encode(messages)
    expected = tiny[1].apply_chat_template(
        [{"role": t.role, "content": t.content} for t in messages], add_generation_prompt=True, return_dict=False
    )
    assert ids == expected
    assert ids[0] == 128000 and ids.count(128000) == 1 and ids[-4:] == ASSISTANT_HEADER
    assert policy.count_tokens(messages) == len(ids)
    assert policy.name == "hf:<in-memory>"
    assert 128009 in policy.stop_token_ids  # <|eot_id|>, found by probing the template


async def test_missing_or_failing_chat_template(tiny):
    import copy

    tok = copy.deepcopy(tiny[1])
    tok.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        HFPolicy(tiny[0], tokenizer=tok)
    tok.chat_template = "{{ raise_exception('roles must alternate') }}"
    policy = HFPolicy(tiny[0], tokenizer=tok)
    with pytest.raises(PolicyError, match="roles must alternate"):
        await policy.act(conversation(0), task=TASK)
    await policy.aclose()


async def test_template_end_of_turn_is_a_stop_token_even_when_eos_differs(tiny):
    import copy

    tok = copy.deepcopy(tiny[1])
    tok.eos_token = "<|end_of_text|>"
    policy = HFPolicy(tiny[0], tokenizer=tok)
    assert 128001 in policy.stop_token_ids and 128009 in policy.stop_token_ids
    await policy.aclose()


# -- replies equal unbatched generation ------------------------------------------------------------------------------


async def test_single_reply_equals_direct_generate(make, tiny):
    model, tok = tiny
    policy = make()
    messages = conversation(0)
    reply = await policy.act(messages, task=TASK)
    prompt = policy.encode(messages)
    reference = unbatched(model, prompt, policy.stop_token_ids, policy.pad_token_id)
    assert isinstance(reply.text, str) and reply.text
    assert reply.text == tok.decode([t for t in reference if t not in policy.stop_token_ids], skip_special_tokens=True)
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.requests) == (
        len(prompt), len(reference), 1,
    )


async def test_concurrent_requests_are_batched_and_equal_unbatched(make, tiny):
    model, tok = tiny
    conversations = [conversation(i) for i in range(8)]
    probe = make()
    prompts = [probe.encode(c) for c in conversations]
    assert len({len(p) for p in prompts}) > 4  # real padding in the batch
    # stop on a token that row 0 emits mid-reply, so rows end at different steps within the batch
    free_run = unbatched(model, prompts[0], [128009], tok.pad_token_id)
    stop = free_run[3]
    model.generation_config.eos_token_id = [128009, stop]
    try:
        policy = make()
        assert stop in policy.stop_token_ids
        replies = await asyncio.gather(*(policy.act(c, task=TASK) for c in conversations))
        assert policy.stats["requests"] == 8 and policy.stats["batches"] < 8 and policy.stats["max_batch"] > 1
        batched_ids = policy.generate_batch(prompts)  # the batcher's own path, for the ids themselves
    finally:
        model.generation_config.eos_token_id = 128009
    lengths = set()
    for prompt, reply, ids in zip(prompts, replies, batched_ids, strict=True):
        reference = unbatched(model, prompt, policy.stop_token_ids, policy.pad_token_id)
        assert ids == reference
        assert reply.text == policy.decode(reference)
        assert reply.usage.prompt_tokens == len(prompt) and reply.usage.completion_tokens == len(reference)
        lengths.add(len(reference))
    assert batched_ids[0] == free_run[:4]  # row 0 stopped on the token, which is cut from the text
    assert replies[0].text == tok.decode(free_run[:3], skip_special_tokens=True)
    assert replies[0].usage.completion_tokens == 4 and len(lengths) > 1


# -- the seams serve builds on ---------------------------------------------------------------------------------------


async def test_act_ids_equals_act_and_says_why_generation_ended(make, tiny):
    model, tok = tiny
    messages = conversation(4)
    policy = make(max_new_tokens=3)
    ids = policy.encode(messages)
    assert ids == encode_prompt(tok, messages)  # the rendering the vLLM backend shares
    free_run = unbatched(model, ids, [128009], tok.pad_token_id)
    assert 128009 not in free_run[:3], "pick a conversation whose first 3 greedy tokens hold no stop token"
    by_ids, by_turns = await policy.act_ids(ids), await policy.act(messages, task=TASK)
    assert by_ids == by_turns
    assert (by_ids.finish_reason, by_ids.usage.completion_tokens) == ("length", 3)  # ran out of new tokens
    model.generation_config.eos_token_id = [128009, free_run[1]]  # now the second token is a stop token
    try:
        stopping = make(max_new_tokens=3)
    finally:
        model.generation_config.eos_token_id = 128009
    reply = await stopping.act_ids(ids)
    assert (reply.finish_reason, reply.usage.completion_tokens) == ("stop", 2)
    assert reply.text == tok.decode(free_run[:1], skip_special_tokens=True)  # the stop token is not in the text
    with pytest.raises(PolicyError, match="max_context_tokens"):
        await make(max_context_tokens=8).act_ids(ids)


async def test_with_sampling_shares_the_model_and_settings_but_not_the_sampling(make):
    base = make(batch_size=3, batch_wait_ms=1.0, max_context_tokens=512)
    sampled = base.with_sampling(temperature=1.0, top_p=0.9, max_new_tokens=4, seed=7)
    again = base.with_sampling(temperature=1.0, top_p=0.9, max_new_tokens=4, seed=7)
    try:
        assert sampled.model is base.model and sampled.tokenizer is base.tokenizer
        assert sampled.kv_store is base.kv_store and sampled.kv_reuse == base.kv_reuse
        assert (sampled.batch_size, sampled.batch_wait_ms, sampled.max_context_tokens) == (3, 1.0, 512)
        assert (sampled.temperature, sampled.top_p, sampled.max_new_tokens) == (1.0, 0.9, 4)
        assert sampled.name == base.name and sampled.stats["requests"] == 0
        a, b = await sampled.act(conversation(1), task=TASK), await again.act(conversation(1), task=TASK)
        assert a == b and a.usage.completion_tokens <= 4  # seeded: the same draw
    finally:
        await sampled.aclose()
        await again.aclose()
    await base.aclose()
    with pytest.raises(PolicyError, match="closed"):
        base.with_sampling(temperature=0.0, top_p=1.0, max_new_tokens=4)


async def test_turn_end_token_is_found_from_the_tokenizer_alone(tiny):
    assert turn_end_token(tiny[1]) == 128009  # <|eot_id|>
    import copy

    tok = copy.deepcopy(tiny[1])
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"  # no special token after a turn
    assert turn_end_token(tok) is None


# -- loading ---------------------------------------------------------------------------------------------------------


async def test_loads_model_and_tokenizer_from_a_saved_folder(make, tiny, tmp_path):
    model, tok = tiny
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    in_memory = make()
    messages = conversation(1)
    expected = await in_memory.act(messages, task=TASK)
    by_path = make_policy(f"hf:{tmp_path}", max_new_tokens=MAX_NEW, temperature=0.0, seed=None)
    try:
        assert isinstance(by_path, HFPolicy) and by_path.name == f"hf:{tmp_path}"
        assert by_path.model is not model and by_path.model.device.type == "cpu"
        reply = await by_path.act(messages, task=TASK)
        assert reply == expected  # same weights, same tokenizer, same greedy reply and usage
    finally:
        await by_path.aclose()
    half = make(str(tmp_path), dtype="bfloat16", max_new_tokens=3)
    assert half.model.dtype == torch.bfloat16
    assert isinstance((await half.act(messages, task=TASK)).text, str)


def test_a_missing_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="could not load a causal LM"):
        HFPolicy(str(tmp_path / "nowhere"))


def test_importing_the_module_stays_cheap():
    code = "import sys, agenttuning.policies.hf; heavy = {'torch', 'transformers'} & set(sys.modules); assert not heavy"
    subprocess.run([sys.executable, "-c", code], check=True)


# -- limits and failures ---------------------------------------------------------------------------------------------


async def test_prompt_longer_than_the_context_raises(make):
    small = make(max_context_tokens=64)
    long_messages = [Turn(role="user", content="word " * 100)]
    with pytest.raises(PolicyError, match="max_context_tokens"):
        await small.act(long_messages, task=TASK)
    default = make()  # default limit: the config's max_position_embeddings (2048)
    assert default.max_context_tokens == 2048
    with pytest.raises(PolicyError, match="2048"):
        await default.act([Turn(role="user", content="word " * 2100)], task=TASK)
    assert isinstance((await small.act(conversation(0), task=TASK)).text, str)  # the policy still works


@pytest.mark.parametrize("kv_reuse", [False, True])
async def test_a_failing_generate_fails_only_its_batch(make, monkeypatch, kv_reuse):
    policy = make(kv_reuse=kv_reuse)
    method = "forward" if kv_reuse else "generate"  # the KV-reusing loop calls the model's forward itself
    real = getattr(policy.model, method)
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(policy.model, method, flaky)
    results = await asyncio.gather(*(policy.act(conversation(i), task=TASK) for i in range(3)),
                                   return_exceptions=True)
    assert all(isinstance(r, PolicyError) and "out of memory" in str(r) for r in results)
    assert isinstance(results[0].__cause__, RuntimeError)
    assert policy.stats["failed_batches"] == 1
    reply = await policy.act(conversation(0), task=TASK)  # the batcher survived
    assert reply.text and policy.stats["batches"] == 1


async def test_a_cancelled_request_does_not_break_the_batcher(make):
    policy = make()
    pending = asyncio.ensure_future(policy.act(conversation(1), task=TASK))
    await asyncio.sleep(0)
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    reply = await asyncio.wait_for(policy.act(conversation(2), task=TASK), timeout=30)
    assert reply.text


async def test_closed_policy_refuses_requests(make):
    policy = make()
    await policy.act(conversation(0), task=TASK)
    await policy.aclose()
    with pytest.raises(PolicyError, match="closed"):
        await policy.act(conversation(0), task=TASK)


# -- sampling --------------------------------------------------------------------------------------------------------


def test_gumbel_max_samples_the_softmax_and_respects_top_p():
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    rows = logits.repeat(40_000, 1)
    for temperature in (1.0, 0.5):
        sampler = _GumbelSampler(temperature, 1.0, torch.Generator().manual_seed(0))
        picks = sampler(None, rows).argmax(dim=-1)
        freq = torch.bincount(picks, minlength=5).float() / len(picks)
        assert torch.allclose(freq, (logits / temperature).softmax(-1), atol=0.01)
    # top_p=0.8: the nucleus is the top 3 tokens (0.61 + 0.22 < 0.8 <= 0.61 + 0.22 + 0.14), renormalised
    sampler = _GumbelSampler(1.0, 0.8, torch.Generator().manual_seed(1))
    freq = torch.bincount(sampler(None, rows).argmax(dim=-1), minlength=5).float() / len(rows)
    assert freq[3] == 0 and freq[4] == 0
    assert torch.allclose(freq[:3], logits[:3].softmax(-1), atol=0.01)


async def test_sampling_is_seeded(make):
    messages = conversation(1)
    first = await make(temperature=1.0, seed=7).act(messages, task=TASK)
    again = await make(temperature=1.0, seed=7).act(messages, task=TASK)
    other = await make(temperature=1.0, seed=8).act(messages, task=TASK)
    greedy = await make().act(messages, task=TASK)
    assert first == again
    assert other.text != first.text and greedy.text != first.text
