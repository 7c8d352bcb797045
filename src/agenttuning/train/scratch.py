"""A small Llama built from scratch (random init) around a tokenizer, saved as an ordinary Hugging Face model folder.

The embedded default pipeline cannot download a pretrained model, so it trains one from nothing: a tokenizer
trained on the run's own data (:func:`agenttuning.tokens.bpe.train_bpe_tokenizer`), then
:func:`build_scratch_model` makes a ``LlamaForCausalLM`` sized to it and saves it beside a copy of the tokenizer.
The folder is a complete model directory: ``model:`` of a :class:`~agenttuning.train.config.TrainConfig`,
``hf:DIR`` for the policies, ``AutoModelForCausalLM`` / ``AutoTokenizer.from_pretrained``.

The model is Llama's architecture as transformers implements it (RMSNorm, RoPE, SwiGLU, no biases), with

* the vocabulary exactly ``len(tokenizer)`` and the tokenizer's bos/eos/pad ids (in ``config.json`` and in
  ``generation_config.json``, so ``generate`` stops at the end of a turn and pads with the pad token);
* tied input and output embeddings (the embedding is a large share of a small model: untying would double it);
* a seeded, deterministic init (transformers' normal(0, 0.02) init under ``torch.manual_seed(seed)``, the global
  RNG left as it was): same seed, same weights, bit for bit;
* float32 weights in ``model.safetensors``.

Presets (:data:`PRESETS`; any field can be overridden: ``build_scratch_model(..., num_hidden_layers=4)``), with
their parameter counts (:func:`param_count`, embeddings counted once) at a 4,096- and an 8,192-token vocabulary,
and their training throughput through :func:`agenttuning.train.train` (float32, ``cpu=true``, batch 16, eta 0.2,
db-v1 trajectories + stdlib general examples) on an otherwise idle 2-core AMD EPYC (Zen 3) at ``max_len`` 1,280
(1,536 in brackets):

========  ======  ======  =====  =====  ===========  ===========  ================
preset    hidden  layers  heads  mlp    params @4k   params @8k   tokens/s (2 CPU)
========  ======  ======  =====  =====  ===========  ===========  ================
tiny      128     2       4      384    0.95 M       1.48 M       7,200 (5,800)
small     256     6       4      768    6.16 M       7.21 M       1,390 (1,150)
base      512     8       8      1408   27.8 M       29.9 M       ~200 (a GPU's)
========  ======  ======  =====  =====  ===========  ===========  ================

``tiny`` is what a CPU can train in minutes (the embedded pipeline's model, and the tests'): at a fixed budget of
about five minutes on two cores it reaches a far lower held-out agent loss than ``small``, which processes five
times fewer tokens per second and so gets too few optimizer steps (``docs/train.md``, "Training from scratch"). ``small`` is for runs of an hour or
more; ``base`` is a starting point on a GPU.

Example::

    >>> import tempfile
    >>> from agenttuning.tokens.bpe import texts_of, train_bpe_tokenizer
    >>> from agenttuning.schema import Turn
    >>> conv = [Turn(role="user", content="How many rows?"), Turn(role="assistant", content="42 rows.", loss=True)]
    >>> tok_dir = train_bpe_tokenizer(texts_of([conv] * 20), tempfile.mkdtemp(), vocab_size=280)
    >>> model_dir = build_scratch_model(tok_dir, tempfile.mkdtemp(), preset="tiny", seed=0)
    >>> from transformers import AutoModelForCausalLM
    >>> model = AutoModelForCausalLM.from_pretrained(model_dir)
    >>> model.num_parameters() == param_count("tiny", len(model.get_input_embeddings().weight))
    True
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agenttuning.tokens.bpe import save_atomic

if TYPE_CHECKING:
    from transformers import LlamaConfig

__all__ = ["DEFAULT_MAX_POSITIONS", "PRESETS", "build_scratch_model", "param_count", "scratch_config"]

#: Context length of a scratch model unless told otherwise (RoPE has no parameters: a longer one costs nothing).
DEFAULT_MAX_POSITIONS = 4096

#: Architecture presets: LlamaConfig fields. Attention is multi-head (as many key/value heads as query heads).
PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 384},
    "small": {"hidden_size": 256, "num_hidden_layers": 6, "num_attention_heads": 4, "intermediate_size": 768},
    "base": {"hidden_size": 512, "num_hidden_layers": 8, "num_attention_heads": 8, "intermediate_size": 1408},
}


def _arch(preset: str, overrides: dict[str, Any]) -> dict[str, Any]:
    try:
        arch: dict[str, Any] = dict(PRESETS[preset])
    except KeyError:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}") from None
    arch.update(overrides)
    arch.setdefault("num_key_value_heads", arch["num_attention_heads"])
    return arch


def scratch_config(
    preset: str = "tiny",
    *,
    vocab_size: int,
    bos_token_id: int | None,
    eos_token_id: int | None,
    pad_token_id: int | None,
    max_position_embeddings: int = DEFAULT_MAX_POSITIONS,
    **overrides: Any,
) -> LlamaConfig:
    """The ``LlamaConfig`` of a preset (plus ``overrides``, any LlamaConfig field) for a vocabulary and its ids."""
    from transformers import LlamaConfig

    arch = _arch(preset, overrides)
    if arch["hidden_size"] % arch["num_attention_heads"]:
        raise ValueError(f"hidden_size {arch['hidden_size']} is not a multiple of num_attention_heads "
                         f"{arch['num_attention_heads']}")  # fmt: skip
    arch.setdefault("tie_word_embeddings", True)
    return LlamaConfig(
        vocab_size=vocab_size,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        dtype="float32",
        **arch,
    )


def param_count(preset: str | dict[str, Any], vocab_size: int, **overrides: Any) -> int:
    """Parameters of a preset's model for a vocabulary (tied embeddings counted once), without building it.

    >>> param_count("small", 4096), param_count("tiny", 4096)
    (6163712, 950912)
    """
    arch = _arch(preset, overrides) if isinstance(preset, str) else {**preset, **overrides}
    h, n_layers, i = arch["hidden_size"], arch["num_hidden_layers"], arch["intermediate_size"]
    heads = arch["num_attention_heads"]
    kv = arch.get("num_key_value_heads") or heads
    head_dim = arch.get("head_dim") or h // heads
    attention = h * heads * head_dim * 2 + h * kv * head_dim * 2  # q, o; k, v
    per_layer = attention + 3 * h * i + 2 * h  # SwiGLU gate/up/down; two RMSNorms
    embeddings = vocab_size * h * (1 if arch.get("tie_word_embeddings", True) else 2)
    return embeddings + n_layers * per_layer + h  # the final norm


def build_scratch_model(
    tokenizer_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    preset: str = "tiny",
    seed: int = 0,
    max_position_embeddings: int = DEFAULT_MAX_POSITIONS,
    overwrite: bool = True,
    **overrides: Any,
) -> Path:
    """A random-init ``LlamaForCausalLM`` for the tokenizer in ``tokenizer_dir``, saved with it to ``out_dir``.

    ``preset``: a key of :data:`PRESETS`; ``overrides``: LlamaConfig fields replacing the preset's
    (``num_hidden_layers=4``, ``intermediate_size=1024``, ``tie_word_embeddings=False``, ...). The vocabulary is
    ``len(tokenizer)``; bos/eos/pad come from the tokenizer; the tokenizer is saved into the folder with
    ``model_max_length = max_position_embeddings``. ``scratch_model.json`` records the preset, seed, overrides,
    parameter count and the tokenizer's hash. Written beside ``out_dir`` and renamed into place once complete; an
    existing ``out_dir`` is replaced (``overwrite=False``: ``FileExistsError``). Returns ``out_dir``.
    """
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    if tokenizer.eos_token_id is None:
        raise ValueError(f"the tokenizer in {tokenizer_dir} has no eos token: generation could never stop")
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}  # fmt: skip
    config = scratch_config(preset, vocab_size=len(tokenizer), max_position_embeddings=max_position_embeddings,
                            **ids, **overrides)  # fmt: skip
    with torch.random.fork_rng(devices=[]):  # seeded init that leaves the caller's RNG as it was
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model = model.to(torch.float32).eval()
    model.generation_config = GenerationConfig(**ids)
    tokenizer.model_max_length = max_position_embeddings
    n_params = model.num_parameters()
    tokenizer_json = Path(tokenizer_dir) / "tokenizer.json"
    record = {
        "preset": preset,
        "seed": seed,
        "overrides": overrides,
        "max_position_embeddings": max_position_embeddings,
        "vocab_size": len(tokenizer),
        "params": n_params,
        "tokenizer_sha256": hashlib.sha256(tokenizer_json.read_bytes()).hexdigest() if tokenizer_json.is_file()
        else None,
    }  # fmt: skip

    def write(folder: str) -> None:
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        Path(folder, "scratch_model.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n",
                                                      encoding="utf-8")  # fmt: skip

    return save_atomic(out_dir, write, overwrite=overwrite)
