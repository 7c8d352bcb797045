"""AgentBench's DB tasks, imported from its task files and run offline on SQLite: the ``agentbench_db`` environment.

**Import** (:func:`import_agentbench_db`): an AgentBench DB task file (JSON lines, or a JSON list, as AgentBench
reads both: ``description``, ``add_description``, ``table`` with ``table_name`` and ``table_info``'s ``columns``
and ``rows``, ``type``, ``label``, ``sql.query``, ``answer_md5``) becomes our :class:`~agenttuning.schema.Task`
records, one per task, numbered by its place in the file (AgentBench's sample index): ``agentbench_db-dev-00007``
is the eighth task of ``dev.jsonl``. A task's payload (:class:`AgentBenchDbPayload`) carries the table, the gold
and the type. Each task is built and its gold run on SQLite at import; the :class:`ImportReport` lists every task
left out, and every imported task whose gold does not reproduce AgentBench's answer, with the reason.

**Episodes** (:class:`AgentBenchDbEnv`, built on the ``db`` environment's :class:`~agenttuning.envs.db.env.DbEnv`:
its actions, guards and table grading): the task's table is built in a private in-memory SQLite database (the
dialect, :mod:`.db_dialect`), the agent sees AgentBench's prompt and its task text (``description``, a newline,
``add_description``), runs one statement per ``Action: Operation`` (its ```sql block; MySQL's syntax translated where
SQLite differs; the result cut at 800 characters as AgentBench cuts it) and ends with ``Action: Answer`` and
``Final Answer: [...]``. A question is graded against its label by AgentBench's comparison (:mod:`.db_grading`);
an INSERT, UPDATE or DELETE by the table it leaves: its rows, as a multiset, must equal those of the table the gold
statement produces (computed at import). The budget is AgentBench's: 15 operations, then the answer (16 turns).

**Expert**: for a change, the gold statement, then the answer; for a question whose gold query reproduces the label
under the comparison, that query, then the label; for one whose gold query does not (AgentBench never runs its gold
queries, and some are broken: see ``docs/envs/agentbench.md``), the label at once.

**Where the tasks come from**: the registered environment reads the task file named by the environment variable
:data:`TASKS_ENV` (our Task JSON lines, as ``agenttuning tasks import agentbench-db`` writes them), or, without it, a
small built-in sample in AgentBench's layout (:mod:`.db_sample`), so ``agenttuning check`` and ``envs`` work out of
the box. ``agenttuning rollout --env agentbench_db --tasks FILE`` runs any imported file as it is;
``AgentBenchDbDefinition(tasks_file=...)`` does the same from Python.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agenttuning.envs import derivation
from agenttuning.envs.base import EnvDefinition, Split, StepResult
from agenttuning.envs.db import grading as db_grading
from agenttuning.envs.db.definition import adversarial_sql
from agenttuning.envs.db.env import DbEnv
from agenttuning.envs.db.expert import render_answer
from agenttuning.jsonl import iter_json
from agenttuning.envs.agentbench import db_dialect
from agenttuning.envs.agentbench import db_grading as ab_grading
from agenttuning.envs.db.guards import (
    STEP_BUDGET,
    TIME_LIMIT_S,
    Budget,
    first_statement,
    install_guards,
    take_refusal,
)
from agenttuning.schema import Task, Turn

NAME = "agentbench_db"
VERSION = 1
ENV_ID = f"{NAME}-v{VERSION}"
TASKS_ENV = "AGENTTUNING_AGENTBENCH_DB_TASKS"  # a task file for the registered environment
OBSERVATION_CHARS = 800  # AgentBench cuts a statement's output here ...
TRUNCATED = "[TRUNCATED]"  # ... and appends this
MAX_OPERATIONS = 15  # AgentBench's max_round for dbbench: operations before the answer
CHANGE_TYPES = {"INSERT": "insert", "UPDATE": "update", "DELETE": "delete"}
GOLD_ROWS_READ = 1000  # the most rows of a gold query's result read at import

# AgentBench's instructions for its DB task (v0.2, src/server/tasks/dbbench/__init__.py; Apache-2.0), which
# AgentInstruct's database trajectories also start with: a model tuned on them sees the same text here.
SYSTEM_PROMPT = """\
I will ask you a question, then you should help me operate a MySQL database with SQL to answer the question.
You have to explain the problem and your solution to me and write down your thoughts.
After thinking and explaining thoroughly, every round you can choose to operate or to answer.
your operation should be like this:
Action: Operation
```sql
SELECT * FROM table WHERE condition;
```
You MUST put SQL in markdown format without any other comments. Your SQL should be in one line.
Every time you can only execute one SQL statement. I will only execute the statement in the first SQL code block. \
Every time you write a SQL, I will execute it for you and give you the output.
If you are done operating, and you want to commit your final answer, then write down:
Action: Answer
Final Answer: ["ANSWER1", "ANSWER2", ...]
DO NOT write this pattern unless you are sure about your answer. I expect an accurate and correct answer.
Your answer should be accurate. Your answer must be exactly the same as the correct answer.
If the question is about modifying the database, then after done operation, your answer field can be anything.
If your response cannot match any pattern I mentioned earlier, you will be judged as FAIL immediately.
Your input will be raw MySQL response, you have to deal with it by yourself."""


# --------------------------------------------------------------------------------------------------------------
# Payload


class Column(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    type: str = "TEXT"  # the MySQL type as the task file gives it (mapped to a SQLite affinity when built)


class Table(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    columns: list[Column] = Field(min_length=1)
    rows: list[list[Any]]


class AgentBenchDbPayload(BaseModel):
    """An imported AgentBench DB task: its tables, its type, its gold and how the gold fared at import."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    index: int  # its place in the AgentBench file (AgentBench's sample index)
    source: str = ""  # AgentBench's ``source`` (wikisql, wikitq, ...)
    type: str  # AgentBench's type: INSERT, UPDATE, DELETE, or a question's category (counting, ranking, other, ...)
    kind: Literal["select", "insert", "update", "delete"]
    tables: list[Table] = Field(min_length=1)
    gold_sql: str | None = None  # the gold query (a question's ``sql.query``) or statement (a change's label)
    label: list[Any] = []  # a question's gold answer list, as AgentBench compares it
    gold_hashes: dict[str, str] = {}  # a change: each table's hash after the gold statement (db grading's table hash)
    answer_md5: str | None = None  # a change: AgentBench's MySQL hash of the gold table, kept for reference
    gold_reproduces: bool | None = None  # question: its gold query's rows pass the comparison; change: our gold
    # table has AgentBench's answer_md5; None: nothing to compare
    gold_note: str = ""  # why not, when it does not

    @model_validator(mode="after")
    def _gold_for_the_kind(self) -> AgentBenchDbPayload:
        if self.kind != "select":
            if not self.gold_sql or not self.gold_hashes:
                raise ValueError(f"a change ({self.kind}) needs its gold statement and 'gold_hashes'")
            unknown = set(self.gold_hashes) - {t.name for t in self.tables}
            if unknown:
                raise ValueError(f"'gold_hashes' names tables the task does not have: {sorted(unknown)}")
        return self


# --------------------------------------------------------------------------------------------------------------
# Databases


def build_database(tables: Iterable[Table], *, typed: bool = True) -> sqlite3.Connection:
    """A private in-memory database holding ``tables`` (see :mod:`.db_dialect`), MySQL's functions added, no guards
    yet (:func:`~agenttuning.envs.db.guards.install_guards` comes next). Raises on a table SQLite cannot build."""
    conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    try:
        for t in tables:
            db_dialect.create_table(conn, t.name, [(c.name, c.type) for c in t.columns], t.rows, typed=typed)
        db_dialect.install_functions(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def _statement(sql: str) -> str:
    """A statement as the episode runs it: its first statement, translated (the agent's and the gold alike)."""
    return db_dialect.translate(first_statement(sql))


def _run_gold(conn: sqlite3.Connection, sql: str) -> list[tuple] | None:
    """Run a gold statement on a guarded ``conn`` under the episode's budget: a query's rows (at most
    :data:`GOLD_ROWS_READ`), None for a change; raises ``sqlite3.Error`` with the reason on failure."""
    budget = Budget(STEP_BUDGET, TIME_LIMIT_S)
    budget.install(conn)
    take_refusal()
    try:
        cur = conn.execute(_statement(sql))
        return cur.fetchmany(GOLD_ROWS_READ) if cur.description is not None else None
    except sqlite3.Error as e:
        if budget.exceeded:
            raise sqlite3.OperationalError(f"it ran past the episode's budget ({TIME_LIMIT_S:g} s)") from None
        refused = take_refusal()
        raise sqlite3.OperationalError(refused or str(e)) from None
    finally:
        conn.set_progress_handler(None, 0)


def table_hashes(conn: sqlite3.Connection, tables: Iterable[Table]) -> dict[str, str]:
    """Each table's order-independent hash (:func:`agenttuning.envs.db.grading.table_hash`, the ``db`` grading's)."""
    return {t.name: db_grading.table_hash(conn, t.name.replace('"', '""')) for t in tables}


# --------------------------------------------------------------------------------------------------------------
# Import


@dataclass(frozen=True)
class Skipped:
    """A task of the file that was not imported, and why."""

    index: int
    reason: str


@dataclass(frozen=True)
class Note:
    """An imported task whose gold does not reproduce AgentBench's answer (or that needed a liberty), and why."""

    index: int
    task_id: str
    reason: str


@dataclass
class ImportReport:
    """What :func:`import_agentbench_db` made of a file: the tasks, those left out and the notes, all with reasons."""

    source: str
    records: int = 0
    tasks: list[Task] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """How many tasks were read, imported and left out, and how many imported ones their own gold solves."""
        payloads = [t.payload for t in self.tasks]
        return {
            "records": self.records,
            "imported": len(self.tasks),
            "skipped": len(self.skipped),
            "questions": sum(p["kind"] == "select" for p in payloads),
            "changes": sum(p["kind"] != "select" for p in payloads),
            "gold_reproduces": sum(p["gold_reproduces"] is True for p in payloads),
            "gold_differs": sum(p["gold_reproduces"] is False for p in payloads),
        }

    def summary(self) -> str:
        """One paragraph a person reads: the counts, then every skipped task and every note with its reason."""
        c = self.counts()
        lines = [f"{self.source}: {c['records']} tasks read, {c['imported']} imported ({c['questions']} questions, "
                 f"{c['changes']} changes), {c['skipped']} left out; the gold reproduces AgentBench's answer for "
                 f"{c['gold_reproduces']}, differs for {c['gold_differs']}"]
        lines += [f"  left out #{s.index}: {s.reason}" for s in self.skipped]
        lines += [f"  note {n.task_id}: {n.reason}" for n in self.notes]
        return "\n".join(lines)


class _Skip(Exception):
    """A record that cannot be imported (the message is the reason)."""


def read_agentbench_file(path: str | os.PathLike[str]) -> list[Any]:
    """The records of an AgentBench task file: a JSON list (a ``.json`` file) or one JSON object a line."""
    p = Path(path)
    if p.suffix == ".json":
        data = json.loads(p.read_text(encoding="utf-8"))
        if not isinstance(data, list):
            raise ValueError(f"{p}: a .json task file holds a JSON list of tasks")
        return data
    return [record for _, record in iter_json(p)]  # JSON lines: a bad line is named as file:line


def _tables(record: Mapping[str, Any]) -> list[Table]:
    raw = record.get("table")
    if raw is None:
        raise _Skip("no 'table' (a task that names a database file instead needs AgentBench's own databases)")
    tables = []
    for t in raw if isinstance(raw, list) else [raw]:
        try:
            info = t["table_info"]
            tables.append(Table(name=str(t["table_name"]), rows=info["rows"], columns=[
                Column(name=str(c["name"]), type=str(c.get("type") or "TEXT")) for c in info["columns"]]))
        except (KeyError, TypeError, ValueError) as e:
            raise _Skip(f"its table is not in AgentBench's layout ({type(e).__name__}: {e})") from None
    names = [t.name.lower() for t in tables]
    if len(set(names)) != len(names):
        raise _Skip("two tables share a name")
    return tables


def _md5(value: Any) -> str | None:
    m = re.search(r"[0-9a-fA-F]{32}", str(value)) if value else None
    return m.group(0).lower() if m else None


def _gold_question(record: Mapping[str, Any], tables: list[Table], label: list[Any]) -> dict[str, Any]:
    sql = (record.get("sql") or {}).get("query") if isinstance(record.get("sql"), dict) else None
    if not sql:
        return {"gold_sql": None, "gold_reproduces": None, "gold_note": "no gold query: the expert answers the label"}
    conn = build_database(tables)
    try:
        install_guards(conn)
        rows = _run_gold(conn, sql)
    except sqlite3.Error as e:
        return {"gold_sql": sql, "gold_reproduces": False, "gold_note": f"the gold query fails on SQLite: {e}"}
    finally:
        conn.close()
    given = render_answer([list(r) for r in rows or []])
    if ab_grading.answers_match(ab_grading.parse_answer(given), label):
        return {"gold_sql": sql, "gold_reproduces": True, "gold_note": ""}
    shown = given if len(given) <= 200 else given[:200] + "..."
    return {"gold_sql": sql, "gold_reproduces": False,
            "gold_note": f"the gold query returns {shown}, which does not match the label {label!r}"}


def _gold_change(record: Mapping[str, Any], tables: list[Table], kind: str) -> dict[str, Any]:
    label = record.get("label")
    sql = label[0] if isinstance(label, list) and label else label
    if not isinstance(sql, str) or not sql.strip():
        raise _Skip(f"no gold statement (a {kind.upper()} task's label holds it)")
    conn = build_database(tables)
    try:
        before = table_hashes(conn, tables)
        install_guards(conn)
        try:
            _run_gold(conn, sql)
        except sqlite3.Error as e:
            raise _Skip(f"the gold statement fails on SQLite: {e}") from None
        try:
            after = table_hashes(conn, tables)
        except sqlite3.Error as e:
            raise _Skip(f"the task's table cannot be read after the gold statement: {e}") from None
    finally:
        conn.close()
    if after == before:
        raise _Skip("the gold statement leaves the table as it was (doing nothing would pass)")
    out: dict[str, Any] = {"gold_sql": sql, "gold_hashes": after, "answer_md5": _md5(record.get("answer_md5")),
                           "gold_reproduces": None, "gold_note": ""}
    if out["answer_md5"] is not None and len(tables) == 1:  # AgentBench's hash, recomputed on an all-TEXT copy
        text = build_database(tables, typed=False)
        try:
            install_guards(text)
            _run_gold(text, sql)
            rows = text.execute(f"SELECT * FROM main.{db_dialect.quote(tables[0].name)}").fetchall()
        except sqlite3.Error as e:
            out.update(gold_reproduces=False, gold_note=f"the gold statement fails on all-TEXT columns: {e}")
        else:
            ours = db_dialect.mysql_table_md5(rows)
            out["gold_reproduces"] = ours == out["answer_md5"]
            if not out["gold_reproduces"]:
                out["gold_note"] = (f"the table the gold statement leaves has MySQL hash {ours}, not AgentBench's "
                                    f"{out['answer_md5']}")
        finally:
            text.close()
    return out


def _payload(index: int, record: Any) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise _Skip("not a JSON object")
    types = record.get("type")
    kind_type = types[0] if isinstance(types, list) and types else types
    if not isinstance(kind_type, str) or not kind_type:
        raise _Skip("no 'type'")
    if not isinstance(record.get("description"), str):
        raise _Skip("no 'description'")
    tables = _tables(record)
    try:  # the tables must build as they are: a duplicate column name, a row of the wrong length
        build_database(tables).close()
    except (sqlite3.Error, ValueError) as e:
        raise _Skip(f"its table cannot be built: {e}") from None
    kind = CHANGE_TYPES.get(kind_type.upper(), "select")
    base = {"index": index, "source": str(record.get("source") or ""), "type": kind_type, "kind": kind,
            "tables": [t.model_dump() for t in tables]}
    if kind != "select":
        return {**base, **_gold_change(record, tables, kind)}
    label = record.get("label")
    if not isinstance(label, list):
        raise _Skip("a question's 'label' is not a list")
    return {**base, "label": label, **_gold_question(record, tables, label)}


def _task_prefix(path: Path) -> str:
    return f"{NAME}-" + (re.sub(r"[^A-Za-z0-9_.]+", "_", path.stem) or "tasks")


def import_records(records: Iterable[Any], *, prefix: str, source: str = "", split: Split = "test",
                   test_percent: int | None = None, require_gold: bool = False) -> ImportReport:
    """:func:`import_agentbench_db` on records already read (task ids ``{prefix}-{index:05d}``)."""
    report = ImportReport(source)
    for index, record in enumerate(records):
        report.records += 1
        try:
            payload = _payload(index, record)
        except _Skip as e:
            report.skipped.append(Skipped(index, str(e)))
            continue
        task_id = f"{prefix}-{index:05d}"
        if payload["gold_reproduces"] is False and require_gold:
            report.skipped.append(Skipped(index, payload["gold_note"]))
            continue
        if payload["gold_note"]:
            report.notes.append(Note(index, task_id, payload["gold_note"]))
        unknown = sorted({c["type"] for t in payload["tables"] for c in t["columns"]
                          if not db_dialect.known_type(c["type"])})
        if unknown:
            report.notes.append(Note(index, task_id, f"column types read as TEXT: {', '.join(unknown)}"))
        description = record["description"]
        instruction = f"{description}\n{record.get('add_description') or ''}"
        task_split = split if test_percent is None else derivation.split_of("agentbench-db-split", description,
                                                                            test_percent)
        report.tasks.append(Task(id=task_id, env=ENV_ID, split=task_split, instruction=instruction, payload=payload))
    return report


def import_agentbench_db(path: str | os.PathLike[str], *, split: Split = "test", test_percent: int | None = None,
                         require_gold: bool = False) -> ImportReport:
    """Import an AgentBench DB task file (see the module docs) into ``agentbench_db`` tasks.

    ``split``: the split every task goes to (AgentBench's dev and test files are both evaluation sets: ``test``);
    ``test_percent``: instead, about this share in ``test`` and the rest in ``train``, by a hash of each task's
    description; ``require_gold``: leave out the questions whose gold query does not reproduce their label (by
    default they are imported, graded against the label as AgentBench grades them, and noted). The report's
    ``tasks`` are the Task records; write them with :func:`agenttuning.jsonl.write_atomic`."""
    p = Path(path)
    if test_percent is not None and not 0 <= test_percent <= 100:
        raise ValueError(f"test_percent must be between 0 and 100, not {test_percent}")
    return import_records(read_agentbench_file(p), prefix=_task_prefix(p), source=str(p), split=split,
                          test_percent=test_percent, require_gold=require_gold)


# --------------------------------------------------------------------------------------------------------------
# Episodes


class AgentBenchDbEnv(DbEnv):
    """One episode of an AgentBench DB task: the ``db`` environment's actions and guards on the task's own table."""

    payload_model = AgentBenchDbPayload

    @property
    def _task_payload(self) -> AgentBenchDbPayload:
        return cast(AgentBenchDbPayload, self.payload)

    def start(self, task: Task, payload: AgentBenchDbPayload) -> str:  # type: ignore[override]
        conn = build_database(payload.tables)
        authorizer = install_guards(conn)
        with self._conn_lock:
            self._conn, self._authorizer = conn, authorizer
        self._stop.clear()
        return task.instruction

    def run_sql(self, sql: str) -> tuple[str, bool]:
        """The statement translated from MySQL (:func:`.db_dialect.translate`), its output cut as AgentBench cuts it."""
        observation, failed = super().run_sql(db_dialect.translate(sql))
        if len(observation) > OBSERVATION_CHARS:
            observation = observation[:OBSERVATION_CHARS] + TRUNCATED
        return observation, failed

    def _grade(self, text: str) -> StepResult:
        p = self._task_payload
        if p.kind == "select":
            given = ab_grading.parse_answer(text)
            success = ab_grading.answers_match(given, p.label)
            return self.final(1.0 if success else 0.0, success, answer=given)
        wrote = self._authorizer is None or self._authorizer.wrote
        success = wrote and all(self._table_matches(name.replace('"', '""'), want)
                                for name, want in p.gold_hashes.items())
        return self.final(1.0 if success else 0.0, success, answer=text[:200])


# --------------------------------------------------------------------------------------------------------------
# The family


def _operation(sql: str) -> str:
    return f"Action: Operation\n```sql\n{sql.strip()}\n```"


class AgentBenchDbDefinition(EnvDefinition[AgentBenchDbPayload]):
    """AgentBench's DB task on SQLite, its tasks from an imported task file (see the module docs)."""

    name = NAME
    version = VERSION
    description = "AgentBench's DB tasks (an imported AgentBench task file), run on SQLite."
    max_turns = MAX_OPERATIONS + 1
    env_class = AgentBenchDbEnv

    def __init__(self, tasks_file: str | os.PathLike[str] | None = None):
        self.tasks_file = tasks_file

    # --- tasks ---------------------------------------------------------------------------------------------
    def derive_tasks(self) -> dict[str, list[Task]]:
        """The tasks of the task file (``tasks_file``, else :data:`TASKS_ENV`), by their ``split``; without a file,
        the built-in sample."""
        from agenttuning.envs.agentbench.task_files import imported_tasks

        return imported_tasks(self.tasks_file, TASKS_ENV, self.id, sample_tasks)

    # --- prompts -------------------------------------------------------------------------------------------
    @property
    def system_prompt(self) -> str:
        return SYSTEM_PROMPT

    # --- episodes ------------------------------------------------------------------------------------------
    def expert(self, task: Task, history: list[Turn]) -> str:
        p = self.payload(task)
        replies = sum(1 for t in history if t.role == "assistant")
        if p.kind != "select":
            if replies == 0:
                return (f"Thought: One {p.kind.upper()} statement on the table makes this change.\n"
                        + _operation(cast(str, p.gold_sql)))
            return "Thought: The change is done.\nAction: Answer\nFinal Answer: []"
        answer = json.dumps(p.label, ensure_ascii=False)
        if replies == 0 and p.gold_reproduces and p.gold_sql:
            return "Thought: I will query the table for what the question asks.\n" + _operation(p.gold_sql)
        if replies == 0:
            return f"Thought: The answer is {answer}.\nAction: Answer\nFinal Answer: {answer}"
        return f"Thought: The query gives the answer.\nAction: Answer\nFinal Answer: {answer}"

    def wrong_answer(self, task: Task) -> str:
        """An answer at once, with nothing changed: an empty list (or, for a task whose label is empty, one
        item); a change is left undone."""
        p = self.payload(task)
        answer = '["none of them"]' if p.kind == "select" and not p.label else "[]"
        return f"Thought: I will answer without looking at the table.\nAction: Answer\nFinal Answer: {answer}"

    def adversarial_actions(self, task: Task) -> list[str]:
        """Generic garbage, the ``db`` family's SQL probes on the task's tables, and MySQL syntax the translation
        reads (a string of backslashes, unterminated quotes, SHOW and DESCRIBE of what is not there)."""
        names = [db_dialect.quote(t.name) for t in self.payload(task).tables]

        def op(sql: str) -> str:
            return f"Operation\n```sql\n{sql}\n```"

        return super().adversarial_actions(task) + adversarial_sql(names, names[0]) + [
            op("SELECT '" + "\\" * 19_990 + "';"),
            op("SELECT 'unterminated \\' ; DESCRIBE `nope`"),
            op("DESCRIBE `no such table`;"),
            op("SHOW TABLES;"),
            op("SELECT CONCAT(" + ", ".join(["printf('%.*c', 40000, 'x')"] * 30) + ");"),
            op("SELECT LOCATE('a', 'b', -9223372036854775808), LEFT('abc', 9223372036854775807), IF('1e999', 1, 0);"),
        ]


def sample_tasks() -> dict[str, list[Task]]:
    """The built-in sample (:mod:`.db_sample`), imported: a few tasks of each kind in each split."""
    return dict(_sample_tasks())


@cache
def _sample_tasks() -> Mapping[str, list[Task]]:
    from agenttuning.envs.agentbench import db_sample

    out: dict[str, list[Task]] = {}
    for split, records in (("train", db_sample.TRAIN), ("test", db_sample.TEST)):
        report = import_records(records, prefix=f"{NAME}-sample-{split}", source=f"sample {split}",
                                split=cast(Split, split))
        if report.skipped:
            raise RuntimeError(f"the built-in sample does not import: {report.summary()}")
        out[split] = report.tasks
    return out

definition = cache(AgentBenchDbDefinition)  # the entry point: one shared instance per process
