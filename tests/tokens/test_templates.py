"""Chat templates as structured renderers, the model's own (Jinja) templates, and the Tekken vocabulary.

Each shipped template's text is checked against an independent rendering (Meta's Llama 2 format string, the Llama 3
Jinja template, ChatML's definition) on generated conversations; Jinja templates that cannot give exact masks are
refused; Tekken is checked token for token against mistral-common's own ``Tekkenizer`` and chat encoder.
"""

from __future__ import annotations

import random

import pytest

from agenttuning.schema import Turn
from agenttuning.tokens.chat_templates import LLAMA3_CHAT_TEMPLATE, TEKKEN_CHAT_TEMPLATE
from agenttuning.tokens.offline import llama3_tokenizer, save_tokenizer, tekken_path, tekken_tokenizer
from agenttuning.tokens.templates import (
    AGENTLM_SYSTEM_PROMPT,
    BOS,
    LLAMA2_DEFAULT_SYSTEM_PROMPT,
    TEMPLATES,
    ChatTemplate,
    RenderedTemplate,
    from_jinja,
    get_template,
    template_names,
)
from tests.tokens.conversations import content, conversations


@pytest.fixture(scope="module")
def llama3():
    return llama3_tokenizer()


@pytest.fixture(scope="module")
def tekken():
    return tekken_tokenizer()


@pytest.fixture(scope="module")
def strict_convs():
    return conversations(300, seed=11)


@pytest.fixture(scope="module")
def free_convs():
    return conversations(300, seed=12, free_order=1.0)


def u(text: str) -> Turn:
    return Turn(role="user", content=text)


def a(text: str, loss: bool = True) -> Turn:
    return Turn(role="assistant", content=text, loss=loss)


def s(text: str) -> Turn:
    return Turn(role="system", content=text)


# -- independent reference renderings ------------------------------------------------------------------------------


def llama2_reference(turns: list[Turn], bos: str, eos: str, default_system: str | None = None) -> str:
    """Meta's Llama 2 chat format (``llama/generation.py``, contents verbatim): ``bos [INST] {user} [/INST] {answer}
    eos`` per round, the system prompt wrapped in <<SYS>> in front of the first user message."""
    system, rest = default_system, list(turns)
    if rest and rest[0].role == "system":
        system, rest = rest[0].content, rest[1:]
    out = []
    for i in range(0, len(rest), 2):
        user = rest[i].content
        if i == 0 and system is not None:
            user = f"<<SYS>>\n{system}\n<</SYS>>\n\n{user}"
        out.append(f"{bos}[INST] {user} [/INST]")
        if i + 1 < len(rest):
            out.append(f" {rest[i + 1].content} {eos}")
    return "".join(out)


def chatml_reference(turns: list[Turn]) -> str:
    return "".join(f"<|im_start|>{t.role}\n{t.content}<|im_end|>\n" for t in turns)


def mistral_reference(turns: list[Turn], bos: str, eos: str) -> str:
    system, rest = None, list(turns)
    if rest and rest[0].role == "system":
        system, rest = rest[0].content, rest[1:]
    out = [bos]
    for i, t in enumerate(rest):
        if t.role == "user":
            text = t.content if not (i == 0 and system is not None) else f"{system}\n\n{t.content}"
            out.append(f"[INST]{text}[/INST]")
        else:
            out.append(t.content + eos)
    return "".join(out)


# -- registry ------------------------------------------------------------------------------------------------------


def test_registry_names_and_lookup(llama3):
    assert template_names() == sorted(
        ["agentlm", "chatml", "llama2-chat", "llama2-chat-default-system", "llama3", "mistral"]
    )
    for name in template_names():
        assert get_template(name) is TEMPLATES[name] and get_template(TEMPLATES[name]) is TEMPLATES[name]
    with pytest.raises(ValueError, match="unknown chat template 'llama9'.*llama2-chat"):
        get_template("llama9")
    own = get_template(llama3)
    assert isinstance(own, ChatTemplate) and own.source == llama3.chat_template
    assert get_template(llama3) is own  # cached per tokenizer and source


def test_llama2_chat_matches_meta_format(strict_convs):
    for turns in strict_convs:
        assert TEMPLATES["llama2-chat"].render_text(turns, bos="<s>", eos="</s>") == llama2_reference(
            turns, "<s>", "</s>"
        )
        assert TEMPLATES["llama2-chat-default-system"].render_text(turns, bos="<s>", eos="</s>") == llama2_reference(
            turns, "<s>", "</s>", LLAMA2_DEFAULT_SYSTEM_PROMPT
        )
        assert TEMPLATES["agentlm"].render_text(turns, bos="<s>", eos="</s>") == llama2_reference(
            turns, "<s>", "</s>", AGENTLM_SYSTEM_PROMPT
        )


def test_llama2_chat_examples():
    turns = [u("Hi"), a("Hello"), u("How?")]
    assert TEMPLATES["llama2-chat"].render_text(turns, bos="<s>", eos="</s>") == (
        "<s>[INST] Hi [/INST] Hello </s><s>[INST] How? [/INST]"
    )
    assert TEMPLATES["llama2-chat"].render_text([s("Be brief."), *turns], bos="<s>", eos="</s>") == (
        "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello </s><s>[INST] How? [/INST]"
    )
    assert TEMPLATES["agentlm"].render_text(turns[:1], bos="<s>", eos="</s>") == (
        "<s>[INST] <<SYS>>\nYou are a helpful, respectful and honest assistant.\n<</SYS>>\n\nHi [/INST]"
    )
    assert LLAMA2_DEFAULT_SYSTEM_PROMPT.startswith("You are a helpful, respectful and honest assistant. Always")
    assert LLAMA2_DEFAULT_SYSTEM_PROMPT.endswith("please don't share false information.")


def test_llama3_matches_its_jinja_template_on_any_role_order(llama3, strict_convs, free_convs):
    for turns in strict_convs + free_convs:
        messages = [{"role": t.role, "content": t.content} for t in turns]
        expected = llama3.apply_chat_template(messages, tokenize=False)
        assert TEMPLATES["llama3"].render_text(turns, bos=llama3.bos_token, eos=llama3.eos_token) == expected


def test_derived_llama3_template_equals_the_structured_one(llama3):
    own = from_jinja(llama3)
    bos, eos = llama3.bos_token, llama3.eos_token
    from agenttuning.tokens.templates import markup_text

    structured = TEMPLATES["llama3"]
    assert set(own.before) == set(structured.before) and set(own.after) == set(structured.after)
    for key in structured.before:
        assert markup_text(own.before[key], bos, eos) == markup_text(structured.before[key], bos, eos)
    for role in structured.after:
        assert markup_text(own.after[role], bos, eos) == markup_text(structured.after[role], bos, eos)
    assert markup_text(own.generation_prompt, bos, eos) == markup_text(structured.generation_prompt, bos, eos)


def test_chatml_and_mistral_match_their_definitions(free_convs, strict_convs):
    for turns in free_convs:
        assert TEMPLATES["chatml"].render_text(turns) == chatml_reference(turns)
    for turns in strict_convs:
        assert TEMPLATES["mistral"].render_text(turns, bos="<s>", eos="</s>") == mistral_reference(turns, "<s>", "</s>")


def test_structured_templates_are_prefix_preserving(strict_convs, free_convs):
    for name, template in TEMPLATES.items():
        convs = free_convs if name in ("llama3", "chatml") else strict_convs
        for turns in convs[:100]:
            full = template.render_text(turns, bos="<s>", eos="</s>")
            for k in range(len(turns)):
                assert full.startswith(template.render_text(turns[:k], bos="<s>", eos="</s>")), (name, k)


@pytest.mark.parametrize(
    ("name", "turns", "message"),
    [
        ("llama2-chat", [a("x")], r"cannot render turn 0 \(assistant\) as the first turn"),
        ("llama2-chat", [u("x"), u("y")], r"cannot render turn 1 \(user\) after a user turn"),
        ("llama2-chat", [u("x"), s("y")], r"cannot render turn 1 \(system\) after a user turn"),
        ("mistral", [s("x"), a("y")], r"cannot render turn 1 \(assistant\) after a system turn"),
        ("mistral", [u("x"), a("y"), a("z")], r"cannot render turn 2 \(assistant\) after an assistant turn"),
    ],
)
def test_role_orders_a_template_lacks_are_refused(name, turns, message):
    with pytest.raises(ValueError, match=message):
        TEMPLATES[name].render_text(turns, bos="<s>", eos="</s>")


def test_bos_alias_needs_a_tokenizer_bos():
    with pytest.raises(ValueError, match="bos token"):
        BOS.resolve(None, "</s>")


# -- the model's own template: Jinja -> structured -----------------------------------------------------------------

NOT_PREFIX_PRESERVING = (  # the last message gets a different ending than the others
    "{%- for m in messages -%}<{{ m['role'] }}>{{ m['content'] }}{% if loop.last %}<end>{% else %}<next>{% endif %}"
    "{%- endfor -%}"
)
TRIMS = "{%- for m in messages -%}<{{ m['role'] }}>{{ m['content'] | trim }}</{{ m['role'] }}>{%- endfor -%}"
COUNTS_TURNS = "{%- for m in messages -%}<{{ m['role'] }} {{ loop.index }}>{{ m['content'] }}{%- endfor -%}"
DEFERS_SYSTEM = (  # Llama-2 hub style: the system message is only rendered inside the first user message
    "{%- for m in messages -%}{%- if m['role'] == 'user' -%}[INST] "
    "{%- if loop.index0 == 1 and messages[0]['role'] == 'system' -%}{{ messages[0]['content'] }} {% endif -%}"
    "{{ m['content'] }} [/INST]{%- elif m['role'] == 'assistant' -%} {{ m['content'] }} </s>{%- endif -%}{%- endfor -%}"
)
SIMPLE = "{%- for m in messages -%}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{%- endfor -%}"


NO_REPLIES = "{%- for m in messages -%}{%- if m['role'] != 'assistant' -%}<{{ m['role'] }}>{{ m['content'] }}{%- endif -%}{%- endfor -%}"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (NOT_PREFIX_PRESERVING, "not prefix-preserving"),
        (TEKKEN_CHAT_TEMPLATE, "not prefix-preserving"),  # mistral-common's system placement: before the last user
        (NO_REPLIES, "renders no assistant reply after a user turn"),
    ],
    ids=["last-turn-marker", "mistral-system-last", "no-replies"],
)
def test_jinja_templates_that_cannot_be_exact_are_refused(llama3, source, message):
    with pytest.raises(ValueError, match=message):
        from_jinja(llama3, source)


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        (TRIMS, "rewrites message contents"),
        (COUNTS_TURNS, "depends on more than the previous turn's role"),
        (DEFERS_SYSTEM, "does not render each turn's content"),
    ],
    ids=["trim", "turn-numbers", "deferred-system"],
)
def test_prefix_preserving_jinja_templates_that_are_not_structured_are_used_as_they_are(llama3, source, reason):
    """Formerly refused: now rendered by Jinja turn by turn (exactness: tests/tokens/test_rendered_templates.py)."""
    t = from_jinja(llama3, source)
    assert isinstance(t, RenderedTemplate) and reason in t.description
    turns = [s(" sys "), u(" a "), a("\n b \n"), u("c")]
    messages = [{"role": x.role, "content": x.content} for x in turns]
    assert t.render_text(turns) == llama3.apply_chat_template(messages, chat_template=source, tokenize=False)


def test_jinja_template_without_system_support_and_the_tekken_default(llama3, tekken):
    t = from_jinja(llama3, SIMPLE, name="simple")
    assert t.name == "simple" and t.render_text([s("a"), u(" b "), a("c\n")]) == (
        "<system>a</system><user> b </user><assistant>c\n</assistant>"
    )
    with pytest.raises(ValueError, match="not prefix-preserving"):
        get_template(tekken)  # the tokenizer's own template is mistral-common's: refused, use 'mistral'
    class NoTemplate:  # a tokenizer without a chat template
        chat_template = None

    with pytest.raises(ValueError, match="no chat_template"):
        get_template(NoTemplate())


def test_jinja_derivation_keeps_role_orders_the_template_rejects(tekken):
    from agenttuning.tokens.chat_templates import MISTRAL_CHAT_TEMPLATE

    no_system = MISTRAL_CHAT_TEMPLATE.replace("messages[0]['role'] == 'system'", "false")
    t = from_jinja(tekken, no_system)
    assert {(None, "user"), ("user", "assistant"), ("assistant", "user")} <= set(t.before)
    assert not {(None, "assistant"), ("user", "user"), ("assistant", "assistant")} & set(t.before)  # it raises there
    assert t.render_text([u("a"), a("b"), u("c")]) == "<s>[INST]a[/INST]b</s>[INST]c[/INST]"
    with pytest.raises(ValueError, match=r"cannot render turn 1 \(user\) after a user turn"):
        t.render_text([u("a"), u("b")])


# -- Tekken --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tekkenizer():
    tekken_module = pytest.importorskip("mistral_common.tokens.tokenizers.tekken")
    return tekken_module.Tekkenizer.from_file(str(tekken_path()))


def tekken_corpus(n: int = 600, seed: int = 5) -> list[str]:
    rng = random.Random(seed)
    fixed = ["", " ", "\n\n\n", "Hello world", " Hello  world ", "日本語 😀 عربى", "a" * 300, "\r\n\tx  ", "[INST]x"]
    return fixed + [content(rng, special=True) for _ in range(n)]


def test_tekken_encodes_exactly_like_mistral_common(tekken, tekkenizer):
    texts = tekken_corpus()
    # contents that spell control tokens: mistral-common encodes them as text, as render() does
    ours = tekken(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    for text, ids in zip(texts, ours, strict=True):
        assert ids == tekkenizer.encode(text, bos=False, eos=False), repr(text)
        assert tekken.decode(ids) == text, repr(text)


def test_tekken_vocabulary_and_special_tokens(tekken, tekkenizer):
    assert len(tekken) == 131072 == tekkenizer.n_words
    assert (tekken.bos_token_id, tekken.eos_token_id, tekken.unk_token_id, tekken.pad_token_id) == (1, 2, 0, 11)
    assert (tekkenizer.bos_id, tekkenizer.eos_id, tekkenizer.unk_id, tekkenizer.pad_id) == (1, 2, 0, 11)
    for token, token_id in {"[INST]": 3, "[/INST]": 4, "[TOOL_CALLS]": 9, "[SYSTEM_PROMPT]": 17}.items():
        assert tekken.convert_tokens_to_ids(token) == token_id == tekkenizer.get_special_token(token)
        assert tekken(token, add_special_tokens=False)["input_ids"] == [token_id]
    added = tekken.backend_tokenizer.get_added_tokens_decoder()
    assert sorted(added) == list(range(1000)) and all(t.special for t in added.values())
    assert tekken("Hello")["input_ids"] == [1, *tekkenizer.encode("Hello", bos=False, eos=False)]


TEKKEN_CONVERSATIONS = [
    [u("Hello  there")],
    [s("You are an agent."), u("Task: x\nGo."), a("Thought: ok\nAction: y"), u("Observation: 1")],
    [u(" leading space"), a("  two spaces\n"), u("\tTab, 日本語 😀"), a("done"), u("next")],
]


@pytest.mark.parametrize("turns", TEKKEN_CONVERSATIONS, ids=["one-turn", "system-3-turns", "whitespace"])
def test_tekken_chat_template_matches_mistral_common(tekken, turns):
    pytest.importorskip("mistral_common")
    from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    kinds = {"system": SystemMessage, "user": UserMessage, "assistant": AssistantMessage}
    request = ChatCompletionRequest(messages=[kinds[t.role](content=t.content) for t in turns])
    reference = MistralTokenizer.from_file(str(tekken_path())).encode_chat_completion(request).tokens
    messages = [{"role": t.role, "content": t.content} for t in turns]
    assert tekken.apply_chat_template(messages, add_generation_prompt=True, return_dict=False) == reference


@pytest.mark.slow  # reloads a 17 MB tokenizer.json (seconds)
def test_tekken_is_cached_and_saves_for_autotokenizer(tekken, tmp_path):
    from transformers import AutoTokenizer

    assert tekken_tokenizer() is tekken
    reloaded = AutoTokenizer.from_pretrained(save_tokenizer(tekken, tmp_path / "tekken"))
    assert len(reloaded) == 131072 and reloaded.chat_template == tekken.chat_template
    assert (reloaded.bos_token, reloaded.eos_token, reloaded.pad_token) == ("<s>", "</s>", "<pad>")
    for text in tekken_corpus(40, seed=9):
        assert reloaded(text)["input_ids"] == tekken(text)["input_ids"], repr(text)


@pytest.mark.slow  # converts tekken.json again (seconds)
def test_tekken_converts_from_a_fresh_cache(tekken, tmp_path, monkeypatch):
    """The cached conversion is what AutoTokenizer makes of tekken.json, in a cache folder or a read-only one."""
    from agenttuning.tokens import offline

    monkeypatch.setenv("AGENTTUNING_CACHE", str(tmp_path / "cache"))
    fresh = offline._tekken_backend()
    assert (tmp_path / "cache" / "tokenizers" / "tekken-240718" / "tekken.json").read_bytes() == (
        tekken_path().read_bytes()
    )
    assert len(list((tmp_path / "cache" / "tokenizers" / "tekken-240718").glob("converted-*.json"))) == 1
    assert offline._tekken_backend().to_str() == fresh.to_str()  # second call: from the cache
    texts = tekken_corpus(60, seed=3)
    want = [e.ids for e in tekken.backend_tokenizer.encode_batch(texts, add_special_tokens=False)]
    assert [e.ids for e in fresh.encode_batch(texts, add_special_tokens=False)] == want


def test_llama3_own_template_is_the_shipped_jinja(llama3):
    assert llama3.chat_template == LLAMA3_CHAT_TEMPLATE
