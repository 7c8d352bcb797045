"""Templates that rewrite contents, used as they are: Meta's official Llama 3 template (``| trim``) and other
prefix-preserving Jinja templates that are not structured (:class:`~agenttuning.tokens.templates.RenderedTemplate`).

The same exactness properties as the structured templates (tests/tokens/test_masks.py), on generated adversarial
conversations with the real Llama 3 vocabulary: the trained tokens of each loss-bearing reply decode to exactly what
the template renders for it (the trimmed reply) plus ``<|eot_id|>``, nothing else is trained; the ids equal
``apply_chat_template``'s; the mask equals Hugging Face's ``return_assistant_tokens_mask`` on the ``{% generation %}``
variant of the same template (TRL's ``llama3_training.jinja``); contents spelling a control token stay text;
``turn_ends`` cut like rendering fewer turns. Then the edge cases and the clear errors for templates that cannot be
exact (not prefix-preserving on a conversation, markup that depends on the content).
"""

from __future__ import annotations

import copy
import json
from collections import Counter

import pytest

from agenttuning.data.example import Example
from agenttuning.data.formats import write_examples
from agenttuning.schema import Turn
from agenttuning.tokens.chat_templates import META_LLAMA3_CHAT_TEMPLATE
from agenttuning.tokens.masks import IGNORE_INDEX, render, render_batch, render_text
from agenttuning.tokens.record import TokenRecord
from agenttuning.tokens.offline import llama3_tokenizer
from agenttuning.tokens.templates import ChatTemplate, RenderedTemplate, from_jinja, get_template
from tests.tokens.conversations import conversations, spelling_pattern, spells_control_token

N = 300  # generated conversations (any role order: Meta's template accepts every one)

#: TRL's ``llama3_training.jinja``: Meta's template with ``{% generation %}`` around each assistant reply and its
#: ``<|eot_id|>``, so Hugging Face's ``return_assistant_tokens_mask`` marks what an assistant-only loss trains.
META_LLAMA3_TRAINING = (
    "{%- for message in messages %}"
    "{%- if loop.index0 == 0 %}{{- bos_token }}{%- endif %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- generation %}{{- message['content'] | trim + '<|eot_id|>' }}{%- endgeneration %}"
    "{%- else %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + "
    "'<|eot_id|>' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)


@pytest.fixture(scope="module")
def tok():
    return llama3_tokenizer()


@pytest.fixture(scope="module")
def meta(tok):
    return from_jinja(tok, META_LLAMA3_CHAT_TEMPLATE, name="meta-llama3")


@pytest.fixture(scope="module")
def own(tok):
    """A Llama 3 Instruct tokenizer as users have it: Meta's template is its own (the cached builtin stays as it is)."""
    own = copy.deepcopy(tok)
    own.chat_template = META_LLAMA3_CHAT_TEMPLATE
    return own


@pytest.fixture(scope="module")
def convs():
    return conversations(N, seed=31, free_order=0.5)


def u(text: str) -> Turn:
    return Turn(role="user", content=text)


def a(text: str, loss: bool | None = True) -> Turn:
    return Turn(role="assistant", content=text, loss=loss)


def messages(turns) -> list[dict[str, str]]:
    return [{"role": t.role, "content": t.content} for t in turns]


def trained_runs(enc: TokenRecord, turns) -> list[list[int] | None]:
    """Per turn, the ids of its trained tokens (None where the turn has none)."""
    out, start = [], 0
    for _, end in zip(turns, enc.turn_ends, strict=True):
        ids = [enc.input_ids[j] for j in range(start, end) if enc.labels[j] != IGNORE_INDEX]
        out.append(ids or None)
        start = end
    return out


def trained_text(enc: TokenRecord, tok) -> str:
    return tok.decode([i for i, y in zip(enc.input_ids, enc.labels, strict=True) if y != IGNORE_INDEX])


# -- Meta's official Llama 3 template: the same exactness tests as the structured templates -------------------------


def test_meta_llama3_template_is_used_as_it_is(meta, own):
    assert isinstance(meta, RenderedTemplate) and "rewrites message contents" in meta.description
    assert isinstance(get_template(own), RenderedTemplate)
    turns = [u("  Hi  "), a("\n Hello \n")]
    assert own.decode(render(turns, own).input_ids) == own.apply_chat_template(messages(turns), tokenize=False)
    assert trained_text(render(turns, own), own) == "Hello<|eot_id|>"


def test_meta_llama3_masks_are_exact(tok, meta, convs):
    encoded = render_batch(convs, tok, meta)
    runs, expected, trimmed = [], [], 0
    for turns, enc in zip(convs, encoded, strict=True):
        assert len(enc.input_ids) == len(enc.labels) and len(enc.turn_ends) == len(turns)
        assert all(y in (IGNORE_INDEX, i) for i, y in zip(enc.input_ids, enc.labels, strict=True))
        assert enc.turn_ends == sorted(enc.turn_ends) and enc.turn_ends[-1] == len(enc.input_ids)
        for turn, run in zip(turns, trained_runs(enc, turns), strict=True):
            if turn.role == "assistant" and turn.loss is True:
                runs.append(run)
                expected.append(turn.content.strip() + "<|eot_id|>")  # Jinja's trim is str.strip
                trimmed += turn.content != turn.content.strip()
            else:
                assert run is None, (turn.role, turn.loss)
    # each trained run is the reply as the template renders it, trimmed, plus <|eot_id|>: nothing more, nothing less
    assert tok.backend_tokenizer.decode_batch(runs, skip_special_tokens=False) == expected
    assert trimmed > 20  # replies with leading/trailing whitespace are exercised

    # the same ids as apply_chat_template (contents spelling no control token: it reads those as control tokens)
    spelling = spelling_pattern(t.content for t in tok.backend_tokenizer.get_added_tokens_decoder().values())
    plain = [(t, e) for t, e in zip(convs, encoded, strict=True) if not spells_control_token(t, spelling)]
    assert len(plain) > N // 2
    texts = tok.apply_chat_template([messages(t) for t, _ in plain], chat_template=META_LLAMA3_CHAT_TEMPLATE,
                                    tokenize=False)
    assert [render_text(t, tok, meta) for t, _ in plain] == texts
    whole = tok(texts, add_special_tokens=False)["input_ids"]
    assert [e.input_ids for _, e in plain] == whole

    # contents that spell a control token stay text: the control ids are exactly those of the markup
    added_ids = set(tok.backend_tokenizer.get_added_tokens_decoder())
    spelled = [(t, e) for t, e in zip(convs, encoded, strict=True) if spells_control_token(t, spelling)]
    assert len(spelled) > N // 20
    bare = render_batch([[Turn(role=x.role, content="", loss=x.loss) for x in t] for t, _ in spelled], tok, meta)
    for (_, enc), b in zip(spelled, bare, strict=True):
        assert Counter(i for i in enc.input_ids if i in added_ids) == Counter(i for i in b.input_ids if i in added_ids)


def test_meta_llama3_mask_equals_hf_assistant_mask_of_its_generation_variant(tok, meta, convs):
    spelling = spelling_pattern(t.content for t in tok.backend_tokenizer.get_added_tokens_decoder().values())
    sample = [t for t in convs if not spells_control_token(t, spelling)][:150]
    all_trained = [[Turn(role=x.role, content=x.content, loss=x.role == "assistant") for x in t] for t in sample]
    assert sum(x.role == "assistant" for t in all_trained for x in t) > 200
    for turns, enc in zip(all_trained, render_batch(all_trained, tok, meta), strict=True):
        hf = tok.apply_chat_template(messages(turns), chat_template=META_LLAMA3_TRAINING, return_dict=True,
                                     return_assistant_tokens_mask=True)
        assert hf["input_ids"] == enc.input_ids
        assert hf["assistant_masks"] == [int(y != IGNORE_INDEX) for y in enc.labels]


def test_meta_llama3_turn_ends_cut_like_rendering_fewer_turns(tok, meta, convs):
    batch = convs[:60]
    prefixes = [(i, k) for i, t in enumerate(batch) for k in range(1, len(t) + 1)]
    full = render_batch(batch, tok, meta)
    cut = render_batch([batch[i][:k] for i, k in prefixes], tok, meta)
    for (i, k), part in zip(prefixes, cut, strict=True):
        end = full[i].turn_ends[k - 1]  # every turn ends with <|eot_id|>: the cut is exact
        assert (full[i].input_ids[:end], full[i].labels[:end]) == (part.input_ids, part.labels)
        assert part.turn_ends == full[i].turn_ends[:k]


# -- the cases named in the issue ----------------------------------------------------------------------------------


def test_reply_with_surrounding_whitespace_is_trained_as_rendered(tok, meta):
    reply = "\n\n  Thought: look it up.\nAction: Operation\n```sql\nSELECT 1;\n```  \n\t\n"
    turns = [u(" \n What is 1? \n"), a(reply)]
    enc = render(turns, tok, meta)
    assert trained_text(enc, tok) == reply.strip() + "<|eot_id|>"
    trained = [i for i, y in zip(enc.input_ids, enc.labels, strict=True) if y != IGNORE_INDEX]
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    assert trained == tok(reply.strip(), add_special_tokens=False)["input_ids"] + [eot]
    assert enc.input_ids == tok.apply_chat_template(messages(turns), chat_template=META_LLAMA3_CHAT_TEMPLATE,
                                                    return_dict=False)


@pytest.mark.parametrize(
    "reply", [" ", "\n\n", " \n\t\n ", "\u3000\u00a0"], ids=["space", "newlines", "mixed", "unicode"]
)
def test_all_whitespace_reply_trains_only_its_end_of_turn(tok, meta, reply):
    turns = [u("Say nothing."), a(reply)]
    enc = render(turns, tok, meta)
    assert trained_text(enc, tok) == "<|eot_id|>" and enc.num_trained == 1
    assert enc.input_ids == tok.apply_chat_template(messages(turns), chat_template=META_LLAMA3_CHAT_TEMPLATE,
                                                    return_dict=False)


def test_multi_turn_trains_exactly_the_loss_bearing_replies(tok, meta):
    turns = [
        Turn(role="system", content="  You are an agent.\n"),
        u("Task: count the users.\n"),
        a(" Ok. ", loss=False),
        u("Go."),
        a("\nThought: count.\nAction: SELECT COUNT(*) FROM users;\n"),
        u("[(42,)]  "),
        a("  in-context reply  ", loss=None),
        u("\n\nAnd the admins?"),
        a("Thought: filter.\nAction: SELECT COUNT(*) FROM users WHERE admin;  "),
        u("[(3,)]"),
        a("Final Answer: 3", loss=False),
    ]
    enc = render(turns, tok, meta)
    runs = trained_runs(enc, turns)
    got = {i: tok.decode(r) for i, r in enumerate(runs) if r is not None}
    assert got == {
        4: "Thought: count.\nAction: SELECT COUNT(*) FROM users;<|eot_id|>",
        8: "Thought: filter.\nAction: SELECT COUNT(*) FROM users WHERE admin;<|eot_id|>",
    }
    assert enc.input_ids == tok.apply_chat_template(messages(turns), chat_template=META_LLAMA3_CHAT_TEMPLATE,
                                                    return_dict=False)


def test_prepare_with_meta_llama3_as_the_tokenizers_own_template_writes_exact_rows(own, tmp_path):
    """Before: every example counted as template_rejects_roles and 0 rows written."""
    pq = pytest.importorskip("pyarrow.parquet")
    from agenttuning.stages.prepare import PrepareConfig
    from agenttuning.stages.prepare import run as run_prepare

    examples = [
        Example(id=f"ex-{i}", source="agent", family="db", turns=[u(f"question {i} "), a(f"\n Answer {i}. \n")])
        for i in range(4)
    ]
    write_examples(examples, tmp_path / "in.jsonl")
    r = run_prepare(PrepareConfig(max_len=128, pack=False), [tmp_path / "in.jsonl"], own, tmp_path / "out")
    assert r.rejected == {}
    rows = sorted(pq.read_table(tmp_path / "out" / "train.parquet").to_pylist(), key=lambda row: row["id"])
    assert [row["id"] for row in rows] == [f"ex-{i}" for i in range(4)]
    for i, row in enumerate(rows):
        trained = [t for t, y in zip(row["input_ids"], row["labels"], strict=True) if y != IGNORE_INDEX]
        assert own.decode(trained) == f"Answer {i}.<|eot_id|>"
        assert row["input_ids"] == own.apply_chat_template(messages(examples[i].turns), return_dict=False)
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["result"]["rows"] == 4


# -- other prefix-preserving templates that are not structured --------------------------------------------------------

# Turns end with the control token <|eot_id|>, so no token straddles two turns (text markup can: masks.py's docstring)
COUNTS_TURNS = (
    "{%- for m in messages -%}<|start_header_id|>{{ m['role'] }} {{ loop.index }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{%- endfor -%}"
)
ESCAPES = (
    "{%- for m in messages -%}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] | e }}"
    "<|eot_id|>{%- endfor -%}"
)
DEFERS_SYSTEM = (  # Llama-2 hub style: the system message is rendered inside the first user message
    "{%- for m in messages -%}{%- if m['role'] == 'user' -%}<|start_header_id|>user<|end_header_id|>\n\n"
    "{%- if loop.index0 == 1 and messages[0]['role'] == 'system' -%}{{ messages[0]['content'] }}\n\n{% endif -%}"
    "{{ m['content'] | trim }}<|eot_id|>{%- elif m['role'] == 'assistant' -%}"
    "<|start_header_id|>assistant<|end_header_id|>\n\n{{ m['content'] | trim }}<|eot_id|>{%- endif -%}{%- endfor -%}"
)


@pytest.mark.parametrize(
    ("source", "rendered_reply"),
    [
        (COUNTS_TURNS, lambda c: c),
        (ESCAPES, lambda c: c.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")),
        (DEFERS_SYSTEM, str.strip),
    ],
    ids=["turn-numbers", "html-escape", "deferred-system"],
)
def test_other_rewriting_templates_train_exactly_what_they_render(tok, source, rendered_reply):
    template = from_jinja(tok, source)
    assert isinstance(template, RenderedTemplate)
    rows = [
        [Turn(role="system", content=" Be brief. "), u(" a & b "), a(" <x> & y \n"), u("more"),
         a("\n ok \n", loss=False), u("last"), a("Done.")],
        [u("1"), a("one"), u("2"), a(" <two> ")],
    ]
    for turns, enc in zip(rows, render_batch(rows, tok, template), strict=True):
        text = tok.apply_chat_template(messages(turns), chat_template=source, tokenize=False)
        assert tok.decode(enc.input_ids) == text and enc.input_ids == tok(text, add_special_tokens=False).input_ids
        for turn, run in zip(turns, trained_runs(enc, turns), strict=True):
            if turn.role == "assistant" and turn.loss is True:
                assert tok.decode(run) == rendered_reply(turn.content) + "<|eot_id|>", turn
            else:
                assert run is None


def test_structured_templates_are_kept(tok):
    """The tokenizer's own verbatim template stays structured (the fast path), and so do the shipped ones."""
    assert type(get_template(tok)) is ChatTemplate and type(get_template("llama3")) is ChatTemplate


# -- clear errors --------------------------------------------------------------------------------------------------

GROWS_A_HEADER = (  # trims, and from six turns on puts a marker at the very start: earlier text is rewritten
    "{{- bos_token -}}{%- if messages | length > 5 -%}<long>{%- endif -%}"
    "{%- for m in messages -%}<{{ m['role'] }}>{{ m['content'] | trim }}</{{ m['role'] }}>{%- endfor -%}"
)
EMPTY_IS_SPECIAL = (  # the markup around a reply depends on the reply itself
    "{%- for m in messages -%}{%- if m['content'] | trim -%}<{{ m['role'] }}>{{ m['content'] | trim }}"
    "{%- else -%}<{{ m['role'] }} empty>{%- endif -%}</{{ m['role'] }}>{%- endfor -%}"
)
LATE_REPLIES_UNRENDERED = (  # prefix-preserving, but replies after the fourth turn render no content
    "{%- for m in messages -%}<{{ m['role'] }}>{%- if m['role'] != 'assistant' or loop.index0 < 4 -%}"
    "{{ m['content'] | trim }}{%- endif -%}</{{ m['role'] }}>{%- endfor -%}"
)
REJECTS_DOUBLE_USER = (
    "{%- for m in messages -%}{%- if loop.index0 > 0 and m['role'] == 'user' and messages[loop.index0 - 1]['role'] "
    "== 'user' -%}{{ raise_exception('two user messages in a row') }}{%- endif -%}"
    "<{{ m['role'] }}>{{ m['content'] | trim }}</{{ m['role'] }}>{%- endfor -%}"
)


def six_turns() -> list[Turn]:
    return [u("q1"), a("r1"), u("q2"), a("r2"), u("q3"), a("r3")]


def test_template_not_prefix_preserving_on_a_conversation_says_what_differs(tok):
    template = from_jinja(tok, GROWS_A_HEADER)  # the probes (up to four turns) cannot see it
    assert isinstance(template, RenderedTemplate)
    assert render(six_turns()[:5], tok, template).num_trained > 0
    with pytest.raises(ValueError, match=r"conversation 0: chat template 'own' is not prefix-preserving on this "
                       r"conversation: rendering the first 6 turns does not start with the rendering of the first 5 "
                       r"turns; at character 18, '<\|begin_of_text\|><user>q1.*' became "
                       r"'<\|begin_of_text\|><long><user>q1"):
        render_batch([six_turns()], tok, template)


def test_markup_that_depends_on_the_content_is_refused(tok):
    template = from_jinja(tok, EMPTY_IS_SPECIAL)
    assert render([u("q"), a("r")], tok, template).num_trained > 0
    with pytest.raises(ValueError, match=r"markup around turn 1's content \(assistant\) depends on the content "
                       r"itself.*'<assistant empty></assistant>'"):
        render([u("q"), a("  ")], tok, template)


def test_a_trained_reply_the_template_does_not_render_is_refused(tok):
    template = from_jinja(tok, LATE_REPLIES_UNRENDERED)
    turns = six_turns()
    assert render(turns[:5], tok, template).num_trained > 0
    turns[5] = a("r3", loss=False)
    assert render(turns, tok, template).num_trained > 0  # untrained: its (missing) content is not needed
    with pytest.raises(ValueError, match=r"does not render turn 5's content \(a trained assistant reply\)"):
        render(six_turns(), tok, template)


def test_role_order_the_template_rejects_names_the_turns(tok):
    template = from_jinja(tok, REJECTS_DOUBLE_USER)
    assert isinstance(template, RenderedTemplate)
    with pytest.raises(ValueError, match=r"conversation 1: chat template 'own' cannot render turns \['user', 'user'\]: "
                       r"two user messages in a row"):
        render_batch([[u("a"), a("b")], [u("a"), u("b"), a("c")]], tok, template)


@pytest.mark.parametrize("source", [META_LLAMA3_CHAT_TEMPLATE, COUNTS_TURNS], ids=["by-role", "probed-per-turn"])
def test_contents_that_spell_the_placeholder_are_still_exact(tok, source):
    """The placeholder that splits markup from content is one that no content of the conversation contains."""
    template = from_jinja(tok, source)
    spelled = "AgentTuningContentMarker AgentTuningContentMarkerZZ"
    turns = [u(spelled), a(" AgentTuningContentMarkerZ "), u("AgentTuningContentMarkerZZZ"), a(spelled)]
    enc = render(turns, tok, template)
    replies = [t.content.strip() if source == META_LLAMA3_CHAT_TEMPLATE else t.content for t in turns[1::2]]
    assert [tok.decode(r) for r in trained_runs(enc, turns) if r] == [r + "<|eot_id|>" for r in replies]
    assert enc.input_ids == tok.apply_chat_template(messages(turns), chat_template=source, return_dict=False)
