"""Real tokenizers built offline from files that ship inside PyPI wheels: no Hugging Face hub, no download.

* :func:`llama3_tokenizer`: Meta's Llama 3 tokenizer (128,000 BPE ranks + 256 special tokens = 128,256 ids), from
  the tiktoken BPE file in the ``llama-models`` wheel, converted with transformers' ``TikTokenConverter``.
* :func:`mistral_tokenizer`: Mistral's instruct v3 SentencePiece tokenizer (32,768 ids), from the
  ``mistral-common`` wheel, rebuilt as a byte-fallback BPE in ``tokenizers``. Its small vocabulary makes it the
  cheap real tokenizer for training tests.
* :func:`tekken_tokenizer`: Mistral's Tekken tokenizer (Mistral NeMo; 131,072 ids, the first 1,000 of them control
  tokens), from ``tekken_240718.json`` in the ``mistral-common`` wheel, loaded by ``AutoTokenizer`` (transformers
  reads ``tekken.json`` natively) and cached converted under ``$AGENTTUNING_CACHE``.

Both return a ``PreTrainedTokenizerFast`` with a chat template (:mod:`.chat_templates`), are built once per process
(``lru_cache``: treat the returned object as read-only, or ``copy.deepcopy`` it), and can be written to a folder
that ``AutoTokenizer.from_pretrained`` reloads. Tests check them token-for-token against the reference
implementations (``tiktoken`` and ``sentencepiece``, and the vendors' own chat encoders).

Example (needs ``pip install llama-models``)::

    >>> from agenttuning.tokens.offline import llama3_tokenizer
    >>> tok = llama3_tokenizer()
    >>> tok.convert_tokens_to_ids("<|eot_id|>"), len(tok)
    (128009, 128256)
"""

from __future__ import annotations

import base64
import hashlib
import os
import tempfile
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agenttuning.tokens.chat_templates import LLAMA3_CHAT_TEMPLATE, MISTRAL_CHAT_TEMPLATE, TEKKEN_CHAT_TEMPLATE

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

__all__ = [
    "LLAMA3_PATTERN",
    "LLAMA3_SPECIAL_TOKENS",
    "llama3_bpe_path",
    "llama3_tokenizer",
    "load_tiktoken_ranks",
    "mistral_sentencepiece_path",
    "mistral_tokenizer",
    "save_tokenizer",
    "tekken_path",
    "tekken_tokenizer",
    "wrap_tokenizer",
]

#: Llama 3's pre-tokenisation regex (the tiktoken ``pat_str`` Meta ships with the model).
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)

_LLAMA3_NAMED_SPECIALS = (
    "<|begin_of_text|>",  # 128000
    "<|end_of_text|>",  # 128001
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",  # 128004
    "<|step_id|>",
    "<|start_header_id|>",  # 128006
    "<|end_header_id|>",  # 128007
    "<|eom_id|>",  # 128008, end of message (tool call follows)
    "<|eot_id|>",  # 128009, end of turn
    "<|python_tag|>",
    "<|image|>",
)
_LLAMA3_NUM_SPECIALS = 256

#: The 256 special tokens that follow the 128,000 BPE ranks, in id order (the names of the llama-models wheel,
#: i.e. Llama 3.1/3.2; Llama 3.0 called 128004, 128005, 128008, 128010 and 128011 "reserved" tokens).
LLAMA3_SPECIAL_TOKENS: tuple[str, ...] = _LLAMA3_NAMED_SPECIALS + tuple(
    f"<|reserved_special_token_{i}|>" for i in range(2, 2 + _LLAMA3_NUM_SPECIALS - len(_LLAMA3_NAMED_SPECIALS))
)

_MISTRAL_V3_FILE = "mistral_instruct_tokenizer_240323.model.v3"
_TEKKEN_FILE = "tekken_240718.json"


# --------------------------------------------------------------------------------------------------------------
# Locating the files inside the wheels


def llama3_bpe_path() -> Path:
    """Path of Llama 3's tiktoken BPE file inside the ``llama-models`` wheel."""
    return _wheel_file("llama_models", "llama3/tokenizer.model", pip_name="llama-models")


def mistral_sentencepiece_path() -> Path:
    """Path of Mistral's instruct v3 SentencePiece model inside the ``mistral-common`` wheel."""
    return _wheel_file("mistral_common", f"data/{_MISTRAL_V3_FILE}", pip_name="mistral-common")


def tekken_path() -> Path:
    """Path of Mistral's Tekken vocabulary (``tekken_240718.json``, Mistral NeMo's) inside the ``mistral-common`` wheel."""
    return _wheel_file("mistral_common", f"data/{_TEKKEN_FILE}", pip_name="mistral-common")


def _wheel_file(package: str, relative: str, *, pip_name: str) -> Path:
    try:
        root = resources.files(package)
    except ModuleNotFoundError as e:
        raise ImportError(
            f"the offline tokenizer needs the '{pip_name}' package, which ships the tokenizer file: "
            f"pip install {pip_name}  (or: pip install 'agenttuning[test]')"
        ) from e
    path = Path(str(root.joinpath(relative)))
    if not path.is_file():
        raise FileNotFoundError(f"{relative} is missing from the installed '{pip_name}' package ({path})")
    return path


# --------------------------------------------------------------------------------------------------------------
# Llama 3


def load_tiktoken_ranks(path: str | Path) -> dict[bytes, int]:
    """Read a tiktoken BPE file (one ``base64(token) rank`` per line) into ``{token bytes: rank}``.

    Same result as ``tiktoken.load.load_tiktoken_bpe`` for a local file, without tiktoken's download cache.
    """
    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(Path(path).read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError as e:
            raise ValueError(f"{path}:{lineno}: not a 'base64 rank' line: {line[:80]!r}") from e
    return ranks


@lru_cache(maxsize=1)
def llama3_tokenizer() -> PreTrainedTokenizerFast:
    """Meta's Llama 3 tokenizer as a transformers fast tokenizer, built offline.

    Byte-level BPE over the 128,000 ranks of ``llama_models/llama3/tokenizer.model`` with Llama 3's regex, then
    the 256 special tokens (ids 128000-128255, :data:`LLAMA3_SPECIAL_TOKENS`). As in Meta's instruct checkpoints on
    the hub: bos ``<|begin_of_text|>`` is added by ``tok(text)`` (not with ``add_special_tokens=False``), eos is the
    end-of-turn token ``<|eot_id|>``; pad is ``<|finetune_right_pad_id|>``. Decoding is lossless
    (``clean_up_tokenization_spaces=False``). Chat template: :data:`~.chat_templates.LLAMA3_CHAT_TEMPLATE`.
    """
    from transformers.convert_slow_tokenizer import TikTokenConverter

    class _Converter(TikTokenConverter):
        # the stock loader goes through tiktoken's download cache; a local file needs none of it
        load_tiktoken_bpe = staticmethod(load_tiktoken_ranks)

    path = llama3_bpe_path()
    backend = _Converter(
        vocab_file=str(path), pattern=LLAMA3_PATTERN, extra_special_tokens=list(LLAMA3_SPECIAL_TOKENS)
    ).converted()
    return _byte_level_tokenizer(
        backend, bos="<|begin_of_text|>", eos="<|eot_id|>", pad="<|finetune_right_pad_id|>", unk=None,
        chat_template=LLAMA3_CHAT_TEMPLATE, size=128256, what="Llama 3",
    )


def _byte_level_tokenizer(
    backend: Any, *, bos: str, eos: str, pad: str, unk: str | None, chat_template: str, size: int, what: str
) -> PreTrainedTokenizerFast:
    """Wrap a byte-level BPE backend as Hugging Face does for these models: bos added by ``tok(text)``, lossless
    decoding, the chat template attached; the vocabulary size is checked."""
    from tokenizers import processors

    backend.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{bos}:0 $A:0",
                pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                special_tokens=[(bos, backend.token_to_id(bos))],
            ),
        ]
    )
    tok = wrap_tokenizer(backend, bos=bos, eos=eos, pad=pad, unk=unk, chat_template=chat_template,
                         model_max_length=131072)  # fmt: skip
    _check_size(tok, size, what)
    return tok


def wrap_tokenizer(
    backend: Tokenizer,
    *,
    bos: str,
    eos: str,
    pad: str | None = None,
    unk: str | None = None,
    chat_template: str,
    model_max_length: int | None = None,
) -> PreTrainedTokenizerFast:
    """A ``tokenizers`` backend as the ``PreTrainedTokenizerFast`` every tokenizer this package builds is: its
    special tokens named, its chat template attached, decoding left as it is (``clean_up_tokenization_spaces``
    off, so decoding is lossless) and only ``input_ids`` / ``attention_mask`` as model inputs."""
    from transformers import PreTrainedTokenizerFast

    named = {"bos_token": bos, "eos_token": eos, "pad_token": pad, "unk_token": unk,
             "model_max_length": model_max_length}  # fmt: skip
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, chat_template=chat_template, clean_up_tokenization_spaces=False,
        model_input_names=["input_ids", "attention_mask"], **{k: v for k, v in named.items() if v is not None},
    )  # fmt: skip


# --------------------------------------------------------------------------------------------------------------
# Mistral (SentencePiece v3)


@lru_cache(maxsize=1)
def mistral_tokenizer() -> PreTrainedTokenizerFast:
    """Mistral's instruct v3 tokenizer (32,768 ids) as a transformers fast tokenizer, built offline.

    The SentencePiece model (BPE, byte fallback, identity normalisation, a dummy ``▁`` prefix) is read with
    ``sentencepiece`` (no protobuf needed) and rebuilt as a ``tokenizers`` BPE whose merges are ranked by the
    SentencePiece piece scores, so it encodes as ``SentencePieceProcessor.encode`` does. Each stretch of text
    between special tokens is encoded on its own with the dummy ``▁`` prefix, as ``mistral-common`` encodes each
    message: ``[INST]hi`` gives ``[INST]`` then ``▁hi`` (so the chat template puts no space after ``[INST]``,
    ``[/INST]``). The 750 control tokens (``<s>``, ``</s>``, ``[INST]``, ``[/INST]``, tool tokens, ...) are
    special. bos ``<s>`` is added by ``tok(text)``; eos ``</s>``; no pad token (the model has none: set one if
    you pad). Chat template: :data:`~.chat_templates.MISTRAL_CHAT_TEMPLATE`.
    """
    try:
        import sentencepiece as spm
    except ModuleNotFoundError as e:
        raise ImportError("the Mistral tokenizer is read with sentencepiece: pip install sentencepiece") from e
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE

    sp = spm.SentencePieceProcessor(model_file=str(mistral_sentencepiece_path()))
    n = sp.get_piece_size()
    pieces = [sp.id_to_piece(i) for i in range(n)]
    vocab = {piece: i for i, piece in enumerate(pieces)}
    special = [i for i in range(n) if sp.is_control(i) or sp.is_unknown(i)]
    backend = Tokenizer(
        BPE(
            vocab=vocab,
            merges=_spm_merges(sp),
            unk_token=sp.id_to_piece(sp.unk_id()),
            fuse_unk=True,
            byte_fallback=True,
            dropout=None,
        )
    )
    # SentencePiece's dummy prefix, on every stretch of text between special tokens: exactly what mistral-common
    # does when it encodes each message's text on its own. (A Metaspace pre-tokenizer would skip the prefix on
    # text that starts with a space, where SentencePiece gives '▁▁'.) No pre-tokenizer: like SentencePiece, BPE
    # runs over the whole stretch, so runs of spaces become the '▁▁..' pieces.
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.pre_tokenizer = None
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    backend.add_special_tokens([AddedToken(pieces[i], special=True, normalized=False) for i in special])
    bos, eos = pieces[sp.bos_id()], pieces[sp.eos_id()]
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, sp.bos_id())]
    )
    tok = wrap_tokenizer(backend, bos=bos, eos=eos, unk=pieces[sp.unk_id()], chat_template=MISTRAL_CHAT_TEMPLATE,
                         model_max_length=32768)  # fmt: skip
    _check_size(tok, n, "Mistral v3")
    return tok


def _spm_merges(sp) -> list[tuple[str, str]]:  # noqa: ANN001 - a SentencePieceProcessor
    """BPE merges reproducing a SentencePiece BPE model: every split of a piece into two pieces, ranked by score.

    SentencePiece merges, at each step, the adjacent pair whose concatenation is the highest-scoring piece
    (leftmost on ties); a ``tokenizers`` BPE merges the lowest-ranked pair. Ranking each piece's splits by the
    piece's score (descending, id on ties) makes the two agree. Control, unknown and byte pieces never merge.
    """
    n = sp.get_piece_size()
    normal = {
        sp.id_to_piece(i): i
        for i in range(n)
        if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i) or sp.is_unused(i))
    }
    ranked = []
    for piece, i in normal.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in normal and right in normal:
                ranked.append((-sp.get_score(i), i, normal[left], normal[right], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


# --------------------------------------------------------------------------------------------------------------
# Mistral Tekken (tiktoken-style BPE, Mistral NeMo)


@lru_cache(maxsize=1)
def tekken_tokenizer() -> PreTrainedTokenizerFast:
    """Mistral's Tekken tokenizer (131,072 ids) as a transformers fast tokenizer, built offline.

    ``tekken_240718.json`` (:func:`tekken_path`) is copied as ``tekken.json`` into
    ``$AGENTTUNING_CACHE/tokenizers/tekken-240718/`` (default ``~/.cache/agenttuning``), the layout
    ``AutoTokenizer.from_pretrained(folder)`` reads natively: a byte-level BPE over the 130,072 ranks of the
    file after 1,000 control tokens (``<unk>`` 0, ``<s>`` 1, ``</s>`` 2, ``[INST]`` 3, ``[/INST]`` 4, ...,
    ``<pad>`` 11, ``[SYSTEM_PROMPT]`` 17, ...; all special), split by Tekken's own regex. That conversion takes
    seconds, so its result is kept beside the file (keyed by the file's hash and the transformers/tokenizers
    versions) and later processes load it directly.

    Added here, as on Mistral's hub checkpoints: bos ``<s>`` added by ``tok(text)`` (not with
    ``add_special_tokens=False``), eos ``</s>``, unk ``<unk>``, pad ``<pad>``; lossless decoding; the chat template
    :data:`~.chat_templates.TEKKEN_CHAT_TEMPLATE` (``<s>[INST]{user}[/INST]{assistant}</s>``, as mistral-common's
    v3 Tekken encoder renders it: no spaces, Tekken has no SentencePiece dummy prefix). Tests check the ids against
    mistral-common's ``Tekkenizer`` and its chat encoder.
    """
    return _byte_level_tokenizer(
        _tekken_backend(), bos="<s>", eos="</s>", pad="<pad>", unk="<unk>", chat_template=TEKKEN_CHAT_TEMPLATE,
        size=131072, what="Tekken",
    )


def _tekken_backend() -> Tokenizer:
    """The ``tokenizers`` backend of Tekken: from the cache when a matching conversion is there, else converted."""
    import tokenizers
    import transformers
    from tokenizers import Tokenizer

    source = tekken_path()
    data = source.read_bytes()
    folder = _cache_dir() / "tokenizers" / "tekken-240718"
    key = hashlib.sha256(
        data + f"|transformers={transformers.__version__}|tokenizers={tokenizers.__version__}".encode()
    ).hexdigest()[:16]
    converted = folder / f"converted-{key}.json"
    if converted.is_file():
        try:
            return Tokenizer.from_file(str(converted))
        except Exception:  # noqa: BLE001 - a damaged cache file is rebuilt below
            pass
    from transformers import AutoTokenizer

    try:
        folder.mkdir(parents=True, exist_ok=True)
        _write_atomic(folder / "tekken.json", data)
        loaded = AutoTokenizer.from_pretrained(str(folder))
        backend = loaded.backend_tokenizer
        _write_atomic(converted, backend.to_str().encode())
    except OSError:  # a read-only cache: convert from a temporary folder, keep nothing
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "tekken.json").write_bytes(data)
            backend = AutoTokenizer.from_pretrained(tmp).backend_tokenizer
    return backend


def _cache_dir() -> Path:
    return Path(os.environ.get("AGENTTUNING_CACHE") or Path.home() / ".cache" / "agenttuning")


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (concurrent writers never half-write)."""
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would keep a shared cache from other users
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# --------------------------------------------------------------------------------------------------------------
# Saving


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, folder: str | Path) -> Path:
    """Write ``tokenizer`` to ``folder`` (``tokenizer.json``, its config, the chat template); returns ``folder``.

    ``AutoTokenizer.from_pretrained(folder)`` then loads the same tokenizer, offline.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(folder))
    return folder


def _check_size(tok: PreTrainedTokenizerFast, expected: int, what: str) -> None:
    if len(tok) != expected:  # a converter change upstream would show here, not as silently shifted ids
        raise RuntimeError(f"the {what} tokenizer built with {len(tok)} ids, expected {expected}")
