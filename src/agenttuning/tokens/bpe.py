"""A small byte-level BPE tokenizer trained on a run's own data, saved as an ordinary Hugging Face tokenizer folder.

The embedded default pipeline trains a model from scratch on a CPU (:mod:`agenttuning.train.scratch`), so it also
needs a vocabulary of its own: a real model's 32k-128k-entry vocabulary would spend most of a small model's
parameters and compute on the embedding and output layers. :func:`train_bpe_tokenizer` trains one with the Rust
``tokenizers`` library, in seconds for a few megabytes of text, and saves it so that every loading path of the
project accepts it: ``AutoTokenizer.from_pretrained(folder)``,
:func:`agenttuning.tokens.prepare.load_tokenizer_by_name`,
:func:`agenttuning.tokens.masks.render` and the ``hf:`` policy.

What the tokenizer is:

* **byte-level BPE** (GPT-2's byte alphabet, all 256 bytes always in the vocabulary), text split first by Llama 3's
  pre-tokenisation regex (:data:`~agenttuning.tokens.offline.LLAMA3_PATTERN`: words with their leading space,
  numbers in groups of at most three digits, punctuation runs, newline runs). No normaliser, so any text
  round-trips: ``decode(encode(text)) == text`` for every string, newlines, tabs, code and unicode included.
* **special tokens** (:data:`SPECIAL_TOKENS`, ids 0-2): ``<|endoftext|>`` (pad), ``<|im_start|>`` (bos: every
  rendered conversation starts with it) and ``<|im_end|>`` (eos: it ends every turn, so generation stops at the end
  of the assistant's reply). Each is one id, never split, and text that merely spells one is encoded as text by
  :func:`~agenttuning.tokens.masks.render`. Nothing is added by ``tok(text)``: the chat template writes the markup.
* **chat template**: :data:`CHATML_CHAT_TEMPLATE`, the Jinja twin of the shipped structured ``chatml`` template of
  :mod:`agenttuning.tokens.templates` (``<|im_start|>{role}\\n{content}<|im_end|>\\n``, contents verbatim,
  prefix-preserving), so ``render(turns, tok)`` with the tokenizer's own template equals ``render(turns, tok,
  "chatml")``.
* **deterministic**: BPE training has no randomness; the same texts (in any order) and settings give the same
  ``tokenizer.json``, byte for byte, in any process (tested across processes).

Train on what the model will see: :func:`texts_of` yields, for each conversation, the text between the control
tokens of its ChatML rendering (``"user\\n" + content``, ``"assistant\\n" + reply``, ``"\\n"``), which are exactly the
stretches :func:`~agenttuning.tokens.masks.render` tokenises.

Example::

    >>> import tempfile
    >>> from agenttuning.schema import Turn
    >>> conv = [Turn(role="user", content="How many rows?"), Turn(role="assistant", content="42 rows.", loss=True)]
    >>> folder = train_bpe_tokenizer(texts_of([conv] * 50), tempfile.mkdtemp(), vocab_size=300)
    >>> from transformers import AutoTokenizer
    >>> tok = AutoTokenizer.from_pretrained(folder)
    >>> tok.decode(tok("naïve café\\n\\tcode()").input_ids)
    'naïve café\\n\\tcode()'
    >>> tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    [0, 1, 2]
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agenttuning.tokens.offline import LLAMA3_PATTERN, wrap_tokenizer
from agenttuning.tokens.templates import get_template

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

    from agenttuning.data.example import Example
    from agenttuning.schema import Trajectory, Turn

__all__ = [
    "BOS",
    "CHATML_CHAT_TEMPLATE",
    "EOS",
    "PAD",
    "SPECIAL_TOKENS",
    "build_tokenizer",
    "texts_of",
    "train_bpe_tokenizer",
]

PAD, BOS, EOS = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
#: The control tokens, in id order (0, 1, 2): pad, bos (opens every turn), eos (closes every turn).
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS)

#: ChatML as Jinja, the twin of the structured ``chatml`` template (:mod:`agenttuning.tokens.templates`):
#: ``<|im_start|>{role}\n{content}<|im_end|>\n`` per message, contents verbatim; ``add_generation_prompt`` opens an
#: assistant turn. Assistant turns sit in ``{% generation %}`` blocks (``return_assistant_tokens_mask``), covering
#: what :func:`~agenttuning.tokens.masks.render` trains: the reply, ``<|im_end|>`` and the newline after it.
CHATML_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}{{- message['content'] + '<|im_end|>\\n' -}}{%- endgeneration -%}"
    "{%- else -%}"
    "{{- message['content'] + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)

_SPECIAL_SPLIT = re.compile("|".join(map(re.escape, SPECIAL_TOKENS)))


# --------------------------------------------------------------------------------------------------------------
# What to train on


def texts_of(conversations: Iterable[Example | Trajectory | Sequence[Turn]]) -> Iterator[str]:
    """The texts a tokenizer for these conversations should be trained on, lazily.

    Each conversation (an :class:`~agenttuning.data.example.Example`, a :class:`~agenttuning.schema.Trajectory`,
    or a list of :class:`~agenttuning.schema.Turn`) is rendered with the ChatML template and cut at its control
    tokens; the non-empty pieces are yielded: ``"user\\n" + content``, ``"assistant\\n" + reply``, the ``"\\n"``
    between turns. These are the stretches of text the model's inputs are made of, so the merges learnt are the
    ones it will use (role names included), and no merge is spent on the control tokens' spelling.

    >>> from agenttuning.schema import Turn
    >>> list(texts_of([[Turn(role="user", content="Hi"), Turn(role="assistant", content="Hello", loss=True)]]))
    ['user\\nHi', '\\n', 'assistant\\nHello', '\\n']
    """
    from agenttuning.schema import Trajectory, conversation

    chatml = get_template("chatml")
    for conv in conversations:
        if isinstance(conv, Trajectory):
            turns: Sequence[Turn] = conversation(conv)
        else:
            turns = getattr(conv, "turns", conv)
        for piece in _SPECIAL_SPLIT.split(chatml.render_text(turns)):
            if piece:
                yield piece


# --------------------------------------------------------------------------------------------------------------
# Training


def train_bpe_tokenizer(
    texts: Iterable[str],
    out_dir: str | os.PathLike[str],
    *,
    vocab_size: int = 4096,
    min_frequency: int = 2,
    model_max_length: int | None = None,
    overwrite: bool = True,
) -> Path:
    """Train a byte-level BPE tokenizer on ``texts`` and save it to ``out_dir``; returns ``out_dir``.

    ``vocab_size`` counts everything: the 3 control tokens, the 256 bytes and the merges (fewer when the texts
    have fewer pairs seen ``min_frequency`` times). ``model_max_length`` goes to the tokenizer's config (None: no
    limit; :func:`~agenttuning.train.scratch.build_scratch_model` sets it to the model's context). The folder
    (``tokenizer.json``, ``tokenizer_config.json``, ``chat_template.jinja``) is written beside ``out_dir`` and
    renamed into place once complete; an existing ``out_dir`` is replaced, or with ``overwrite=False`` refused
    (``FileExistsError``). No randomness: same texts and settings, same ``tokenizer.json`` bytes.
    """
    tok = build_tokenizer(texts, vocab_size=vocab_size, min_frequency=min_frequency,
                          model_max_length=model_max_length)  # fmt: skip
    return save_atomic(out_dir, tok.save_pretrained, overwrite=overwrite)


def build_tokenizer(
    texts: Iterable[str], *, vocab_size: int = 4096, min_frequency: int = 2, model_max_length: int | None = None
) -> PreTrainedTokenizerFast:
    """Train the tokenizer of :func:`train_bpe_tokenizer` in memory (a ``PreTrainedTokenizerFast``, not saved)."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )

    if vocab_size < len(SPECIAL_TOKENS) + 256:
        raise ValueError(f"vocab_size={vocab_size} leaves no room for the 256 bytes and {len(SPECIAL_TOKENS)} "
                         "control tokens of a byte-level BPE")  # fmt: skip
    if min_frequency < 1:
        raise ValueError("min_frequency must be >= 1")
    backend = Tokenizer(models.BPE(unk_token=None, byte_fallback=False, fuse_unk=False))
    backend.normalizer = None  # lossless: the text is never changed before it is split into bytes
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])  # fmt: skip
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)  # offsets of the text as written
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    ids = [backend.token_to_id(t) for t in SPECIAL_TOKENS]
    if ids != list(range(len(SPECIAL_TOKENS))):  # pragma: no cover - a tokenizers change would show here
        raise RuntimeError(f"control tokens got ids {ids}, expected 0..{len(SPECIAL_TOKENS) - 1}")
    return wrap_tokenizer(backend, bos=BOS, eos=EOS, pad=PAD, chat_template=CHATML_CHAT_TEMPLATE,
                          model_max_length=model_max_length)  # fmt: skip


def save_atomic(out_dir: str | os.PathLike[str], write: Any, *, overwrite: bool = True) -> Path:
    """Call ``write(tmp_folder)`` on a fresh folder beside ``out_dir``, then rename it to ``out_dir``.

    A crash never leaves a half-written folder at ``out_dir``; an existing ``out_dir`` is replaced (or refused
    with ``overwrite=False``).
    """
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists (pass overwrite=True to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}-", dir=out.parent))
    os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide the folder from other users
    try:
        write(str(tmp))
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
