"""The ``prepare`` stage: examples in any layout -> token ids, loss labels, fitted to ``max_len``, packed, on disk.

A linear story (AgentTuning section 2.2 trains on assistant outputs only, at sequence length 4,096):

1. read the examples, whatever their layout (:func:`load_examples`: our Example JSONL, AgentInstruct, ShareGPT,
   OpenAI messages, or raw trajectory JSONL), all validated first;
2. render them with the tokenizer's chat template or a shipped one (:func:`~agenttuning.tokens.masks.render_batch`:
   exact labels, -100 outside trained assistant turns);
3. fit each to ``max_len`` (:func:`~agenttuning.tokens.length.fit_all`: cut at a turn boundary or drop, never
   mid-turn), and report what both policies would lose;
4. pack with best-fit-decreasing, padding-free (:func:`~agenttuning.tokens.packing.pack`), or keep one example a row;
5. write ``train.parquet`` (or ``.jsonl``) and ``stats.json``, then ``manifest.json`` last (the stage is complete
   only once the manifest exists).

Rows: ``input_ids``, ``labels`` (aligned, -100 where no loss), and when packed ``position_ids`` (restarting at every
example) and ``seq_lens``; unpacked rows carry ``id``, ``source``, ``family`` and ``turn_ends`` instead: the form
the trainer reads (``--no-pack``), since it draws the eta-mixture and packs its own batches.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from agenttuning.data.example import Example, from_trajectory
from agenttuning.data.rows import data_files, iter_rows, write_json, write_rows
from agenttuning.tokens.length import DEFAULT_MAX_LEN, LengthReport, Policy, compare_policies, fit_all
from agenttuning.tokens.masks import Encoded, render_batch
from agenttuning.tokens.packing import PackingReport, pack

PathLike = str | os.PathLike[str]
Layout = Literal["examples", "agentinstruct", "sharegpt", "openai", "trajectories"]
BUILTIN_TOKENIZERS = ("llama3", "mistral", "tekken")


def detect_layout(record: dict[str, Any]) -> Layout:
    """Which layout one record is in, from its keys."""
    if "turns" in record and "source" in record:
        return "examples"
    if "task" in record and "steps" in record:
        return "trajectories"
    if "messages" in record:
        return "openai"
    convs = record.get("conversations")
    if isinstance(convs, list):
        return "agentinstruct" if any(isinstance(c, dict) and "loss" in c for c in convs) else "sharegpt"
    raise ValueError(f"unrecognised record layout (keys: {sorted(record)[:6]})")


def load_examples(path: PathLike, *, layout: Layout | None = None) -> tuple[list[Example], Counter[str]]:
    """Every example under ``path`` (a file or a directory), in its detected layout; plus drop counts by reason."""
    from agenttuning.data import formats
    from agenttuning.jsonl import read_records
    from agenttuning.schema import Trajectory

    files = data_files(path)
    if layout is None:
        first = next((row for f in files for _, _, row in iter_rows(f)), None)
        if first is None:
            return [], Counter()
        if not isinstance(first, dict):
            raise ValueError(f"{path}: records must be JSON objects")
        layout = detect_layout(first)
    if layout == "examples":
        return [ex for f in files for ex in formats.read_examples(f)], Counter()
    if layout == "trajectories":
        return [from_trajectory(t) for f in files for t in read_records(f, Trajectory)], Counter()
    reader = {"agentinstruct": formats.read_agentinstruct, "sharegpt": formats.read_sharegpt,
              "openai": formats.read_openai}[layout]  # fmt: skip
    loaded = reader(path)
    return list(loaded.examples), Counter(loaded.dropped)


def load_tokenizer(name_or_path: str) -> Any:
    """A tokenizer by HF id or local path, a ``.gguf`` file or model alias (:mod:`agenttuning.models`); ``llama3``,
    ``mistral`` and ``tekken`` build the real ones offline."""
    from agenttuning.models import resolve_model
    from agenttuning.tokens import offline

    if name_or_path in BUILTIN_TOKENIZERS and not Path(name_or_path).exists():
        return {"llama3": offline.llama3_tokenizer, "mistral": offline.mistral_tokenizer,
                "tekken": offline.tekken_tokenizer}[name_or_path]()  # fmt: skip
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model(name_or_path))


@dataclass
class PrepareResult:
    """What :func:`prepare` wrote and measured."""

    out_dir: Path
    examples_in: int
    rejected: dict[str, int]
    sources: dict[str, int]
    length: LengthReport
    length_policies: dict[str, dict[str, Any]]
    packing: PackingReport
    tokens_per_s: float
    encoded: list[Encoded] = field(repr=False, default_factory=list)
    examples: list[Example] = field(repr=False, default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "examples_in": self.examples_in,
            "rejected": self.rejected,
            "sources": self.sources,
            "length": self.length.to_dict(),
            "length_policies": self.length_policies,
            "packing": self.packing.to_dict(),
            "tokens_per_s": round(self.tokens_per_s),
        }


def encode_examples(
    examples: Sequence[Example], tokenizer: Any, *, template: str | None = None
) -> tuple[list[Encoded | None], Counter[str]]:
    """Render examples to :class:`Encoded` (one ``encode_batch`` pass over all their text).

    An example the template cannot render (a role order it does not allow, e.g. a chat that opens with the
    assistant under ``llama2-chat``) comes back as None and is counted, instead of failing the whole stage.
    """
    try:
        return list(render_batch([ex.turns for ex in examples], tokenizer, template)), Counter()
    except ValueError:
        pass
    out: list[Encoded | None] = []
    dropped: Counter[str] = Counter()
    for ex in examples:
        try:
            out.append(render_batch([ex.turns], tokenizer, template)[0])
        except ValueError:
            out.append(None)
            dropped["template_rejects_roles"] += 1
    return out, dropped


def prepare(
    inputs: PathLike | Sequence[PathLike],
    tokenizer: Any,
    out_dir: PathLike,
    *,
    max_len: int = DEFAULT_MAX_LEN,
    packed: bool = True,
    policy: Policy = "truncate_turns",
    template: str | None = None,
    fmt: Literal["parquet", "jsonl"] = "parquet",
) -> PrepareResult:
    """Run the stage (see the module docstring); ``tokenizer`` is a tokenizer object or an id/path/builtin name."""
    out = Path(out_dir)
    (out / "manifest.json").unlink(missing_ok=True)
    tok = load_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
    paths = [inputs] if isinstance(inputs, str | os.PathLike) else list(inputs)
    examples: list[Example] = []
    for p in paths:
        examples += load_examples(p)[0]
    t0 = time.perf_counter()
    rendered, rejected = encode_examples(examples, tok, template=template)
    ok = [i for i, e in enumerate(rendered) if e is not None]
    encoded = [rendered[i] for i in ok]
    examples = [examples[i] for i in ok]
    fitted, report = fit_all(encoded, max_len, policy)
    kept_idx = [i for i, e in enumerate(fitted) if e is not None]
    kept = [fitted[i] for i in kept_idx]
    rows, packing = pack(kept, max_len, packed=packed)
    elapsed = time.perf_counter() - t0
    n_tokens = sum(len(e.input_ids) for e in encoded)
    records: list[dict[str, Any]]
    if packed:
        records = [{"input_ids": r.input_ids, "labels": r.labels, "position_ids": r.position_ids,
                    "seq_lens": list(r.seq_lens)} for r in rows]  # fmt: skip
    else:
        records = [{"id": examples[i].id, "source": examples[i].source, "family": examples[i].family,
                    "input_ids": list(e.input_ids), "labels": list(e.labels), "turn_ends": list(e.turn_ends)}
                   for i, e in zip(kept_idx, kept)]  # fmt: skip
    write_rows(out / f"train.{fmt}", records)
    policies = {f"{pol}@{n}": r.to_dict() for (pol, n), r in compare_policies(encoded, (max_len,)).items()}
    result = PrepareResult(
        out_dir=out,
        examples_in=len(examples) + sum(rejected.values()),
        rejected=dict(rejected),
        sources=dict(Counter(ex.source for ex in examples)),
        length=report,
        length_policies=policies,
        packing=packing,
        tokens_per_s=n_tokens / elapsed if elapsed > 0 else 0.0,
        encoded=kept,
        examples=[examples[i] for i in kept_idx],
    )
    write_json(out / "stats.json", result.to_json())
    write_json(out / "manifest.json", {"stage": "prepare", "files": [f"train.{fmt}"], "rows": len(records),
                                       "max_len": max_len, "packed": packed})  # fmt: skip
    return result
