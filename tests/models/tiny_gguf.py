"""A tiny random Llama written as a real GGUF file (with the ``gguf`` package), for fast conversion tests.

The file is what llama.cpp writes for a Llama: ``general.*`` and ``llama.*`` metadata, a byte-level BPE tokenizer
(``tokenizer.ggml.model = gpt2``: the 256 byte symbols, a few merges, ChatML control tokens, a chat template), and
tensors named ``token_embd`` / ``blk.N.*`` / ``output_norm``, the matrices Q8_0-quantised as in a real file, the
norms float32, no ``output.weight`` (tied embeddings). transformers' GGUF loader reads it like the real thing.
"""

from __future__ import annotations

from pathlib import Path

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + "
    "'\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _byte_symbols() -> list[str]:
    """The 256 printable symbols byte-level BPE spells bytes with (GPT-2's scheme)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    extra = 0
    table = {}
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def write_tiny_llama_gguf(path: str | Path, *, seed: int = 0, layers: int = 2, hidden: int = 64) -> Path:
    """Write a random 2-layer Llama (hidden 64, 4 heads / 2 KV heads, ~300-token vocabulary) as GGUF at ``path``."""
    import gguf
    import numpy as np

    heads, kv_heads, ff = 4, 2, 128
    head_dim = hidden // heads
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    symbols = _byte_symbols()
    merges = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r", "o n", "Ġ P", "a r", "i s"]
    merged = [m.replace(" ", "") for m in merges]
    tokens = specials + symbols + merged
    types = [3] * len(specials) + [1] * (len(symbols) + len(merged))  # 3 control, 1 normal
    vocab = len(tokens)

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama-test")
    w.add_context_length(256)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(False)
    w.add_chat_template(CHATML)

    rng = np.random.default_rng(seed)

    def matrix(name: str, rows: int, cols: int) -> None:
        data = (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)
        q = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
        w.add_tensor(name, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)

    def norm(name: str) -> None:
        w.add_tensor(name, (1.0 + 0.1 * rng.standard_normal(hidden)).astype(np.float32))

    matrix("token_embd.weight", vocab, hidden)
    for i in range(layers):
        norm(f"blk.{i}.attn_norm.weight")
        matrix(f"blk.{i}.attn_q.weight", heads * head_dim, hidden)
        matrix(f"blk.{i}.attn_k.weight", kv_heads * head_dim, hidden)
        matrix(f"blk.{i}.attn_v.weight", kv_heads * head_dim, hidden)
        matrix(f"blk.{i}.attn_output.weight", hidden, heads * head_dim)
        norm(f"blk.{i}.ffn_norm.weight")
        matrix(f"blk.{i}.ffn_gate.weight", ff, hidden)
        matrix(f"blk.{i}.ffn_up.weight", ff, hidden)
        matrix(f"blk.{i}.ffn_down.weight", hidden, ff)
    norm("output_norm.weight")

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(path)
