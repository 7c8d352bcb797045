"""The three data layouts hybrid instruction tuning reads and writes (AgentTuning sections 2.1 and 2.2).

This module owns every record-layout conversion; :mod:`agenttuning.schema` keeps the data model. A trajectory
converts through its derived conversation (:func:`agenttuning.schema.conversation`), so
``to_agentinstruct_record(traj) == to_agentinstruct_record(from_trajectory(traj))``, and
:func:`trajectory_from_agentinstruct` rebuilds a trajectory from a record.

- **AgentInstruct**, exactly as published (HF ``THUDM/AgentInstruct``, one split per family: os, db, alfworld,
  webshop, kg, mind2web): ``{"id", "conversations": [{"from": "human"|"gpt", "loss", "value"}]}`` with ``loss`` null
  on human turns, false on in-context gpt turns and true on trained ones. Written one file per family
  (``<dir>/<family>.jsonl`` or ``.parquet``); read from a file or a directory of JSONL, JSON-list or parquet files
  (the published ones are ``data/<family>-00000-of-00001-<hash>.parquet``), the family taken from the file name.
- **ShareGPT** general chat: ``{"id", "conversations": [{"from", "value"}]}``, ``from`` in human/gpt/system (and
  user/assistant/chatgpt/bing/bard as common dumps write). Without ``loss`` every assistant turn is trained.
  Conversations that are empty or have no assistant turn are dropped and counted, not errors.
- **OpenAI messages**: ``{"id", "messages": [{"role", "content"}], "loss": [...]}`` (``loss`` optional on input).

One conversion per record, whatever the layout (:func:`example_from_record`, Example records and trajectories
included), and one loop over files (:func:`read_layout`); the ``read_<layout>`` functions read one given layout, and
:func:`agenttuning.data.reader.read_data`, the reader the stages call, tells the layout itself and reads Hugging Face
dataset ids too. Every reader validates every record and raises :class:`~agenttuning.jsonl.RecordError` naming the
file and line (or ``row N`` for JSON lists and parquet) before returning anything. Round trips are lossless where
the target holds the information: AgentInstruct has no system turns (writing one is an error); ShareGPT writes
``loss`` only when some assistant turn is untrained; none of the layouts stores ``source``, which the reader is told.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from agenttuning.data.example import Example, Source, from_trajectory
from agenttuning.data.rows import data_files, read_all, write_rows
from agenttuning.jsonl import write_atomic
from agenttuning.rollout.react import step_from_reply
from agenttuning.schema import Step, Task, Trajectory, Turn, conversation, to_openai_messages

AGENTINSTRUCT_FAMILIES = ("os", "db", "alfworld", "webshop", "kg", "mind2web")
Layout = Literal["examples", "agentinstruct", "sharegpt", "openai", "trajectories"]
LAYOUTS: tuple[Layout, ...] = ("examples", "agentinstruct", "sharegpt", "openai", "trajectories")
SHAREGPT_ROLES = {
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant", "bing": "assistant", "bard": "assistant",
    "system": "system",
}  # fmt: skip
_SHAREGPT_FROM = {"user": "human", "assistant": "gpt", "system": "system"}
_AGENTINSTRUCT_ROLE = {"human": "user", "gpt": "assistant"}


def agentinstruct_schema() -> Any:
    """The pyarrow schema of the published parquet files: ``conversations: list<struct<from, loss, value>>, id``."""
    import pyarrow as pa

    turn = pa.struct([("from", pa.string()), ("loss", pa.bool_()), ("value", pa.string())])
    return pa.schema([("conversations", pa.list_(turn)), ("id", pa.string())])


@dataclass(frozen=True)
class Loaded:
    """What a reader returns: the examples in file order, drops by reason, the files read, and the layout each file
    (or Hub dataset split, ``id[split]``) was read in."""

    examples: list[Example]
    dropped: Counter[str] = field(default_factory=Counter)
    files: list[Path] = field(default_factory=list)
    layouts: dict[str, Layout] = field(default_factory=dict)

    @property
    def layout(self) -> Layout | None:
        """The one layout everything was read in; None when files differ or no record was read."""
        kinds = set(self.layouts.values())
        return kinds.pop() if len(kinds) == 1 else None


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


def _id_and_turns(item: Example | Trajectory) -> tuple[str, list[Turn]]:
    """A record's id and turns: a trajectory's are its task id and derived :func:`~agenttuning.schema.conversation`."""
    return (item.task.id, conversation(item)) if isinstance(item, Trajectory) else (item.id, item.turns)


def to_agentinstruct_record(item: Example | Trajectory) -> dict[str, Any]:
    """Example or trajectory -> AgentInstruct record ``{"id", "conversations": [{"from", "loss", "value"}]}``."""
    rid, turns = _id_and_turns(item)
    convs = []
    for i, t in enumerate(turns):
        if t.role == "system":
            raise ValueError(f"{rid}: turns[{i}] is a system turn, which the AgentInstruct layout cannot hold")
        convs.append({"from": _SHAREGPT_FROM[t.role], "loss": bool(t.loss) if t.role == "assistant" else None,
                      "value": t.content})  # fmt: skip
    return {"id": rid, "conversations": convs}


def turns_from_agentinstruct(record: dict[str, Any]) -> list[Turn]:
    """Validate an AgentInstruct record and return its turns (ValueError says what is wrong)."""
    convs = record.get("conversations")
    if not isinstance(convs, list) or not convs:
        raise ValueError("'conversations' must be a non-empty list")
    turns = []
    for i, c in enumerate(convs):
        if not isinstance(c, dict) or c.get("from") not in _AGENTINSTRUCT_ROLE or not isinstance(c.get("value"), str):
            raise ValueError(f"conversations[{i}] needs 'from' in human/gpt and a string 'value'")
        role = _AGENTINSTRUCT_ROLE[c["from"]]
        loss = c.get("loss")
        if role == "user" and loss not in (None, False):
            raise ValueError(f"conversations[{i}]: a human turn cannot carry loss={loss!r}")
        turns.append(Turn(role=role, content=c["value"], loss=None if role == "user" else bool(loss)))
    return turns


def trajectory_from_agentinstruct(
    record: dict[str, Any],
    *,
    env: str = "unknown",
    split: Literal["train", "test"] = "train",
    reward: float = 1.0,
    success: bool = True,
    policy: str = "agentinstruct",
) -> Trajectory:
    """AgentInstruct record -> Trajectory (the inverse of :func:`to_agentinstruct_record` on what the layout holds).

    The layout holds no rewards; the published data keeps only successful trajectories, hence the defaults.
    The last observation, which the layout drops, comes back as ''.
    """
    turns = turns_from_agentinstruct(record)
    first_trained = next((i for i, t in enumerate(turns) if t.role == "assistant" and t.loss), len(turns))
    if first_trained == 0 or turns[first_trained - 1].role != "user":
        raise ValueError("the first trained gpt turn must follow a human turn (the task)")
    context, task_turn, rest = turns[: first_trained - 1], turns[first_trained - 1], turns[first_trained:]
    steps: list[Step] = []
    for j in range(0, len(rest), 2):
        reply = rest[j]
        if reply.role != "assistant" or not reply.loss:
            raise ValueError("after the task, turns must alternate trained gpt replies and human observations")
        obs = rest[j + 1].content if j + 1 < len(rest) else ""
        if j + 1 < len(rest) and rest[j + 1].role != "user":
            raise ValueError("after the task, turns must alternate trained gpt replies and human observations")
        steps.append(step_from_reply(reply.content, observation=obs))
    task = Task(id=str(record.get("id", "")), env=env, split=split, instruction=task_turn.content)
    return Trajectory(
        task=task,
        policy=policy,
        context=context,
        initial_observation=task_turn.content,
        steps=steps,
        reward=reward,
        success=success,
    )


def from_agentinstruct_record(record: dict[str, Any], *, family: str, source: Source = "agent") -> Example:
    """AgentInstruct record -> Example; ValueError says what is wrong (missing ``value``, loss on a human turn...)."""
    if not isinstance(record.get("id"), str):
        raise ValueError("'id' must be a string")
    return Example(id=record["id"], source=source, family=family, turns=turns_from_agentinstruct(record))


def read_agentinstruct(path: str | os.PathLike[str], *, source: Source = "agent") -> Loaded:
    """Read AgentInstruct records from a file or a directory; each file's family comes from its name."""
    return read_layout(path, "agentinstruct", source=source)


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


def read_sharegpt(path: str | os.PathLike[str], *, family: str | None = None, source: Source = "general") -> Loaded:
    """Read ShareGPT conversations (file or directory); empty ones and ones with no assistant turn are counted out.

    ``family`` defaults to the file's name (``sharegpt.jsonl`` -> ``sharegpt``); a missing id becomes ``<stem>-<line>``.
    """
    return read_layout(path, "sharegpt", family=family, source=source)


def write_sharegpt(examples: Iterable[Example], path: str | os.PathLike[str]) -> int:
    """Write ShareGPT records to ``path`` (.jsonl, .json or .parquet), atomically."""
    return write_rows(path, (to_sharegpt_record(ex) for ex in examples))


# ------------------------------------------------------------------------------------------------------------
# OpenAI messages


def to_openai_record(item: Example | Trajectory) -> dict[str, Any]:
    """Example or trajectory -> ``{"id", "messages": [...], "loss": [...]}``: OpenAI messages plus per-turn loss."""
    rid, turns = _id_and_turns(item)
    return {"id": rid, "messages": to_openai_messages(turns), "loss": [t.loss for t in turns]}


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
    return read_layout(path, "openai", family=family, source=source)


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
    return read_layout(path, "examples").examples


# ------------------------------------------------------------------------------------------------------------
# Any layout: one conversion per record, one loop over files


_LAYOUT_SOURCE: dict[Layout, Source] = {"agentinstruct": "agent", "trajectories": "agent", "sharegpt": "general",
                                        "openai": "general"}  # fmt: skip


def example_from_record(
    record: dict[str, Any], layout: Layout, *, family: str, default_id: str, source: Source | None = None
) -> Example | str:
    """One record in ``layout`` -> Example, or the reason a ShareGPT / OpenAI record is dropped (``'empty'``...).

    ``family`` names the examples of layouts that hold none (AgentInstruct, ShareGPT, OpenAI); Example records and
    trajectories carry their own. ``source`` None keeps the layout's own: ``agent`` for AgentInstruct and
    trajectories, ``general`` for ShareGPT and OpenAI, the record's for Example records; given, it replaces it.
    ``default_id`` is the id of a ShareGPT / OpenAI record that has none. ValueError says what is wrong.
    """
    if layout == "sharegpt":
        return from_sharegpt_record(record, default_id=default_id, family=family, source=source or "general")
    if layout == "openai":
        return from_openai_record(record, default_id=default_id, family=family, source=source or "general")
    if layout == "agentinstruct":
        return from_agentinstruct_record(record, family=family, source=source or "agent")
    if layout == "examples":
        ex = Example.model_validate(record)
    elif layout == "trajectories":
        ex = from_trajectory(Trajectory.model_validate(record))
    else:
        raise ValueError(f"unknown layout {layout!r} (one of {', '.join(LAYOUTS)})")
    return ex if source is None or ex.source == source else ex.model_copy(update={"source": source})


def read_layout(
    path: str | os.PathLike[str],
    layout: Layout | Callable[[dict[str, Any]], Layout],
    *,
    family: str | None = None,
    source: Source | None = None,
) -> Loaded:
    """Every record of a file or folder (JSONL, JSON list, parquet) as examples, each file read in one layout.

    ``layout`` is that layout, or a function telling it from each file's first record (the reader's
    :func:`agenttuning.data.reader.detect_layout`), so a folder may mix layouts file by file. ``family`` defaults to
    the file's name (``db.jsonl`` -> ``db``), a missing ShareGPT / OpenAI id to ``<stem>-<line>``; ``source`` as for
    :func:`example_from_record`. Everything is validated before anything is returned; RecordError names file:line.
    """
    if isinstance(layout, str) and layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r} (one of {', '.join(LAYOUTS)})")
    layouts: dict[str, Layout] = {}

    def one(f: Path, r: dict[str, Any], line: int) -> Example | str:
        kind = layouts.get(str(f)) or layouts.setdefault(str(f), layout if isinstance(layout, str) else layout(r))
        return example_from_record(r, kind, family=family or file_family(f), default_id=f"{f.stem}-{line}",
                                   source=source)  # fmt: skip

    rows = read_all(path, one)
    kept = [x for _, _, x in rows if isinstance(x, Example)]
    dropped = Counter(x for _, _, x in rows if isinstance(x, str))
    return Loaded(kept, dropped, data_files(path), layouts)
