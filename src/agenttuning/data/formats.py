"""The three data layouts hybrid instruction tuning reads and writes (AgentTuning sections 2.1 and 2.2).

- **AgentInstruct**, exactly as published (HF ``THUDM/AgentInstruct``, one split per family: os, db, alfworld,
  webshop, kg, mind2web): ``{"id", "conversations": [{"from": "human"|"gpt", "loss", "value"}]}`` with ``loss`` null
  on human turns, false on in-context gpt turns and true on trained ones. Written one file per family
  (``<dir>/<family>.jsonl`` or ``.parquet``); read from a file or a directory of JSONL, JSON-list or parquet files
  (the published ones are ``data/<family>-00000-of-00001-<hash>.parquet``), the family taken from the file name.
- **ShareGPT** general chat: ``{"id", "conversations": [{"from", "value"}]}``, ``from`` in human/gpt/system (and
  user/assistant/chatgpt/bing/bard as common dumps write). Without ``loss`` every assistant turn is trained.
  Conversations that are empty or have no assistant turn are dropped and counted, not errors.
- **OpenAI messages**: ``{"id", "messages": [{"role", "content"}], "loss": [...]}`` (``loss`` optional on input).

Every reader validates every record and raises :class:`~agenttuning.jsonl.RecordError` naming the file and line
(or ``row N`` for JSON lists and parquet) before returning anything. Round trips are lossless where the target
holds the information: AgentInstruct has no system turns (writing one is an error); ShareGPT writes ``loss`` only
when some assistant turn is untrained; none of the layouts stores ``source``, which the reader is told.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from agenttuning.data.example import Example, Source, from_trajectory
from agenttuning.data.rows import data_files, read_all, write_rows
from agenttuning.jsonl import write_atomic
from agenttuning.schema import Trajectory, Turn, to_openai_messages, turns_from_agentinstruct

AGENTINSTRUCT_FAMILIES = ("os", "db", "alfworld", "webshop", "kg", "mind2web")
SHAREGPT_ROLES = {
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant", "bing": "assistant", "bard": "assistant",
    "system": "system",
}  # fmt: skip
_SHAREGPT_FROM = {"user": "human", "assistant": "gpt", "system": "system"}


def agentinstruct_schema() -> Any:
    """The pyarrow schema of the published parquet files: ``conversations: list<struct<from, loss, value>>, id``."""
    import pyarrow as pa

    turn = pa.struct([("from", pa.string()), ("loss", pa.bool_()), ("value", pa.string())])
    return pa.schema([("conversations", pa.list_(turn)), ("id", pa.string())])


@dataclass(frozen=True)
class Loaded:
    """What a reader returns: the examples in file order, drops by reason, and the files read."""

    examples: list[Example]
    dropped: Counter[str] = field(default_factory=Counter)
    files: list[Path] = field(default_factory=list)


def file_family(path: str | os.PathLike[str]) -> str:
    """Family named by a data file: ``db.jsonl`` and ``db-00000-of-00001-916a.parquet`` both give ``db``.

    >>> file_family("data/mind2web-00000-of-00001-fc25d4.parquet")
    'mind2web'
    """
    return Path(path).name.split(".")[0].split("-")[0].lower()


def _id(record: dict[str, Any], default: str) -> str:
    v = record.get("id", default)
    if isinstance(v, bool) or not isinstance(v, str | int):
        raise ValueError(f"'id' must be a string, got {type(v).__name__}")
    return str(v)


# ------------------------------------------------------------------------------------------------------------
# AgentInstruct


def to_agentinstruct_record(ex: Example) -> dict[str, Any]:
    """Example -> AgentInstruct record (same key order as :func:`agenttuning.schema.to_agentinstruct`)."""
    convs = []
    for i, t in enumerate(ex.turns):
        if t.role == "system":
            raise ValueError(f"{ex.id}: turns[{i}] is a system turn, which the AgentInstruct layout cannot hold")
        convs.append({"from": _SHAREGPT_FROM[t.role], "loss": t.loss if t.role == "assistant" else None,
                      "value": t.content})  # fmt: skip
    return {"id": ex.id, "conversations": convs}


def from_agentinstruct_record(record: dict[str, Any], *, family: str, source: Source = "agent") -> Example:
    """AgentInstruct record -> Example; ValueError says what is wrong (missing ``value``, loss on a human turn...)."""
    if not isinstance(record.get("id"), str):
        raise ValueError("'id' must be a string")
    return Example(id=record["id"], source=source, family=family, turns=turns_from_agentinstruct(record))


def read_agentinstruct(path: str | os.PathLike[str], *, source: Source = "agent") -> Loaded:
    """Read AgentInstruct records from a file or a directory; each file's family comes from its name."""
    rows = read_all(path, lambda f, r, _: from_agentinstruct_record(r, family=file_family(f), source=source))
    return Loaded([ex for _, _, ex in rows], Counter(), data_files(path))


def write_agentinstruct(
    items: Iterable[Example | Trajectory],
    out_dir: str | os.PathLike[str],
    *,
    fmt: Literal["jsonl", "parquet"] = "jsonl",
) -> dict[str, int]:
    """Write one ``<out_dir>/<family>.<fmt>`` per family, each atomically; returns records per family.

    Trajectories are converted with :func:`~agenttuning.data.example.from_trajectory` (family = env without -vN).
    """
    by_family: dict[str, list[dict[str, Any]]] = {}
    for it in items:
        ex = from_trajectory(it) if isinstance(it, Trajectory) else it
        by_family.setdefault(ex.family, []).append(to_agentinstruct_record(ex))
    schema = agentinstruct_schema() if fmt == "parquet" else None
    return {fam: write_rows(Path(out_dir) / f"{fam}.{fmt}", recs, schema=schema) for fam, recs in by_family.items()}


# ------------------------------------------------------------------------------------------------------------
# ShareGPT


def to_sharegpt_record(ex: Example) -> dict[str, Any]:
    """Example -> ShareGPT record; ``loss`` is written on every turn only when some assistant turn is untrained."""
    explicit = any(t.role == "assistant" and not t.loss for t in ex.turns)
    convs: list[dict[str, Any]] = []
    for t in ex.turns:
        c: dict[str, Any] = {"from": _SHAREGPT_FROM[t.role], "value": t.content}
        if explicit:
            c["loss"] = t.loss if t.role == "assistant" else None
        convs.append(c)
    return {"id": ex.id, "conversations": convs}


def from_sharegpt_record(
    record: dict[str, Any], *, default_id: str, family: str, source: Source = "general"
) -> Example | str:
    """ShareGPT record -> Example, or the reason it is dropped (``'empty'``, ``'no_assistant'``, ``'no_trained'``).

    A missing or null ``loss`` means the default: assistant turns trained, others not.
    """
    convs = record.get("conversations")
    if not isinstance(convs, list):
        raise ValueError("'conversations' must be a list")
    turns = []
    for i, c in enumerate(convs):
        if not isinstance(c, dict):
            raise ValueError(f"conversations[{i}] must be an object")
        role = SHAREGPT_ROLES.get(str(c.get("from", "")).lower())
        if role is None:
            known = ", ".join(SHAREGPT_ROLES)
            raise ValueError(f"conversations[{i}]: 'from' must be one of {known}, got {c.get('from')!r}")
        turns.append(_turn(role, c.get("value"), c.get("loss"), f"conversations[{i}]", "'value'"))
    return _example(record, turns, default_id, family, source)


def _turn(role: str, content: Any, loss: Any, where: str, what: str) -> Turn:
    if not isinstance(content, str):
        raise ValueError(f"{where}: {what} must be a string")
    if loss is not None and not isinstance(loss, bool):
        raise ValueError(f"{where}: 'loss' must be true, false or null")
    if role != "assistant":
        if loss:
            raise ValueError(f"{where}: a {role} turn cannot carry loss=true")
        return Turn(role=role, content=content)  # type: ignore[arg-type]
    return Turn(role="assistant", content=content, loss=True if loss is None else loss)


def _example(record: dict[str, Any], turns: list[Turn], default_id: str, family: str, source: Source) -> Example | str:
    if not turns:
        return "empty"
    if not any(t.role == "assistant" for t in turns):
        return "no_assistant"
    if not any(t.loss for t in turns):
        return "no_trained"
    return Example(id=_id(record, default_id), source=source, family=family, turns=turns)


def _read_dropping(path: str | os.PathLike[str], convert: Any, family: str | None, source: Source) -> Loaded:
    def one(f: Path, r: dict[str, Any], line: int) -> Example | str:
        return convert(r, default_id=f"{f.stem}-{line}", family=family or file_family(f), source=source)

    rows = read_all(path, one)
    kept = [x for _, _, x in rows if isinstance(x, Example)]
    dropped = Counter(x for _, _, x in rows if isinstance(x, str))
    return Loaded(kept, dropped, data_files(path))


def read_sharegpt(path: str | os.PathLike[str], *, family: str | None = None, source: Source = "general") -> Loaded:
    """Read ShareGPT conversations (file or directory); empty ones and ones with no assistant turn are counted out.

    ``family`` defaults to the file's name (``sharegpt.jsonl`` -> ``sharegpt``); a missing id becomes ``<stem>-<line>``.
    """
    return _read_dropping(path, from_sharegpt_record, family, source)


def write_sharegpt(examples: Iterable[Example], path: str | os.PathLike[str]) -> int:
    """Write ShareGPT records to ``path`` (.jsonl, .json or .parquet), atomically."""
    return write_rows(path, (to_sharegpt_record(ex) for ex in examples))


# ------------------------------------------------------------------------------------------------------------
# OpenAI messages


def to_openai_record(ex: Example) -> dict[str, Any]:
    """Example -> ``{"id", "messages", "loss"}``, the layout of :func:`agenttuning.schema.to_openai_record`."""
    return {"id": ex.id, "messages": to_openai_messages(ex.turns), "loss": [t.loss for t in ex.turns]}


def from_openai_record(
    record: dict[str, Any], *, default_id: str, family: str, source: Source = "general"
) -> Example | str:
    """OpenAI-messages record -> Example, or a drop reason as for ShareGPT; ``loss`` absent means the default."""
    msgs = record.get("messages")
    if not isinstance(msgs, list):
        raise ValueError("'messages' must be a list")
    loss = record.get("loss")
    if loss is not None and (not isinstance(loss, list) or len(loss) != len(msgs)):
        raise ValueError(f"'loss' must be a list as long as 'messages' ({len(msgs)})")
    turns = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise ValueError(f"messages[{i}] needs 'role' in system/user/assistant")
        flag = None if loss is None else loss[i]
        turns.append(_turn(m["role"], m.get("content"), flag, f"messages[{i}]", "'content'"))
    return _example(record, turns, default_id, family, source)


def read_openai(path: str | os.PathLike[str], *, family: str | None = None, source: Source = "general") -> Loaded:
    """Read OpenAI-messages records (file or directory), dropping empty / assistant-less ones as ShareGPT does."""
    return _read_dropping(path, from_openai_record, family, source)


def write_openai(examples: Iterable[Example], path: str | os.PathLike[str]) -> int:
    """Write OpenAI-messages records (with per-turn ``loss``) to ``path``, atomically."""
    return write_rows(path, (to_openai_record(ex) for ex in examples))


# ------------------------------------------------------------------------------------------------------------
# Native: Example records as JSONL (everything, including source and family)


def write_examples(examples: Iterable[Example], path: str | os.PathLike[str]) -> int:
    """Write Example records as JSONL, atomically: the lossless layout (keeps source and family)."""
    return write_atomic(path, examples)


def read_examples(path: str | os.PathLike[str]) -> list[Example]:
    """Read Example records from a JSONL, JSON-list or parquet file or a directory (RecordError names file:line)."""
    return [ex for _, _, ex in read_all(path, lambda _f, r, _line: Example.model_validate(r))]
