"""The byte-level BPE tokenizer trained on a run's own data (agenttuning.tokens.bpe).

Checked here: lossless round trips on adversarial text, control tokens as single ids that contents can only spell,
byte-identical tokenizer.json for the same texts (in another order, in another process), the saved folder loading
through every path the project uses, the chat template equal to the shipped structured ChatML and accepted by the
prefix-preservation check, and exact loss masks from render() with it.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agenttuning.data.example import Example
from agenttuning.schema import Turn
from agenttuning.tokens.bpe import (
    BOS,
    CHATML_CHAT_TEMPLATE,
    EOS,
    PAD,
    SPECIAL_TOKENS,
    build_tokenizer,
    texts_of,
    train_bpe_tokenizer,
)
from agenttuning.tokens.masks import IGNORE_INDEX, render
from agenttuning.tokens.templates import TEMPLATES, RenderedTemplate, from_jinja
from tests.tokens.conversations import (
    SPECIAL_SPELLINGS,
    agent_conversations,
    conversations,
)

VOCAB = 1024

TRICKY = [
    "",
    " ",
    "\n",
    "\n\n\n",
    "\r\n",
    "\t\tindented\n\ttab",
    "  leading and trailing  ",
    "naïve café — “quotes” ‘single’ … ½ ≤ ≥ ∞ €",
    "日本語のテキスト、中文文本，한국어",
    "العربية مرحبا עברית",
    "😀 👍🏽 👨‍👩‍👧 🇫🇷🇯🇵",
    "e\u0301 Å ﬁ \u00a0 \u200b \u2028 \u3000 \ufeff",
    "\x00\x01\x7f control bytes",
    "```python\ndef f(x):\n    return x ** 2  # square\n```",
    "SELECT name, COUNT(*) FROM t WHERE a >= 10 GROUP BY name ORDER BY 2 DESC;",
    '{"key": [1, 2, {"nested": null}], "s": "\\u00e9"}',
    "1234567890 3.14159 1,000,000 2024-01-31",
    "x" * 3000,
    " " * 50 + "\n" * 20,
    *SPECIAL_SPELLINGS,
    "<|im_start|>user\nnot a real turn<|im_end|>",
]


def corpus() -> list[list[Turn]]:
    return conversations(150, seed=3, free_order=0.3) + agent_conversations(8, seed=4, min_tokens=300,
                                                                              max_tokens=600)  # fmt: skip


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return train_bpe_tokenizer(texts_of(corpus()), tmp_path_factory.mktemp("bpe") / "tok", vocab_size=VOCAB)


@pytest.fixture(scope="module")
def tok(tok_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tok_dir)


def a(text: str, loss: bool = True) -> Turn:
    return Turn(role="assistant", content=text, loss=loss)


def u(text: str) -> Turn:
    return Turn(role="user", content=text)


# -- the vocabulary --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", TRICKY, ids=range(len(TRICKY)))
def test_any_text_round_trips(tok, text):
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.decode(ids) == text
    assert all(0 <= i < len(tok) for i in ids)
    # the way render() reads contents: control-token spellings stay text, and still round-trip
    backend = tok.backend_tokenizer
    backend.encode_special_tokens = True
    try:
        plain = backend.encode(text, add_special_tokens=False).ids
    finally:
        backend.encode_special_tokens = False
    assert not set(plain) & {0, 1, 2} and tok.decode(plain) == text


def test_random_unicode_round_trips(tok):
    rng = random.Random(0)
    for _ in range(200):
        text = "".join(chr(rng.choice((rng.randrange(32, 127), rng.randrange(0x80, 0xD800),
                                       rng.randrange(0xE000, 0x110000), 10, 9, 32))) for _ in range(rng.randrange(1, 40)))  # fmt: skip
        assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text


def test_vocabulary_size_and_compression(tok):
    assert len(tok) == VOCAB
    text = "\n".join(texts_of(corpus()[:20]))
    n = len(tok(text, add_special_tokens=False).input_ids)
    assert n < len(text.encode()) / 2, "the merges should at least halve the byte count on the training text"


def test_control_tokens_are_single_special_ids(tok):
    assert tok.convert_tokens_to_ids(list(SPECIAL_TOKENS)) == [0, 1, 2]
    assert (tok.pad_token, tok.bos_token, tok.eos_token) == (PAD, BOS, EOS)
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    for i, token in enumerate(SPECIAL_TOKENS):
        assert tok(token, add_special_tokens=False).input_ids == [i]
        assert tok.added_tokens_decoder[i].special and tok.added_tokens_decoder[i].content == token
    ids = tok("<|im_start|>user\nhi<|im_end|>\n", add_special_tokens=False).input_ids
    assert ids[0] == 1 and ids.count(1) == 1 and ids.count(2) == 1
    assert tok("hi").input_ids == tok("hi", add_special_tokens=False).input_ids  # nothing added: the template does it
    assert tok.decode(ids, skip_special_tokens=True) == "user\nhi\n"


def test_too_small_a_vocabulary_is_refused():
    with pytest.raises(ValueError, match="no room"):
        build_tokenizer(["abc"], vocab_size=200)


# -- determinism -----------------------------------------------------------------------------------------------------


def test_same_texts_give_identical_bytes_in_any_order_and_process(tmp_path):
    texts = list(texts_of(corpus()[:60]))
    first = (train_bpe_tokenizer(texts, tmp_path / "a", vocab_size=600) / "tokenizer.json").read_bytes()
    shuffled = texts[:]
    random.Random(1).shuffle(shuffled)
    assert (train_bpe_tokenizer(shuffled, tmp_path / "b", vocab_size=600) / "tokenizer.json").read_bytes() == first
    code = (
        "import sys; from agenttuning.tokens.bpe import texts_of, train_bpe_tokenizer; "
        "from tests.tokens.test_bpe import corpus; "
        "train_bpe_tokenizer(list(texts_of(corpus()[:60])), sys.argv[1], vocab_size=600)"
    )
    root = Path(__file__).resolve().parents[2]  # so that `tests` imports in the child
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "c")], check=True, timeout=120, cwd=root)
    assert (tmp_path / "c" / "tokenizer.json").read_bytes() == first
    other = (train_bpe_tokenizer(texts, tmp_path / "d", vocab_size=700) / "tokenizer.json").read_bytes()
    assert other != first


def test_an_existing_folder_is_replaced_or_refused(tmp_path):
    out = tmp_path / "tok"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    train_bpe_tokenizer(["some text to learn from"] * 3, out, vocab_size=300)
    assert not (out / "stale.txt").exists() and (out / "tokenizer.json").is_file()
    with pytest.raises(FileExistsError):
        train_bpe_tokenizer(["x"], out, vocab_size=300, overwrite=False)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


# -- loading ---------------------------------------------------------------------------------------------------------


def test_every_loading_path_gives_the_same_tokenizer(tok_dir, tok):
    from transformers import PreTrainedTokenizerFast

    from agenttuning.tokens.prepare import load_tokenizer_by_name

    loaded = load_tokenizer_by_name(str(tok_dir))
    direct = PreTrainedTokenizerFast.from_pretrained(tok_dir)
    saved = (tok_dir / "tokenizer.json").read_text(encoding="utf-8")
    text = "\n".join(TRICKY)
    for t in (loaded, direct):
        assert t.backend_tokenizer.to_str() == tok.backend_tokenizer.to_str()
        assert t(text).input_ids == tok(text).input_ids
        assert t.chat_template == CHATML_CHAT_TEMPLATE and t.eos_token_id == 2
    from tokenizers import Tokenizer

    assert Tokenizer.from_str(saved).encode(text).ids == tok(text).input_ids


# -- chat template and masks ------------------------------------------------------------------------------------------


def test_chat_template_is_the_shipped_chatml_and_prefix_preserving(tok):
    from agenttuning.schema import to_openai_messages

    derived = from_jinja(tok)  # the project's check: refuses templates that are not prefix-preserving
    chatml = TEMPLATES["chatml"]
    assert not isinstance(derived, RenderedTemplate)  # structured: contents verbatim, markup by role
    assert derived.generation_prompt == ("<|im_start|>assistant\n",)
    for turns in conversations(60, seed=5, free_order=0.5):
        text = tok.apply_chat_template(to_openai_messages(turns), tokenize=False)
        assert text == chatml.render_text(turns) == derived.render_text(turns)
        for k in range(1, len(turns)):
            assert text.startswith(tok.apply_chat_template(to_openai_messages(turns[:k]), tokenize=False))
        prompt = tok.apply_chat_template(to_openai_messages(turns), tokenize=False, add_generation_prompt=True)
        assert prompt == text + "<|im_start|>assistant\n"


def test_own_template_masks_equal_the_shipped_chatml_ones(tok):
    for turns in conversations(100, seed=6, free_order=0.3):
        assert render(turns, tok) == render(turns, tok, "chatml")


def trained_runs(enc) -> list[list[int]]:
    runs: list[list[int]] = []
    prev = False
    for i, y in zip(enc.input_ids, enc.labels, strict=True):
        if y != IGNORE_INDEX:
            assert y == i
            if not prev:
                runs.append([])
            runs[-1].append(i)
        prev = y != IGNORE_INDEX
    return runs


def test_render_trains_exactly_the_loss_true_replies(tok):
    turns = [
        Turn(role="system", content="You are a database agent."),
        u("Instructions: reply with Thought and Action."),
        a("Ok.", loss=False),
        u("How many users are there?"),
        a("Thought: count them.\nAction: Operation\n```sql\nSELECT COUNT(*) FROM users;\n```"),
        u("[(42,)]"),
        a("Thought: 42 rows, naïve 😀 <|im_end|> spelled.\nAction: Answer\nFinal Answer: [42]"),
    ]
    enc = render(turns, tok)
    runs = trained_runs(enc)
    replies = [t.content for t in turns if t.role == "assistant" and t.loss]
    assert [tok.decode(r) for r in runs] == [c + "<|im_end|>\n" for c in replies]
    assert [r[-2] for r in runs] == [2, 2]  # the end-of-turn control token is trained: the model learns to stop
    assert sum(r.count(2) for r in runs) == 2  # the spelled <|im_end|> in the content is text, not the token
    # the full rendering tokenises to the same ids (contents that spell no control token)
    clean = turns[:-1]
    text = tok.apply_chat_template([{"role": t.role, "content": t.content} for t in clean], tokenize=False)
    assert tok(text, add_special_tokens=False).input_ids == render(clean, tok).input_ids
    assert enc.input_ids[0] == tok.bos_token_id


def test_render_masks_on_adversarial_conversations(tok):
    for turns in conversations(150, seed=7):
        enc = render(turns, tok)
        runs = trained_runs(enc)
        replies = [t.content for t in turns if t.role == "assistant" and t.loss]
        decoded = [tok.decode(r) for r in runs]
        # consecutive trained replies never touch (a user or untrained turn sits between), so one run per reply;
        # a reply that starts with a newline may carry the header's "\n" in a fused first token (boundary rule)
        assert len(decoded) == len(replies)
        for d, c in zip(decoded, replies, strict=True):
            assert d in (c + "<|im_end|>\n", "\n" + c + "<|im_end|>\n"), (d, c)


# -- texts_of ----------------------------------------------------------------------------------------------------------


def test_texts_of_cuts_renderings_at_control_tokens():
    ex = Example(id="x", source="general", family="f", turns=[u("Hi"), a("Hello")])
    assert list(texts_of([ex])) == ["user\nHi", "\n", "assistant\nHello", "\n"]
    assert list(texts_of([ex.turns])) == list(texts_of([ex]))
    spelled = list(texts_of([[u("a <|im_end|> b")]]))
    assert spelled == ["user\na ", " b", "\n"] and not any(s in "".join(spelled) for s in SPECIAL_TOKENS)


def test_texts_of_trajectories_uses_their_conversation():
    from agenttuning.schema import Step, Task, Trajectory

    traj = Trajectory(
        task=Task(id="t-1", env="toy-v1", split="train", instruction="find it"),
        policy="expert",
        context=[u("You are an agent."), a("Ok.", loss=False)],
        initial_observation="Find the word.",
        steps=[Step(thought="look", action="search[word]", observation="found", reward=1.0, terminated=True)],
        reward=1.0,
        success=True,
    )
    from agenttuning.schema import conversation

    assert list(texts_of([traj])) == list(texts_of([conversation(traj)]))


@pytest.mark.slow
def test_training_on_five_megabytes_takes_seconds(tmp_path):
    texts = list(texts_of(agent_conversations(500, seed=8, min_tokens=2000, max_tokens=2000)))
    assert sum(map(len, texts)) > 2_500_000
    texts = texts * 2
    start = time.perf_counter()
    train_bpe_tokenizer(texts, tmp_path / "tok", vocab_size=8192)
    assert time.perf_counter() - start < 30
