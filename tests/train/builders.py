"""Tiny offline fixtures for the training tests: a word-level tokenizer with a chat template, a random-init Llama
with a small vocabulary saved as a Hugging Face folder, and prepared (input_ids, labels) examples with structure a
model can learn in a few dozen steps."""

from __future__ import annotations

import json
import random
from pathlib import Path

VOCAB = 96
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<s>' if loop.first else '' }}{{ m['role'] }}: {{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}</s>{% endif %}\n{% endfor %}"
)


def tiny_tokenizer(vocab: int = VOCAB):
    """A word-level tokenizer: ``<pad> <s> </s> <unk>`` then ``t4 ... t{vocab-1}``, with a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{f"t{i}": i for i in range(4, vocab)}}
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def save_tiny_model(folder: Path, *, vocab: int = VOCAB, tie: bool = False, seed: int = 0, **kwargs) -> Path:
    """A random-init float32 Llama (2 layers, hidden 32) and its tokenizer, saved to ``folder``."""
    from tests.tiny_models import tiny_llama

    kwargs = {"layers": 2, "hidden": 32, "heads": 4, "kv_heads": 2, "intermediate": 64, "max_pos": 512, **kwargs}
    model = tiny_llama(vocab, seed=seed, bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=tie,
                       **kwargs)
    model.save_pretrained(folder)
    tiny_tokenizer(vocab).save_pretrained(folder)
    return folder


def agent_example(rng: random.Random, vocab: int = VOCAB) -> dict:
    """An 'agent' example: a random prompt (no loss), then a reply that is the prompt's first tokens, +1 each."""
    prompt = [1] + [rng.randrange(4, vocab - 1) for _ in range(rng.randrange(6, 20))]
    reply = [t + 1 for t in prompt[1:7]] + [2]
    ids = prompt + reply
    return {"input_ids": ids, "labels": [-100] * len(prompt) + reply}


def general_example(rng: random.Random, vocab: int = VOCAB) -> dict:
    """A 'general' example: a short question (no loss) and a counting reply from its last token."""
    q = [1] + [rng.randrange(4, vocab) for _ in range(rng.randrange(3, 8))]
    start = rng.randrange(4, vocab - 12)
    reply = list(range(start, start + rng.randrange(5, 12))) + [2]
    ids = q + [start] + reply
    return {"input_ids": ids, "labels": [-100] * (len(q) + 1) + reply}


def write_data(folder: Path, n_agent: int = 24, n_general: int = 48, seed: int = 0) -> tuple[Path, Path]:
    """Agent examples as parquet, general ones as JSONL (both layouts the trainer reads)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    agent = [agent_example(rng) for _ in range(n_agent)]
    general = [general_example(rng) for _ in range(n_general)]
    agent_path, general_path = folder / "agent.parquet", folder / "general.jsonl"
    pq.write_table(pa.Table.from_pylist(agent), agent_path)
    general_path.write_text("".join(json.dumps(r) + "\n" for r in general), encoding="utf-8")
    return agent_path, general_path
