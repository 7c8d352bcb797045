"""Tiny random-init models of real architectures, paired with real offline tokenizers, for fast CPU tests.

Nothing here downloads: the architectures come from ``transformers`` configs, the tokenizers from
:mod:`agenttuning.tokens.offline` (files inside the ``llama-models`` / ``mistral-common`` wheels).

    model, tok = tiny_llama3()          # LlamaForCausalLM sized to the 128,256-id Llama 3 tokenizer
    model, tok = tiny_mistral_llama()   # the same architecture on Mistral's 32,768-id tokenizer (cheaper logits)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast


def tiny_llama(
    vocab_size: int,
    *,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 128,
    max_pos: int = 2048,
    seed: int = 0,
    bos_token_id: int | None = None,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
    tie_word_embeddings: bool = False,
) -> LlamaForCausalLM:
    """A random-init ``LlamaForCausalLM`` (float32, eval mode), deterministic for a given ``seed``.

    Grouped-query attention (``kv_heads < heads``) and RoPE as in Llama 3; ``*_token_id`` go to the config and
    hence to the model's generation config (transformers' defaults, bos=1/eos=2, would be wrong for Llama 3 ids).
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_pos,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        tie_word_embeddings=tie_word_embeddings,
        rope_theta=500000.0,
        dtype="float32",
    )
    with torch.random.fork_rng(devices=[]):  # seeded init that leaves the global RNG as it was
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.to(torch.float32).eval()


def tiny_llama3(**kwargs) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """``(model, tokenizer)``: :func:`tiny_llama` with the real Llama 3 tokenizer's vocabulary and special ids.

    The tokenizer is the process-wide cached one: do not modify it.
    """
    from agenttuning.tokens.offline import llama3_tokenizer

    tok = llama3_tokenizer()
    return _paired(tok, **kwargs), tok


def tiny_mistral_llama(**kwargs) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """``(model, tokenizer)``: :func:`tiny_llama` on Mistral's 32,768-id v3 tokenizer (4x cheaper logits)."""
    from agenttuning.tokens.offline import mistral_tokenizer

    tok = mistral_tokenizer()
    return _paired(tok, **kwargs), tok


def _paired(tok: PreTrainedTokenizerFast, **kwargs) -> LlamaForCausalLM:
    kwargs.setdefault("bos_token_id", tok.bos_token_id)
    kwargs.setdefault("eos_token_id", tok.eos_token_id)
    kwargs.setdefault("pad_token_id", tok.pad_token_id)
    return tiny_llama(len(tok), **kwargs)
