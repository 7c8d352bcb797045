"""The ``prepare`` stage: examples in any layout -> token ids, loss labels, fitted to ``max_len``, packed, on disk.

A linear story (AgentTuning section 2.2 trains on assistant outputs only, at sequence length 4,096):

1. read the examples, whatever their layout (:func:`read_examples_any_layout`: our Example JSONL, AgentInstruct,
   ShareGPT, OpenAI messages, or raw trajectory JSONL), all validated first;
2. render them with the tokenizer's chat template or a shipped one (:func:`~agenttuning.tokens.masks.render_batch`:
   exact labels, -100 outside trained assistant turns);
3. fit each to ``max_len`` (:func:`~agenttuning.tokens.length.fit`: cut at a turn boundary or drop, never
   mid-turn), and report what both policies would lose;
4. pack with best-fit-decreasing, padding-free (:func:`~agenttuning.tokens.packing.pack`), or keep one example a row;
5. write ``train.parquet`` (or ``.jsonl``) and ``stats.json``, then ``manifest.json`` last (the stage is complete
   only once the manifest exists), into a fresh folder swapped in when complete, so no file of an earlier run
   into the same folder (packed rows beside unpacked ones) survives (:mod:`agenttuning.data.outputs`).

A chat template that cannot be used at all is an error with the template check's message; one that refuses some
examples' role order counts them (``template_rejects_roles``, the first refusal's message in ``stats.json``). When
no row is left to write (no examples, every one refused or longer than ``max_len``) the stage fails with the
counts and the first refusal (:class:`~agenttuning.data.outputs.EmptyOutputError`) and writes nothing.

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
from agenttuning.data.outputs import EmptyOutputError, check_output, counts, staged_dir
from agenttuning.data.rows import first_row, located, read_all, write_json, write_rows
from agenttuning.tokens.length import DEFAULT_MAX_LEN, LengthReport, Policy, compare_policies, fit
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


def read_examples_any_layout(path: PathLike, *, layout: Layout | None = None) -> tuple[list[Example], Counter[str]]:
    """Every example under ``path`` (a file or a directory), in its detected layout; plus drop counts by reason.

    Errors are :class:`~agenttuning.jsonl.RecordError` naming ``file:line`` (``row N`` in JSON lists and parquet).
    """
    from agenttuning.data import formats
    from agenttuning.schema import Trajectory

    if layout is None:
        first = first_row(path)
        if first is None:
            return [], Counter()
        f, line, where, row = first
        if not isinstance(row, dict):
            raise located(f, line, where, f"expected a JSON object, got {type(row).__name__}")
        try:
            layout = detect_layout(row)
        except ValueError as e:
            raise located(f, line, where, str(e)) from None
    if layout == "examples":
        return formats.read_examples(path), Counter()
    if layout == "trajectories":
        trajs = read_all(path, lambda _f, r, _l: Trajectory.model_validate(r))
        return [from_trajectory(t) for _, _, t in trajs], Counter()
    reader = {"agentinstruct": formats.read_agentinstruct, "sharegpt": formats.read_sharegpt,
              "openai": formats.read_openai}[layout]  # fmt: skip
    loaded = reader(path)
    return list(loaded.examples), Counter(loaded.dropped)


def load_tokenizer_by_name(name_or_path: str) -> Any:
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
    first_rejection: str | None  # the template's message for the first example it refused
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
            "first_rejection": self.first_rejection,
            "sources": self.sources,
            "length": self.length.to_dict(),
            "length_policies": self.length_policies,
            "packing": self.packing.to_dict(),
            "tokens_per_s": round(self.tokens_per_s),
        }


def encode_examples(
    examples: Sequence[Example], tokenizer: Any, *, template: str | None = None
) -> tuple[list[Encoded | None], Counter[str], str | None]:
    """Render examples to :class:`Encoded` (one ``encode_batch`` pass over all their text).

    A template that cannot be used at all (unknown name, or the tokenizer's own Jinja template failing the
    exactness checks) is a ValueError with the check's message. An example the template cannot render (a role
    order it does not allow, e.g. a chat that opens with the assistant under ``llama2-chat``) comes back as None
    and is counted, instead of failing the whole stage; the first such message is returned too.
    """
    try:  # bind the template on no conversation: only a template unusable for every example fails here
        render_batch([], tokenizer, template)
    except ValueError as e:
        raise ValueError(f"chat template {template or '(the tokenizer own)'}: {e}") from None
    try:
        return list(render_batch([ex.turns for ex in examples], tokenizer, template)), Counter(), None
    except ValueError:
        pass
    out: list[Encoded | None] = []
    dropped: Counter[str] = Counter()
    first: str | None = None
    for ex in examples:
        try:
            out.append(render_batch([ex.turns], tokenizer, template)[0])
        except ValueError as e:
            out.append(None)
            dropped["template_rejects_roles"] += 1
            first = first or f"{ex.id}: {str(e).removeprefix('conversation 0: ')}"
    return out, dropped, first


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
    overwrite: bool = False,
) -> PrepareResult:
    """Run the stage (see the module docstring); ``tokenizer`` is a tokenizer object or an id/path/builtin name.

    ``out_dir`` is replaced whole: a new folder, an empty one, an earlier ``prepare`` output, or (``overwrite``)
    anything. :class:`EmptyOutputError` when no row is left to write.
    """
    out = Path(out_dir)
    paths = [inputs] if isinstance(inputs, str | os.PathLike) else list(inputs)
    check_output(out, stage="prepare", marker="manifest.json", overwrite=overwrite, inputs=paths)
    tok = load_tokenizer_by_name(tokenizer) if isinstance(tokenizer, str) else tokenizer
    examples: list[Example] = []
    for p in paths:
        examples += read_examples_any_layout(p)[0]
    t0 = time.perf_counter()
    rendered, rejected, first_rejection = encode_examples(examples, tok, template=template)
    ok = [i for i, e in enumerate(rendered) if e is not None]
    encoded = [rendered[i] for i in ok]
    examples = [examples[i] for i in ok]
    # fit one by one, so each surviving row keeps the id, source and family of its own example
    report = LengthReport(policy=policy, max_len=max_len)
    kept_idx: list[int] = []
    kept: list[Encoded] = []
    for i, e in enumerate(encoded):
        fitted, one = fit(e, max_len, policy=policy)
        report = report + one
        if fitted is not None:
            kept_idx.append(i)
            kept.append(fitted)
    n_in = len(examples) + sum(rejected.values())
    if not kept:
        raise EmptyOutputError(_no_rows(paths, n_in, rejected, first_rejection, report))
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
    policies = {f"{pol}@{n}": r.to_dict() for (pol, n), r in compare_policies(encoded, (max_len,)).items()}
    result = PrepareResult(
        out_dir=out,
        examples_in=n_in,
        rejected=dict(rejected),
        first_rejection=first_rejection,
        sources=dict(Counter(ex.source for ex in examples)),
        length=report,
        length_policies=policies,
        packing=packing,
        tokens_per_s=n_tokens / elapsed if elapsed > 0 else 0.0,
        encoded=kept,
        examples=[examples[i] for i in kept_idx],
    )
    with staged_dir(out) as tmp:
        write_rows(tmp / f"train.{fmt}", records)
        write_json(tmp / "stats.json", result.to_json())
        write_json(tmp / "manifest.json", {"stage": "prepare", "files": [f"train.{fmt}"], "rows": len(records),
                                           "max_len": max_len, "packed": packed})  # fmt: skip
    return result


def _no_rows(paths: Sequence[PathLike], n_in: int, rejected: Counter[str], first: str | None,
             report: LengthReport) -> str:  # fmt: skip
    where = ", ".join(str(p) for p in paths)
    if n_in == 0:
        return f"no examples in {where}: nothing to prepare"
    why = [f"the chat template refused {counts(rejected)} (first: {first})"] if rejected else []
    if report.dropped:
        how = "no trained reply fits" if report.policy == "truncate_turns" else "policy drop"
        why.append(f"{report.dropped} longer than max_len={report.max_len} ({how})")
    return f"no rows to write: {n_in} examples read from {where}, " + "; ".join(why)
