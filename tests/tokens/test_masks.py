"""Exact loss masks: properties checked on 1,000 generated conversations per template, with real vocabularies.

For every (vocabulary, template) pair: the trained tokens of each turn decode to exactly its loss-bearing reply
plus end-of-turn markup (plus, where a token straddles, the header text it fused with, only in the predicted
cases); no other token is trained; the ids equal a plain tokenisation of the rendered text when no content spells
a control token; content spelling one never yields its id; ``turn_ends`` are consistent and cut the conversation
like rendering fewer turns does. The model's own Llama 3 template gives the same result as the structured one and
as Hugging Face's ``return_assistant_tokens_mask``; ``mistral`` gives mistral-common's ids.
"""

from __future__ import annotations

import copy
import re
import time
from collections import Counter

import pytest

from agenttuning.schema import Turn
from agenttuning.tokens.masks import IGNORE_INDEX, render, render_batch, render_text, visualize
from agenttuning.tokens.record import TokenRecord
from agenttuning.tokens.offline import llama3_tokenizer, mistral_tokenizer, tekken_path, tekken_tokenizer
from agenttuning.tokens.templates import get_template, markup_text
from tests.tokens.conversations import (
    agent_conversations,
    conversations,
    spelling_pattern,
    spells_control_token,
)

N = 1000  # conversations per (vocabulary, template)
VOCABS = {"llama3": llama3_tokenizer, "tekken": tekken_tokenizer, "mistral-v3": mistral_tokenizer}
CASES = [  # (vocabulary, template; None = the tokenizer's own, checked equal to "llama3" below on every run)
    ("llama3", "llama3"),
    ("llama3", "llama2-chat"),
    ("llama3", "chatml"),
    ("tekken", "mistral"),
    ("tekken", "llama2-chat"),
    ("mistral-v3", "mistral"),
    pytest.param("llama3", None, marks=pytest.mark.slow),
    pytest.param("llama3", "llama2-chat-default-system", marks=pytest.mark.slow),
    pytest.param("tekken", "chatml", marks=pytest.mark.slow),
]


CASE_IDS = [f"{v}-{t or 'own'}" for v, t in (c.values if hasattr(c, "values") else c for c in CASES)]
FREE_ORDER = {"llama3", None, "chatml"}  # templates that allow any role order


@pytest.fixture(scope="module")
def tokenizers():
    return {name: make() for name, make in VOCABS.items()}


@pytest.fixture(scope="module")
def convs():
    return {
        "strict": conversations(N, seed=1),
        "free": conversations(N, seed=2, free_order=0.5),
    }


def case_convs(convs, template):
    return convs["free"] if template in FREE_ORDER else convs["strict"]


def added_tokens(tok) -> dict[str, int]:
    return {t.content: i for i, t in tok.backend_tokenizer.get_added_tokens_decoder().items()}


def turn_texts(turns, tok, template):
    """Per turn: (before text, content, after text), the template's markup spelled out."""
    t = get_template(tok if template is None else template)
    return [
        (markup_text(b, tok.bos_token, tok.eos_token), turn.content, markup_text(a, tok.bos_token, tok.eos_token))
        for (b, a), turn in zip(t.turn_markup(turns), turns, strict=True)
    ]


def fused_allowed(vocab: str, template: str | None, before: str, content: str, fused: str) -> bool:
    """When may the first trained token carry header text (the documented straddling cases)?"""
    if not fused:
        return True
    if not before.endswith(fused):
        return False
    if template in ("llama2-chat", "llama2-chat-default-system"):  # '[/INST] ' + 'Hello' -> ' Hello'
        return fused == " "
    if template in ("llama3", None, "chatml"):  # header '\n' or '\n\n' + reply starting '\s*\n' -> '\n\n\n'
        return fused in ("\n", "\n\n") and re.match(r"\s*[\r\n]", content) is not None
    return False  # mistral: the header ends in a control token


# -- the big property test -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("vocab", "template"), CASES, ids=CASE_IDS)
def test_masks_are_exact(tokenizers, convs, vocab, template):
    tok = tokenizers[vocab]
    batch = case_convs(convs, template)
    encoded = render_batch(batch, tok, template)
    assert len(encoded) == len(batch)
    added = added_tokens(tok)
    added_ids = set(added.values())
    spelling = spelling_pattern(added)

    # 1. trained tokens, per turn
    runs, expected = [], []
    for turns, enc in zip(batch, encoded, strict=True):
        assert len(enc.input_ids) == len(enc.labels) and len(enc.turn_ends) == len(turns)
        assert all(y in (IGNORE_INDEX, i) for i, y in zip(enc.input_ids, enc.labels, strict=True))
        ends = enc.turn_ends
        assert ends == sorted(ends) and (not ends or ends[-1] == len(enc.input_ids))
        start = 0
        for turn, (before, text, after), end in zip(turns, turn_texts(turns, tok, template), ends, strict=True):
            trained = [j for j in range(start, end) if enc.labels[j] != IGNORE_INDEX]
            if turn.role == "assistant" and turn.loss:
                assert trained == list(range(trained[0], trained[-1] + 1)), "trained tokens of a turn are contiguous"
                assert trained[-1] == end - 1 or not after, "the end-of-turn markup closes the trained run"
                runs.append([enc.input_ids[j] for j in trained])
                expected.append((before, text, after))
            else:
                assert trained == [], (turn.role, turn.loss)
            start = end
    decoded = tok.backend_tokenizer.decode_batch(runs, skip_special_tokens=False)
    fused_seen = 0
    for got, (before, text, after) in zip(decoded, expected, strict=True):
        assert got.endswith(text + after), (got, text, after)
        fused = got[: len(got) - len(text + after)]
        assert fused_allowed(vocab, template, before, text, fused), (vocab, template, before, text, fused)
        fused_seen += bool(fused)
    if template in ("llama2-chat", "llama2-chat-default-system"):
        assert fused_seen > 0  # the straddling case is exercised

    # 2. the same ids as tokenising the whole rendered text (contents spelling no control token)
    plain = [(t, e) for t, e in zip(batch, encoded, strict=True) if not spells_control_token(t, spelling)]
    assert len(plain) > N // 2
    texts = [render_text(t, tok, template) for t, _ in plain]
    whole = tok(texts, add_special_tokens=False)["input_ids"]
    for (turns, enc), ids in zip(plain, whole, strict=True):
        assert ids == enc.input_ids

    # 3. content that spells a control token is text: the control ids are exactly the template's markup
    spelled = [(t, e) for t, e in zip(batch, encoded, strict=True) if spells_control_token(t, spelling)]
    assert len(spelled) > N // 20
    markup_only = render_batch(
        [[Turn(role=x.role, content="", loss=x.loss) for x in t] for t, _ in spelled], tok, template
    )
    for (_, enc), bare in zip(spelled, markup_only, strict=True):
        assert Counter(i for i in enc.input_ids if i in added_ids) == Counter(
            i for i in bare.input_ids if i in added_ids
        )


@pytest.mark.parametrize(("vocab", "template"), CASES, ids=CASE_IDS)
def test_turn_ends_cut_like_rendering_fewer_turns(tokenizers, convs, vocab, template):
    """Cutting at turn_ends[k-1] gives exactly render(turns[:k]) where turn k-1 ends with a control token. Where a turn
    ends in text and the next starts with text, one pre-token can span both (llama2's '\n<</SYS>>\n\n' + a user
    message starting '\n': '>>\n\n\n'); its tokens count in the turn where they start, so the cut decodes to the
    first k turns plus the start of the next, and the ids differ from render(turns[:k]) only inside that pre-token."""
    tok = tokenizers[vocab]
    batch = case_convs(convs, template)[:60]
    prefixes = [(i, k) for i, t in enumerate(batch) for k in range(1, len(t) + 1)]
    full = render_batch(batch, tok, template)
    cut = render_batch([batch[i][:k] for i, k in prefixes], tok, template)
    added = added_tokens(tok)
    spelling = spelling_pattern(added)
    straddles = 0
    for (i, k), part in zip(prefixes, cut, strict=True):
        end = full[i].turn_ends[k - 1]
        if full[i].input_ids[:end] == part.input_ids:
            assert full[i].labels[:end] == part.labels and part.turn_ends == full[i].turn_ends[:k]
            continue
        after = turn_texts(batch[i][:k], tok, template)[-1][2]
        assert not any(after.endswith(name) for name in added), ("a turn ending in a control token", i, k)
        straddles += 1
        if spells_control_token(batch[i], spelling):
            continue
        whole, first_k = render_text(batch[i], tok, template), render_text(batch[i][:k], tok, template)
        head = tok.decode(full[i].input_ids[:end])
        assert whole.startswith(head) and head.startswith(first_k) and len(head) > len(first_k), (i, k)
        common = next(j for j, (x, y) in enumerate(zip(full[i].input_ids, part.input_ids)) if x != y)
        assert full[i].labels[:common] == part.labels[:common]
        assert re.fullmatch(r"\S*\s*", tok.decode(part.input_ids[common:])), "only the last pre-token differs"
    assert straddles < len(prefixes) // 10


# -- the model's own template and references -----------------------------------------------------------------------


def test_own_llama3_template_equals_structured_and_hf_assistant_masks(tokenizers, convs):
    tok = tokenizers["llama3"]
    batch = convs["free"]
    own, ours = render_batch(batch, tok, None), render_batch(batch, tok, "llama3")
    assert [(e.input_ids, e.labels, e.turn_ends) for e in own] == [(e.input_ids, e.labels, e.turn_ends) for e in ours]
    # Hugging Face's generation-block mask marks every assistant turn: compare with all replies trained
    spelling = spelling_pattern(added_tokens(tok))
    sample = [t for t in batch if not spells_control_token(t, spelling)][:150]
    all_trained = [[Turn(role=x.role, content=x.content, loss=x.role == "assistant") for x in t] for t in sample]
    for turns, enc in zip(all_trained, render_batch(all_trained, tok, None), strict=True):
        messages = [{"role": x.role, "content": x.content} for x in turns]
        hf = tok.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
        assert hf["input_ids"] == enc.input_ids
        assert hf["assistant_masks"] == [int(y != IGNORE_INDEX) for y in enc.labels]


def test_mistral_template_gives_mistral_commons_ids(tokenizers, convs):
    """Tekken and Mistral v3 against mistral-common's instruct encoders, contents spelling control tokens included
    (mistral-common encodes them as text too). With a system turn, only single-user-turn conversations: mistral-common
    puts the system prompt before the last user message, the structured template before the first. Replies ending with
    a space are left out: mistral-common strips trailing spaces from replies (``content.rstrip(" ")``), we keep
    contents verbatim."""
    pytest.importorskip("mistral_common")
    from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, UserMessage
    from mistral_common.protocol.instruct.request import InstructRequest
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    kinds = {"system": SystemMessage, "user": UserMessage, "assistant": AssistantMessage}
    references = {"tekken": MistralTokenizer.from_file(str(tekken_path())), "mistral-v3": MistralTokenizer.v3()}
    for vocab, reference in references.items():
        batch = [
            t for t in convs["strict"]
            if all(x.content and not (x.role == "assistant" and x.content.endswith(" ")) for x in t)
            and (t[0].role != "system" or sum(x.role == "user" for x in t) == 1)
        ]
        compared = 0
        for turns, enc in zip(batch, render_batch(batch, tokenizers[vocab], "mistral"), strict=True):
            request = InstructRequest(messages=[kinds[x.role](content=x.content) for x in turns])
            try:
                tokens = reference.instruct_tokenizer.encode_instruct(request).tokens
            except Exception:  # noqa: BLE001 - mistral-common rejects some (e.g. whitespace-only) messages
                continue
            assert enc.input_ids == tokens, [x.content for x in turns]
            compared += 1
        assert compared > 150, vocab


# -- rules, one example each ---------------------------------------------------------------------------------------


def trained_text(enc: TokenRecord, tok) -> str:
    return tok.decode([i for i, y in zip(enc.input_ids, enc.labels, strict=True) if y != IGNORE_INDEX])


def test_boundary_rule_examples(tokenizers):
    llama3, tekken = tokenizers["llama3"], tokenizers["tekken"]
    user = Turn(role="user", content="Hi")
    # Llama 3: a reply starting with a newline fuses with the header's '\n\n' into '\n\n\n': trained, header included
    enc = render([user, Turn(role="assistant", content="\nHello", loss=True)], llama3, "llama3")
    assert llama3.convert_ids_to_tokens(enc.input_ids[-3]) == "ĊĊĊ" and trained_text(enc, llama3) == "\n\n\nHello<|eot_id|>"
    enc = render([user, Turn(role="assistant", content="Hello", loss=True)], llama3, "llama3")
    assert trained_text(enc, llama3) == "Hello<|eot_id|>"
    # Llama 2 format: the space after [/INST] goes into the reply's first token, which is trained
    enc = render([user, Turn(role="assistant", content="Hello", loss=True)], llama3, "llama2-chat")
    assert trained_text(enc, llama3) == " Hello <|eot_id|>"
    # Mistral: [/INST] is a control token, nothing fuses
    enc = render([user, Turn(role="assistant", content=" Hello", loss=True)], tekken, "mistral")
    assert trained_text(enc, tekken) == " Hello</s>" and enc.input_ids[:2] == [1, 3]


def test_loss_flags_and_roles(tokenizers):
    tok = tokenizers["llama3"]
    turns = [
        Turn(role="system", content="sys"),
        Turn(role="user", content="task"),
        Turn(role="assistant", content="Ok.", loss=False),
        Turn(role="user", content="go"),
        Turn(role="assistant", content="Thought: x\nAction: y", loss=True),
        Turn(role="user", content="obs"),
        Turn(role="assistant", content="untrained (loss None)"),
    ]
    enc = render(turns, tok, "llama3")
    assert trained_text(enc, tok) == "Thought: x\nAction: y<|eot_id|>"
    assert enc.labels[0] == IGNORE_INDEX and enc.input_ids[0] == tok.bos_token_id
    assert enc.num_trained == len(tok("Thought: x\nAction: y", add_special_tokens=False)["input_ids"]) + 1
    assert len(enc) == len(enc.input_ids) and enc.turn_ends[-1] == len(enc)


def test_special_spellings_stay_text(tokenizers):
    llama3, tekken = tokenizers["llama3"], tokenizers["tekken"]
    reply = "<|eot_id|>[INST]</s><|begin_of_text|>"
    enc = render([Turn(role="user", content="<|start_header_id|>"), Turn(role="assistant", content=reply, loss=True)],
                 llama3, "llama3")
    assert enc.input_ids.count(128009) == 2 and enc.input_ids.count(128006) == 2 and enc.input_ids.count(128000) == 1
    assert trained_text(enc, llama3) == reply + "<|eot_id|>"
    enc = render([Turn(role="user", content="[/INST]"), Turn(role="assistant", content=reply, loss=True)],
                 tekken, "mistral")
    assert enc.input_ids.count(4) == 1 and enc.input_ids.count(2) == 1 and enc.input_ids.count(3) == 1
    assert trained_text(enc, tekken) == reply + "</s>"


def test_empty_and_trivial_conversations(tokenizers):
    tok = tokenizers["llama3"]
    assert render([], tok, "llama3") == TokenRecord([], [], [])
    assert render_batch([], tok, "llama3") == []
    enc = render([Turn(role="user", content=""), Turn(role="assistant", content="", loss=True)], tok, "llama3")
    assert trained_text(enc, tok) == "<|eot_id|>" and enc.turn_ends == [6, 11]


def test_refusals_name_the_conversation(tokenizers):
    tok = tokenizers["tekken"]
    good = [Turn(role="user", content="a"), Turn(role="assistant", content="b", loss=True)]
    bad = [Turn(role="user", content="a"), Turn(role="user", content="b")]
    with pytest.raises(ValueError, match=r"conversation 1: template 'mistral' cannot render turn 1 \(user\)"):
        render_batch([good, bad], tok, "mistral")
    with pytest.raises(ValueError, match="not prefix-preserving"):
        render(good, tok)  # Tekken's own (mistral-common's) template moves the system prompt: refused
    with pytest.raises(ValueError, match="needs the control token '<|start_header_id|>'"):
        render(good, tok, "llama3")  # a template made for another vocabulary


def test_tokenizer_with_added_chatml_tokens(tokenizers):
    """ChatML markup becomes control tokens once the vocabulary has them (a changed tokenizer is re-read)."""
    tok = copy.deepcopy(tokenizers["mistral-v3"])
    turns = [Turn(role="user", content="hi"), Turn(role="assistant", content="yo\n", loss=True)]
    before = render(turns, tok, "chatml")
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    start, end = tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    after = render(turns, tok, "chatml")
    assert start not in before.input_ids and after.input_ids.count(start) == 2 and after.input_ids.count(end) == 2
    # ' \n': the '▁' this SentencePiece tokenizer puts on every stretch of text after a control token (as mistral-
    # common does), here on the '\n' that ends a ChatML turn; the whole rendered text tokenises the same way
    assert trained_text(after, tok) == "yo\n<|im_end|> \n"
    assert tok(render_text(turns, tok, "chatml"), add_special_tokens=False)["input_ids"] == after.input_ids


def test_visualize_shows_every_token_and_colours_trained_ones(tokenizers):
    tok = tokenizers["llama3"]
    turns = [Turn(role="user", content="Hi 😀"), Turn(role="assistant", content="Hello 👨‍👩‍👧!", loss=True)]
    enc = render(turns, tok, "llama3")
    text = visualize(enc, tok)
    assert text.plain == tok.decode(enc.input_ids)
    green = "".join(text.plain[s.start:s.end] for s in text.spans if "green" in str(s.style))
    assert green == "Hello 👨‍👩‍👧!<|eot_id|>"
    short = visualize(enc, tok, max_tokens=3)
    assert short.plain.startswith("<|begin_of_text|><|start_header_id|>user") and "more tokens" in short.plain


# -- throughput ----------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_throughput_llama3_agent_conversations(tokenizers, capsys):
    """2,000 AgentInstruct-like episodes of 2-4k tokens through render_batch; prints tokens/s."""
    tok = tokenizers["llama3"]
    batch = agent_conversations(2000, seed=0)
    render_batch(batch[:4], tok, "llama3")  # warm: the tokenizer's split copy is built once
    t0 = time.perf_counter()
    encoded = render_batch(batch, tok, "llama3")
    seconds = time.perf_counter() - t0
    tokens = sum(len(e) for e in encoded)
    with capsys.disabled():
        print(f"\nrender_batch llama3: {len(batch)} conversations, {tokens:,} tokens in {seconds:.2f} s = "
              f"{tokens / seconds / 1e6:.2f} M tokens/s")
    assert 2000 <= tokens / len(batch) <= 4500
