"""Scratch models (agenttuning.train.scratch) on a tokenizer trained here (agenttuning.tokens.bpe), end to end.

Checked: the folder loads as a plain Hugging Face model and tokenizer; sizes, special ids and the generation config
follow the tokenizer; parameter counts match the documented formula; the init is seeded; and the whole chain works:
BPE tokenizer -> prepare -> train (loss falls) -> the hf policy generates a reply that stops.
"""

from __future__ import annotations

import json

import pytest
import torch

from agenttuning.data.example import Example
from agenttuning.data.formats import write_examples
from agenttuning.schema import Task, Turn
from agenttuning.tokens.bpe import texts_of, train_bpe_tokenizer
from agenttuning.train.scratch import (
    PRESETS,
    build_scratch_model,
    param_count,
    scratch_config,
)

VOCAB = 512
TABLES = ("users", "orders", "items", "cities", "countries")
COLUMNS = ("name", "price", "population", "code", "total")


def agent_example(i: int) -> Example:
    """A db-like episode: instructions (in-context), a question, a SQL reply, rows, the final answer."""
    table, column = TABLES[i % len(TABLES)], COLUMNS[(i // 5) % len(COLUMNS)]
    turns = [
        Turn(role="user", content="You work with a SQLite database. Reply with Thought and Action."),
        Turn(role="assistant", content="Ok.", loss=False),
        Turn(role="user", content=f"What is the largest {column} in {table}?"),
        Turn(role="assistant", loss=True, content=(
            f"Thought: I will query {table}.\nAction: Operation\n```sql\nSELECT MAX({column}) FROM {table};\n```")),
        Turn(role="user", content=f"[({i * 7},)]"),
        Turn(role="assistant", loss=True, content=f"Thought: done.\nAction: Answer\nFinal Answer: [{i * 7}]"),
    ]  # fmt: skip
    return Example(id=f"db-{i}", source="agent", family="db", turns=turns)


def general_example(i: int) -> Example:
    table = TABLES[i % len(TABLES)]
    turns = [Turn(role="user", content=f"Describe the table {table}."),
             Turn(role="assistant", loss=True, content=f"The table {table} holds one row per {table[:-1]}.")]
    return Example(id=f"g-{i}", source="general", family="docs", turns=turns)


@pytest.fixture(scope="module")
def examples():
    return [agent_example(i) for i in range(40)], [general_example(i) for i in range(40)]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory, examples):
    from tests.tokens.conversations import conversations

    agent, general = examples
    texts = [*texts_of(agent + general), *texts_of(conversations(60, seed=1))]
    return train_bpe_tokenizer(texts, tmp_path_factory.mktemp("scratch") / "tok", vocab_size=VOCAB)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tok_dir):
    return build_scratch_model(tok_dir, tmp_path_factory.mktemp("scratch") / "model", preset="tiny", seed=0,
                               max_position_embeddings=512)  # fmt: skip


def weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


# -- the folder ------------------------------------------------------------------------------------------------------


def test_folder_is_a_complete_hugging_face_model(model_dir, tok_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agenttuning.tokens.prepare import load_tokenizer_by_name

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    source = AutoTokenizer.from_pretrained(tok_dir)
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert (model_dir / "model.safetensors").is_file() and (model_dir / "chat_template.jinja").is_file()
    assert model.config.vocab_size == len(tok) == len(source) == VOCAB
    assert (model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id) == (1, 2, 0)
    assert (model.generation_config.eos_token_id, model.generation_config.pad_token_id) == (2, 0)
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert model.config.max_position_embeddings == tok.model_max_length == 512
    assert tok.chat_template == source.chat_template
    text = "Thought: I will query users.\n<|im_end|> 😀"
    assert tok(text).input_ids == source(text).input_ids == load_tokenizer_by_name(str(model_dir))(text).input_ids
    record = json.loads((model_dir / "scratch_model.json").read_text())
    assert record["preset"] == "tiny" and record["params"] == model.num_parameters() and record["seed"] == 0
    with torch.no_grad():
        logits = model(torch.tensor([[1, 5, 6, 7]])).logits
    assert logits.shape == (1, 4, VOCAB) and torch.isfinite(logits).all()


def test_parameter_counts_follow_the_formula(model_dir, tok_dir):
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    assert AutoModelForCausalLM.from_pretrained(model_dir).num_parameters() == param_count("tiny", VOCAB)
    for preset in PRESETS:
        for vocab in (VOCAB, 4096):
            config = scratch_config(preset, vocab_size=vocab, bos_token_id=1, eos_token_id=2, pad_token_id=0)
            with torch.device("meta"):
                n = LlamaForCausalLM(config).num_parameters()
            assert n == param_count(preset, vocab), (preset, vocab)
    # the documented sizes (module docstring), at the default pipeline's vocabulary
    assert param_count("tiny", 4096) == 950_912
    assert param_count("small", 4096) == 6_163_712
    assert 20e6 < param_count("base", 4096) < 35e6
    assert param_count("tiny", VOCAB, tie_word_embeddings=False) == param_count("tiny", VOCAB) + VOCAB * 128


def test_init_is_seeded(tmp_path, tok_dir, model_dir):
    state = torch.get_rng_state()
    same = build_scratch_model(tok_dir, tmp_path / "same", preset="tiny", seed=0, max_position_embeddings=512)
    other = build_scratch_model(tok_dir, tmp_path / "other", preset="tiny", seed=1, max_position_embeddings=512)
    assert torch.equal(torch.get_rng_state(), state), "the caller's RNG must be left as it was"
    a, b, c = weights(model_dir), weights(same), weights(other)
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    varied = [k for k in a if not torch.equal(a[k], c[k])]
    assert "model.embed_tokens.weight" in varied and any("layers.1.mlp" in k for k in varied)
    assert (model_dir / "model.safetensors").read_bytes() == (same / "model.safetensors").read_bytes()


def test_overrides_and_refusals(tmp_path, tok_dir):
    from transformers import AutoConfig

    folder = build_scratch_model(tok_dir, tmp_path / "m", preset="tiny", num_hidden_layers=3, intermediate_size=256)
    config = AutoConfig.from_pretrained(folder)
    assert (config.num_hidden_layers, config.intermediate_size, config.hidden_size) == (3, 256, 128)
    assert config.max_position_embeddings == 4096
    with pytest.raises(FileExistsError):
        build_scratch_model(tok_dir, folder, preset="tiny", overwrite=False)
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        build_scratch_model(tok_dir, tmp_path / "x", preset="huge")
    with pytest.raises(ValueError, match="multiple of num_attention_heads"):
        build_scratch_model(tok_dir, tmp_path / "y", preset="tiny", num_attention_heads=3)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


# -- end to end: tokenizer -> prepare -> train -> policy -------------------------------------------------------------


def test_trains_and_then_acts_as_a_policy(tmp_path, examples, tok_dir, model_dir):
    from agenttuning.policies.hf import HFPolicy
    from agenttuning.stages import prepare
    from agenttuning.train import load_config, train

    agent, general = examples
    write_examples(agent, tmp_path / "agent.jsonl")
    write_examples(general, tmp_path / "general.jsonl")
    prepared = {}
    for name in ("agent", "general"):
        result = prepare.run(prepare.PrepareConfig(max_len=256, pack=False), [tmp_path / f"{name}.jsonl"],
                             str(tok_dir), tmp_path / "prepared" / name)  # fmt: skip
        assert result.length["kept"] == 40
        prepared[name] = tmp_path / "prepared" / name
    run = tmp_path / "run"
    config = load_config(None, [
        f"model={model_dir}", f"agent_data={prepared['agent']}", f"general_data={prepared['general']}", "eta=0.5",
        "batch_size=8", "max_len=256", "lr=3e-3", "precision=fp32", "cpu=true", "max_steps=12",
        "warmup_ratio=0.1", f"output_dir={run}",
    ])  # fmt: skip
    result = train(config)
    first, last = sum(result.losses[:2]) / 2, sum(result.losses[-2:]) / 2
    assert len(result.losses) == 12 and last < first - 1.0, result.losses
    assert result.model_dir == run / "model"
    from transformers import GenerationConfig

    assert GenerationConfig.from_pretrained(result.model_dir).eos_token_id == 2

    async def act() -> tuple:
        policy = HFPolicy(str(result.model_dir), device="cpu", max_new_tokens=12)
        try:
            prompt = agent[0].turns[:3]
            reply = await policy.act(prompt, task=Task(id="db-0", env="db-v1", split="test", instruction="x"))
            return reply, policy.stop_token_ids, policy.encode(prompt)
        finally:
            await policy.aclose()

    import asyncio

    reply, stops, ids = asyncio.run(act())
    assert 2 in stops  # <|im_end|>: eos, the generation config's eos, and the template's end of turn
    assert ids[-3:] == [1, *ids[-2:]] and ids[0] == 1  # the prompt opens an assistant turn: <|im_start|>assistant\n
    assert isinstance(reply.text, str) and 1 <= reply.usage.completion_tokens <= 12
    assert reply.usage.prompt_tokens == len(ids)
