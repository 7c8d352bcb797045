"""The offline general check: loss on trained tokens (against the model's own loss), exact match, data slices."""

from __future__ import annotations

import itertools
import json
import math

import pytest

from agenttuning.data.example import Example
from agenttuning.data.formats import write_examples, write_sharegpt
from agenttuning.data.general import stdlib_examples
from agenttuning.eval.general import em_key, evaluate_general, held_out_general, load_general_examples
from agenttuning.schema import Turn
from agenttuning.tokens.masks import render

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from tests.tiny_models import tiny_mistral_llama

PARIS = "Paris is the capital of France."


def example(id: str, *turns: tuple[str, str]) -> Example:
    return Example(id=id, source="general", family="test", turns=[
        Turn(role="user", content=c) if r == "user" else Turn(role="assistant", content=c, loss=True) for r, c in turns
    ])  # fmt: skip


MEMORISED = example("paris", ("user", "What is the capital of France?"), ("assistant", PARIS))
OTHER = example("prime", ("user", "Name a prime number."), ("assistant", "Seven is prime.\nSo is eleven."))
MULTI = example("multi", ("user", "Say hi."), ("assistant", "Hi there."), ("user", "And bye?"),
                ("assistant", "Goodbye, see you soon."))  # fmt: skip


@pytest.fixture(scope="module")
def tiny():
    return tiny_mistral_llama(max_pos=256)


def test_random_model_loss_is_near_uniform_and_matches_the_model_own_loss(tiny):
    model, tok = tiny
    items = [MEMORISED, OTHER, MULTI]
    r = evaluate_general(model, tok, items, template="mistral", batch_size=2, em_tokens=4)
    encoded = [render(ex.turns, tok, "mistral") for ex in items]
    assert r.n == 3 and r.tokens == sum(e.num_trained for e in encoded)  # every trained token, once
    assert math.isfinite(r.loss) and r.perplexity == pytest.approx(math.exp(r.loss))
    assert abs(r.loss - math.log(len(tok))) < 0.3  # random init: near-uniform over the 32,768 ids
    assert 0.0 <= r.exact_match <= 1.0 and r.em_scored == 3
    # token-weighted mean = the model's own mean loss over all trained tokens, each example alone (no padding)
    total = 0.0
    with torch.no_grad():
        for e in encoded:
            out = model(input_ids=torch.tensor([e.input_ids]), labels=torch.tensor([e.labels]), use_cache=False)
            total += float(out.loss) * e.num_trained
    assert r.loss == pytest.approx(total / r.tokens, rel=1e-4)


def bigram_model(tok, chain: list[int]):
    """A Llama whose layers add nothing, so each position sees only its own token, and whose embedding and head
    map chain[i] -> chain[i + 1]: it has 'memorised' the reply that chain spells, exactly."""
    model, _ = tiny_mistral_llama(max_pos=256, layers=1)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.zero_()
        model.lm_head.weight.zero_()
        for k, (a, b) in enumerate(itertools.pairwise(chain)):
            model.model.embed_tokens.weight[a, k] = 1.0
            model.lm_head.weight[b, k] = 50.0
    return model


def test_a_model_that_memorised_a_reply_matches_it_exactly(tiny):
    _, tok = tiny
    enc = render(MEMORISED.turns, tok, "mistral")
    start = next(i for i, y in enumerate(enc.labels) if y != -100)
    chain = enc.input_ids[start - 1 :]  # [/INST], the reply's tokens, </s>
    assert len(set(chain)) == len(chain)
    model = bigram_model(tok, chain)
    r = evaluate_general(model, tok, [MEMORISED, OTHER], template="mistral", em_tokens=16)
    by_id = {d["id"]: d for d in r.details}
    assert by_id["paris"]["match"] is True and by_id["paris"]["prediction"] == PARIS
    assert by_id["paris"]["loss"] < 1e-3  # every reply token (and </s>) predicted with probability ~1
    assert by_id["prime"]["match"] is False and by_id["prime"]["target"] == "Seven is prime."
    assert r.exact_match == 0.5 and r.em_scored == 2


def test_em_key(tiny):
    _, tok = tiny
    assert em_key("  Seven is prime.\nSo is eleven.", tok, 16) == "Seven is prime."
    assert em_key("Seven is prime.", tok, 2) == em_key("Seven is composite.", tok, 2) != ""
    assert em_key("\n\n", tok, 8) == ""


def test_truncation_is_counted(tiny):
    model, tok = tiny
    r = evaluate_general(model, tok, [MEMORISED, MULTI], template="mistral", max_length=12, em_tokens=2)
    assert r.truncated == 2 and 0 < r.tokens < sum(render(e.turns, tok, "mistral").num_trained for e in [MULTI])


def test_general_data_from_files_and_the_held_out_stdlib_slice(tmp_path):
    write_examples([MEMORISED, OTHER], tmp_path / "ex.jsonl")
    assert load_general_examples(tmp_path / "ex.jsonl") == [MEMORISED, OTHER]
    write_sharegpt([MEMORISED], tmp_path / "sharegpt.jsonl")
    assert [e.turns for e in load_general_examples(tmp_path / "sharegpt.jsonl")] == [MEMORISED.turns]
    (tmp_path / "bad.jsonl").write_text(json.dumps({"text": "x"}) + "\n")
    with pytest.raises(ValueError, match="turns"):
        load_general_examples(tmp_path / "bad.jsonl")

    root = tmp_path / "lib"
    root.mkdir()
    for i in range(6):
        doc = f"Module number {i} does something useful. " * 5
        (root / f"mod{i}.py").write_text(f'"""{doc}"""\n\ndef f():\n    """{doc}"""\n')
    everything = stdlib_examples(root=root)
    tail = held_out_general(3, root=root)
    assert len(everything) == 12 and tail == everything[-3:]
    assert not {e.id for e in tail} & {e.id for e in stdlib_examples(9, root=root)}  # training head: disjoint
