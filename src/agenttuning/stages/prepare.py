"""The ``prepare`` stage: examples in any layout -> token ids and loss labels, fitted to ``max_len``, packed, on disk.

A linear story (AgentTuning section 2.2 trains on assistant outputs only, at sequence length 4,096):

1. read the examples, whatever their layout (:mod:`agenttuning.data.reader`: our Example JSONL, AgentInstruct,
   ShareGPT, OpenAI messages, or trajectories), all validated first;
2. render them with the tokenizer's chat template or a shipped one (:func:`~agenttuning.tokens.prepare.encode_examples`:
   exact labels, -100 outside trained assistant turns); an example whose role order the template refuses is
   counted (``template_rejects_roles``, the first refusal's message kept), a template unusable for every example
   is an error;
3. fit each to ``max_len`` (:func:`~agenttuning.tokens.length.fit`: cut at a turn boundary or drop, never
   mid-turn), and count what both policies would lose;
4. pack best-fit-decreasing, padding-free (:func:`~agenttuning.tokens.packing.pack`), or keep one example a row;
5. write ``train.parquet`` (or ``.jsonl``) and ``stats.json``, then ``manifest.json`` last, into a fresh folder
   swapped in when complete. No row to write is :class:`~agenttuning.data.outputs.EmptyOutputError` with the
   counts and the first refusal.

Rows: ``input_ids``, ``labels`` (aligned, -100 where no loss), and when packed ``position_ids`` (restarting at every
example) and ``seq_lens``; unpacked rows carry ``id``, ``source``, ``family`` and ``turn_ends`` instead: the form
the trainer reads (``pack=false``), since it draws the eta-mixture and packs its own batches.

``agenttuning prepare`` and the pipeline's ``prepare`` stage (once per source) both call :func:`run`. The output
is a function of the config, the input bytes and the tokenizer only (no timings in it), so equal inputs give
byte-identical files.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agenttuning.data.example import Example
from agenttuning.data.outputs import EmptyOutputError, counts
from agenttuning.data.rows import write_json, write_rows
from agenttuning.stages.folder import stage_folder
from agenttuning.stages.manifest import StageResult
from agenttuning.tokens.length import DEFAULT_MAX_LEN, LengthReport, compare_policies, fit
from agenttuning.tokens.packing import pack
from agenttuning.tokens.record import TokenRecord

__all__ = ["PrepareConfig", "PrepareOutput", "prepare_examples", "run"]

PathLike = str | os.PathLike[str]
STATS = "stats.json"


class PrepareConfig(BaseModel):
    """How to turn conversations into training rows (the paper: max_len 4096, loss on assistant turns only)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_len: int = Field(DEFAULT_MAX_LEN, ge=2, description="Sequence length (the paper: 4096).")
    pack: bool = Field(True, description="Best-fit-decreasing packing, padding-free; false: one example a row "
                       "(what the trainer reads: it mixes and packs its own batches).")  # fmt: skip
    length_policy: Literal["truncate_turns", "drop"] = Field(
        "truncate_turns", description="Too long: cut after the last assistant turn that fits, or drop.")
    chat_template: str | None = Field(None, description="A shipped template name (llama2-chat, agentlm, llama3, "
                                      "mistral, chatml); None: the tokenizer's own.")  # fmt: skip
    format: Literal["parquet", "jsonl"] = Field("parquet", description="Format of the rows file.")


class PrepareOutput(StageResult):
    """What :func:`run` wrote and counted (the content of ``stats.json``, plus the rows file's name)."""

    rows_file: str
    rows: int
    examples_in: int
    dropped: dict[str, int] = Field(description="Records the reader could not use, by reason (empty, no_assistant...).")
    rejected: dict[str, int]
    first_rejection: str | None = Field(description="The template's message for the first example it refused.")
    sources: dict[str, int]
    length: dict[str, Any] = Field(description="What fitting to max_len did (tokens.length.LengthReport).")
    length_policies: dict[str, dict[str, Any]] = Field(description="What each length policy would lose.")
    packing: dict[str, Any] = Field(description="Rows and efficiency (tokens.packing.PackingReport).")
    stats: str = STATS


def prepare_examples(config: PrepareConfig, examples: Sequence[Example], tokenizer: Any
                     ) -> tuple[list[dict[str, Any]], dict[str, Any], list[tuple[Example, TokenRecord]]]:  # fmt: skip
    """Render, fit and pack ``examples`` (steps 2-4): the rows to write, the statistics, and each kept example with
    its fitted :class:`~agenttuning.tokens.record.TokenRecord` (what ``prepare --show`` colours). Rows are the
    records' own (:meth:`TokenRecord.to_row`, what the trainer reads back) or the packed rows'
    (:meth:`~agenttuning.tokens.packing.PackedRow.to_row`). EmptyOutputError when no row is left."""
    from agenttuning.tokens.prepare import encode_examples

    rendered, rejected, first_rejection = encode_examples(examples, tokenizer, template=config.chat_template)
    ok = [(ex, e) for ex, e in zip(examples, rendered) if e is not None]
    report = LengthReport(policy=config.length_policy, max_len=config.max_len)
    kept: list[tuple[Example, TokenRecord]] = []
    for ex, e in ok:  # one by one, keeping each fitted record beside its example (what prepare --show needs)
        fitted, one = fit(e, config.max_len, policy=config.length_policy)
        report = report + one
        if fitted is not None:
            kept.append((ex, fitted))
    n_in = len(examples)
    if not kept:
        raise EmptyOutputError(_no_rows(n_in, rejected, first_rejection, report))
    rows, packing = pack([e for _, e in kept], config.max_len, packed=config.pack)
    written = [r.to_row() for r in rows] if config.pack else [e.to_row() for _, e in kept]
    policies = compare_policies([e for _, e in ok], (config.max_len,))
    stats = {
        "rows": len(written), "examples_in": n_in, "rejected": dict(rejected), "first_rejection": first_rejection,
        "sources": dict(Counter(ex.source for ex, _ in ok)), "length": report.to_dict(),
        "length_policies": {f"{pol}@{n}": r.to_dict() for (pol, n), r in policies.items()},
        "packing": packing.to_dict(),
    }  # fmt: skip
    return written, stats, kept


def _no_rows(n_in: int, rejected: Counter[str], first: str | None, report: LengthReport) -> str:
    if n_in == 0:
        return "no examples: nothing to prepare"
    why = [f"the chat template refused {counts(rejected)} (first: {first})"] if rejected else []
    if report.dropped:
        how = "no trained reply fits" if report.policy == "truncate_turns" else "policy drop"
        why.append(f"{report.dropped} longer than max_len={report.max_len} ({how})")
    return f"no rows to write: {n_in} examples read, " + "; ".join(why)


def run(config: PrepareConfig, inputs: Sequence[PathLike], tokenizer: Any, out: PathLike, *,
        overwrite: bool = False) -> PrepareOutput:  # fmt: skip
    """Prepare the examples in ``inputs`` with ``tokenizer`` (an object, or an id/path/alias) into the folder ``out``."""
    from agenttuning.data.reader import read_data
    from agenttuning.tokens.prepare import load_tokenizer_by_name

    paths = list(inputs)
    with stage_folder(out, stage="prepare", inputs=paths, overwrite=overwrite) as w:
        tok = load_tokenizer_by_name(tokenizer) if isinstance(tokenizer, str) else tokenizer
        loaded = [read_data(p) for p in paths]
        examples = [ex for one in loaded for ex in one.examples]
        dropped = sum((Counter(one.dropped) for one in loaded), Counter())
        where = ", ".join(str(p) for p in paths)
        try:
            records, stats, _ = prepare_examples(config, examples, tok)
        except EmptyOutputError as e:
            also = f" (records dropped on reading: {counts(dropped)})" if dropped else ""
            raise EmptyOutputError(f"prepare {where}: {e}{also}") from None
        stats = {**stats, "dropped": dict(sorted(dropped.items()))}
        rows_file = f"train.{config.format}"
        write_rows(w.path / rows_file, records)
        write_json(w.path / STATS, stats)
        output = PrepareOutput(rows_file=rows_file, **stats)
        tok_name = tokenizer if isinstance(tokenizer, str) else getattr(tok, "name_or_path", type(tok).__name__)
        w.finish(config=config, inputs={"data": [str(p) for p in paths], "tokenizer": tok_name}, result=output)
    return output
