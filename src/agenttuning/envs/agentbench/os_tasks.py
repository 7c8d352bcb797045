"""AgentBench's operating-system tasks, imported from its task files and run in our bubblewrap sandbox: the
``agentbench_os`` environment.

**Task files** (AgentBench's ``data/os_interaction``): a ``.json`` file holds a list of tasks (or one task), a
``.jsonl`` file one task a line. A task has a ``description``; ``create`` with ``local`` (the Docker image,
``default`` when absent) and ``init`` (a script, or a list of them, run first); an optional ``start`` (a command run
in the agent's shell before it starts, usually a background job); and ``evaluation`` with either ``match`` (the
exact answer: a string, compared with the stripped answer, or ``{"answer"|"regex", "strip"}``) or ``check`` (a
script, or a list of them) plus ``example`` (a reference solution). A script is a string of bash, or an object with
``code`` or ``file`` and an optional ``language`` (``bash`` by default, or ``python``).

**How AgentBench reads them**, which this module follows (AgentBench's ``os_interaction/task.py``): a ``file`` is
read relative to the *script directory* its configuration pairs with the task file (``data/1/*.json`` with
``scripts/1/``, ``data/dev.json`` with ``scripts/dev/``); the example is read only for a ``check`` task; a ``check``
list is run in order, each script given the agent's answer and then the standard output of every script before it
as further arguments (bash: ``$1``, ``$2``...; python: ``sys.argv[1]``...), and a ``null`` entry stands for the
example, so ``[null, integer-match.py]`` compares the answer with what the example prints on the system as the agent
left it; the first script that exits non-zero fails the task. A ``create`` that is not an object (one dev task has a
list there) is read as no ``create`` at all, as AgentBench's ``in`` tests read it.

**Import** (:func:`import_agentbench_os`): every script a task names is read and inlined into its payload
(:class:`AgentBenchOsPayload`), so the imported task file is self-contained. Then each task is *verified* in the real
sandbox (``verify=True``): its init and start run, the expert (below) solves it under our grader, and a wrong answer
does not. A task that cannot run here is left out, with the reason, in the :class:`OsImportReport`: another image
than ``default``, a script language we do not run, a script file that is not there, or a verification that fails
(an init that writes under ``/usr``, which is read-only in our sandbox; a package install or download, with no
network; a check the example itself does not pass here).

**Episodes** (:class:`AgentBenchOsEnv`, the ``os`` environment's :class:`~agenttuning.envs.os.env.OsEnv` with its
actions, limits and sandbox): a fresh sandbox, the init scripts (each a one-off script, as AgentBench runs them with
``docker exec``), then ``start`` in the agent's persistent shell (as AgentBench sends it to the container's shell);
the agent's ``answer(...)`` or ``finish`` is graded by the match or by the check list, run in the same sandbox.
Scripts run with their standard error dropped: AgentBench passes only standard output on.

**Expert**: a match task: the match string (AgentBench does not read an example for one). A check task: the example
in the agent's shell, then, when the check list compares with the example's output (a ``null`` entry), that output
as the answer, else ``finish``.

**Where the tasks come from**: as ``agentbench_db``: the environment reads the task file named by :data:`TASKS_ENV`
(our Task JSON lines, as ``agenttuning tasks import agentbench-os`` writes them), or a small built-in sample of our
own in AgentBench's layout; ``agenttuning rollout --env agentbench_os --tasks FILE`` runs any imported file.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal, cast

from pydantic import BaseModel, ConfigDict, model_validator

from agenttuning.envs import derivation
from agenttuning.envs.agentbench.db import Note, Skipped
from agenttuning.envs.base import Split, StepResult
from agenttuning.jsonl import iter_json
from agenttuning.envs.os.definition import OsDefinition
from agenttuning.envs.os.env import COMMAND_WALL_S, LIMITS, SCRIPT_WALL_S, OsEnv
from agenttuning.envs.os.sandbox import CommandResult, Sandbox
from agenttuning.schema import Task, Turn

NAME = "agentbench_os"
VERSION = 1
ENV_ID = f"{NAME}-v{VERSION}"
TASKS_ENV = "AGENTTUNING_AGENTBENCH_OS_TASKS"  # a task file for the registered environment
SCRIPT_OUTPUT_CHARS = 16_000  # what a check script's output may pass on to the next one
LANGUAGES = ("bash", "python")  # AgentBench also names c and c++ (compiled with gcc): not run here

# A one-off script in AgentBench's way: the code is the first argument, the grader's arguments follow; only
# standard output is kept (AgentBench passes stdout on). ``exec`` so the exit status is the script's own.
_RUNNER = {
    "bash": 'code=$1; shift; exec bash -c "$code" agentbench-script "$@" 2>/dev/null',
    "python": 'code=$1; shift; exec python3 -c "$code" "$@" 2>/dev/null',
}
_RUNNER_KEEP_STDERR = {k: v.removesuffix(" 2>/dev/null") for k, v in _RUNNER.items()}


# --------------------------------------------------------------------------------------------------------------
# Payload


class Script(BaseModel):
    """A script of a task, inlined at import: its language and its code."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    language: Literal["bash", "python"] = "bash"
    code: str


class AgentBenchOsPayload(BaseModel):
    """An imported AgentBench OS task: its scripts (inlined) and how it is graded."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    index: int  # its place in its task file (AgentBench's index within the file)
    source: str = ""  # the task file's name
    labels: list[str] = []  # AgentBench's labels (file, process, user, ...)
    init: list[Script] = []  # run in order, each as a one-off script; all must exit 0
    start: str | None = None  # run in the agent's shell after init (a background job, usually)
    match: str | None = None  # the exact answer ...
    match_regex: str | None = None  # ... or a pattern the answer must contain (re.search)
    match_strip: bool = True  # strip the answer before matching (AgentBench's default for a string match)
    check: list[Script | None] | None = None  # run in order; None stands for the example
    example: Script | None = None  # the reference solution (read for a check task only, as AgentBench reads it)

    @model_validator(mode="after")
    def _one_way_to_grade(self) -> AgentBenchOsPayload:
        ways = (self.match is not None) + (self.match_regex is not None) + (self.check is not None)
        if ways != 1:
            raise ValueError("an AgentBench OS task needs exactly one of 'match', 'match_regex' and 'check'")
        if self.check is not None:
            if not self.check:
                raise ValueError("'check' is an empty list")
            if self.example is None:
                raise ValueError("a check task needs its 'example' (the expert, and the check's null entries)")
        if self.match_regex is not None:
            re.compile(self.match_regex)
        return self

    @property
    def compares_with_example(self) -> bool:
        """Whether the check compares the answer with the example's output (a null entry in the check list)."""
        return self.check is not None and any(s is None for s in self.check)


def run_task_script(sandbox: Sandbox, script: Script, *args: str, keep_stderr: bool = False) -> CommandResult:
    """Run one of a task's scripts as AgentBench does (a one-off process given ``args``), standard output only
    unless ``keep_stderr`` (an init's error is worth showing)."""
    runner = (_RUNNER_KEEP_STDERR if keep_stderr else _RUNNER)[script.language]
    return sandbox.run_script(runner, script.code, *args, timeout_s=SCRIPT_WALL_S, output_chars=SCRIPT_OUTPUT_CHARS)


# --------------------------------------------------------------------------------------------------------------
# Episodes


class AgentBenchOsEnv(OsEnv):
    """One episode of an AgentBench OS task: the ``os`` environment's shell, actions and limits; the task's init,
    start and grading."""

    payload_model = AgentBenchOsPayload

    def start(self, task: Task, payload: AgentBenchOsPayload) -> str:  # type: ignore[override]
        sandbox = Sandbox(LIMITS)
        sandbox.start()
        self._sandbox = sandbox
        for n, script in enumerate(payload.init, 1):
            result = run_task_script(sandbox, script, keep_stderr=True)
            if result.timed_out or result.exit_code != 0:
                raise RuntimeError(f"task {task.id}: its init script {n} failed ({result.exit_code}): "
                                   f"{result.output[:300]}")
        if payload.start:
            result = sandbox.run(payload.start, timeout_s=COMMAND_WALL_S)
            if result.timed_out:
                raise RuntimeError(f"task {task.id}: its start command did not return: {result.output[:300]}")
        return task.instruction

    def _grade(self, answer: str) -> StepResult:
        assert self._sandbox is not None
        p = cast(AgentBenchOsPayload, self.payload)
        given = answer.strip() if p.match_strip else answer
        if p.match is not None:
            ok = given == p.match
        elif p.match_regex is not None:
            ok = re.search(p.match_regex, given) is not None
        else:
            ok, params = True, [answer]
            for script in p.check or []:
                result = run_task_script(self._sandbox, script or cast(Script, p.example), *params)
                if result.timed_out or result.exit_code != 0:
                    ok = False
                    break
                params.append(result.output)
        return self.final(1.0 if ok else 0.0, ok, answer=answer[:200])


# --------------------------------------------------------------------------------------------------------------
# The family


def _last_observation(history: list[Turn]) -> str:
    """What the expert's example printed: the last observation, less the environment's bracketed notes."""
    text = history[-1].content if history and history[-1].role == "user" else ""
    if text == "(the command printed nothing)":
        return ""
    lines = text.rstrip("\n").split("\n")
    while lines and lines[-1].startswith("[") and lines[-1].endswith("]"):
        lines.pop()
    return "\n".join(lines).strip()


class AgentBenchOsDefinition(OsDefinition):
    """AgentBench's OS tasks (an imported task file) in the ``os`` environment's sandbox (see the module docs)."""

    name = NAME
    version = VERSION
    description = "AgentBench's OS tasks (an imported AgentBench task file), run in a bubblewrap sandbox."
    env_class = AgentBenchOsEnv  # type: ignore[assignment]

    def __init__(self, tasks_file: str | os.PathLike[str] | None = None):
        self.tasks_file = tasks_file

    def derive_tasks(self) -> dict[str, list[Task]]:
        """The tasks of the task file (``tasks_file``, else :data:`TASKS_ENV`), by their ``split``; without a file,
        the built-in sample."""
        from agenttuning.envs.agentbench.task_files import imported_tasks

        return imported_tasks(self.tasks_file, TASKS_ENV, self.id, os_sample_tasks)

    def expert(self, task: Task, history: list[Turn]) -> str:  # type: ignore[override]
        """A match task: the match string at once. A check task: the example, then its output as the answer
        (when the check compares with it) or ``finish``."""
        p = cast(AgentBenchOsPayload, self.payload(task))
        if p.check is None:
            gold = p.match if p.match is not None else ""
            return f"Thought: I know the answer.\nAction: answer({gold})"
        example = cast(Script, p.example)
        if not any(t.role == "assistant" for t in history):
            command = example.code if example.language == "bash" else f"python3 - <<'__AGENTBENCH_PY__'\n{example.code}\n__AGENTBENCH_PY__"
            return ("Thought: I will run the commands that solve this task.\n"
                    f"Action: bash\n```bash\n{command}\n```")  # fmt: skip
        if p.compares_with_example:
            return f"Thought: The command printed the answer.\nAction: answer({_last_observation(history)})"
        return "Thought: The change is made.\nAction: finish"

    def wrong_answer(self, task: Task) -> str:
        """At once, nothing looked at: the match with a letter added (or one more, a number); for a check task
        ``answer(-1)`` (no count, size or name here is -1) or, for a change, ``finish`` with nothing changed."""
        p = cast(AgentBenchOsPayload, self.payload(task))
        if p.match is not None:
            gold = p.match.strip()
            wrong = str(int(gold) + 1) if gold.lstrip("-").isdigit() else gold + "x"
            return f"Thought: I will answer without looking.\nAction: answer({wrong})"
        if p.check is None or p.compares_with_example:
            return "Thought: I will answer without looking.\nAction: answer(-1)"
        return "Thought: I will end the task now.\nAction: finish"


definition = cache(AgentBenchOsDefinition)  # the entry point: one shared instance per process


# --------------------------------------------------------------------------------------------------------------
# Import


@dataclass
class OsImportReport:
    """What :func:`import_agentbench_os` made of its source: the tasks, those left out and the notes, all with
    reasons."""

    source: str
    records: int = 0
    verified: bool = False  # every imported task was run in the sandbox and solved by its expert
    tasks: list[Task] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    skipped_files: dict[int, str] = field(default_factory=dict)  # a skipped entry's task file (for a directory)

    def counts(self) -> dict[str, int]:
        """How many tasks were read, imported (verified: run here and solved by their own example), left out."""
        payloads = [t.payload for t in self.tasks]
        return {
            "records": self.records,
            "imported": len(self.tasks),
            "skipped": len(self.skipped),
            "match": sum(p.get("check") is None for p in payloads),
            "check": sum(p.get("check") is not None for p in payloads),
        }

    def summary(self) -> str:
        """One paragraph a person reads: the counts, then every task left out and every note with its reason."""
        c = self.counts()
        how = "run here and solved by their own example" if self.verified else "not run here (verify=False)"
        lines = [f"{self.source}: {c['records']} tasks read, {c['imported']} imported ({c['match']} match, "
                 f"{c['check']} check; {how}), {c['skipped']} left out"]
        lines += [f"  left out {self.skipped_files.get(n, '')}#{s.index}: {s.reason}"
                  for n, s in enumerate(self.skipped)]
        lines += [f"  note {n.task_id}: {n.reason}" for n in self.notes]
        return "\n".join(lines)


class _Skip(Exception):
    """A task that cannot be imported or cannot run here (the message is the reason)."""


def read_os_task_file(path: str | os.PathLike[str]) -> list[Any]:
    """The records of an AgentBench OS task file: a ``.json`` list (or one object), or one object a line."""
    p = Path(path)
    try:
        if p.suffix == ".jsonl":
            return [record for _, record in iter_json(p)]  # a bad line is named as file:line
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{p}: cannot read the task file: {e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: not JSON: {e}") from None
    if isinstance(data, dict):
        return [data]
    if not isinstance(data, list):
        raise ValueError(f"{p}: a .json task file holds a JSON list of tasks (or one task)")
    return data


def default_script_dir(task_file: Path) -> Path:
    """Where a task file's ``file`` references are read from, when not given: AgentBench's configuration pairs
    ``data/NAME.json`` and ``data/NAME/*.json`` with ``scripts/NAME/``; a copy that keeps ``scripts/NAME/`` next to
    the file (``os_interaction/dev.json`` with ``os_interaction/scripts/dev/``) works too. The first of those that
    exists, else the file's own directory."""
    here = task_file.resolve().parent
    for candidate in (here / "scripts" / task_file.stem, here.parent / "scripts" / task_file.stem,
                      here.parent.parent / "scripts" / here.name):
        if candidate.is_dir():
            return candidate
    return here


def _script(obj: Any, script_dir: Path, what: str) -> Script:
    """A script object as AgentBench reads it (a string is bash; ``code`` or ``file``, and ``language``)."""
    if isinstance(obj, str):
        return Script(code=obj)
    if not isinstance(obj, dict):
        raise _Skip(f"{what} is not a script (a string, or an object with 'code' or 'file')")
    language = obj.get("language", "bash")
    if language not in LANGUAGES:
        raise _Skip(f"{what} is in {language!r}; only {', '.join(LANGUAGES)} scripts run here")
    if "file" in obj:
        path = script_dir / str(obj["file"])
        try:
            code = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise _Skip(f"{what}: cannot read {path}: {e}") from None
    elif "code" in obj:
        code = obj["code"]
    else:
        raise _Skip(f"{what} has neither 'code' nor 'file'")
    if not isinstance(code, str):
        raise _Skip(f"{what}'s code is not a string")
    return Script(language=language, code=code)


def _payload(index: int, record: Any, script_dir: Path, source: str) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise _Skip("not a JSON object")
    if not isinstance(record.get("description"), str) or not record["description"].strip():
        raise _Skip("no 'description'")
    out: dict[str, Any] = {"index": index, "source": source,
                           "labels": [str(x) for x in record.get("labels") or [] if isinstance(x, str | int)]}
    create = record.get("create")
    if isinstance(create, dict):
        image = create.get("local", "default")
        if image != "default":
            raise _Skip(f"needs AgentBench's {image!r} image; only 'default' (the host's packages) runs here")
        init = create.get("init")
        if init is not None:
            scripts = init if isinstance(init, list) else [init]
            out["init"] = [_script(s, script_dir, f"init script {n}").model_dump()
                           for n, s in enumerate(scripts, 1) if s is not None]
    start = record.get("start")
    if start is not None:
        out["start"] = _script(start, script_dir, "'start'").code  # AgentBench sends its code to the shell
    evaluation = record.get("evaluation")
    if not isinstance(evaluation, dict):
        raise _Skip("no 'evaluation'")
    if "match" in evaluation:
        match = evaluation["match"]
        if isinstance(match, str):
            out["match"] = match
        elif isinstance(match, dict) and isinstance(match.get("answer", match.get("regex")), str):
            out["match" if "answer" in match else "match_regex"] = match.get("answer", match.get("regex"))
            out["match_strip"] = bool(match.get("strip", False))
        else:
            raise _Skip("'evaluation.match' is neither a string nor {'answer' or 'regex': ...}")
    elif "check" in evaluation:
        check = evaluation["check"]
        scripts = check if isinstance(check, list) else [check]
        out["check"] = [None if s is None else _script(s, script_dir, f"check script {n}").model_dump()
                        for n, s in enumerate(scripts, 1)]
        if "example" not in evaluation:
            raise _Skip("a check task without 'evaluation.example' (no expert)")
        out["example"] = _script(evaluation["example"], script_dir, "'evaluation.example'").model_dump()
    else:
        raise _Skip("'evaluation' has neither 'match' nor 'check'")
    try:
        AgentBenchOsPayload.model_validate(out)
    except ValueError as e:
        raise _Skip(f"not a valid task: {e}") from None
    return out


def _episode_success(defn: AgentBenchOsDefinition, task: Task, reply: Any) -> tuple[bool, str]:
    """Run one episode of ``task`` in the real sandbox, ``reply(history)`` giving each reply (the expert's or the
    wrong answer's: ``Thought:`` then ``Action:``; ``envs`` does not import ``rollout``'s parser); (success, why not)."""
    env = defn.make()
    try:
        try:
            history = [Turn(role="user", content=env.reset(task))]
        except RuntimeError as e:
            return False, str(e).removeprefix(f"task {task.id}: ")
        for _ in range(defn.max_turns):
            text = reply(history)
            result = env.step(text.partition("\nAction: ")[2])  # our own replies: Thought, then Action
            history += [Turn(role="assistant", content=text), Turn(role="user", content=result.observation)]
            if result.terminated or result.truncated:
                return bool(result.success), "" if result.success else (
                    f"its own example does not pass our grader (the example printed: {history[-3].content[:200]!r})"
                    if len(history) > 3 else "graded as failed")
        return False, "no end within the turn budget"
    finally:
        env.close()


_CAUSES = (
    ("Read-only file system", "it writes under /usr, which is read-only in our sandbox"),
    ("Network is unreachable", "it needs the network, which our sandbox does not have"),
    ("Temporary failure in name resolution", "it needs the network, which our sandbox does not have"),
)


def _with_cause(why: str) -> str:
    """``why`` cut to its first distinct lines, led by its cause when it is a known one."""
    lines = list(dict.fromkeys(line for line in why.splitlines() if line.strip()))
    short = " / ".join(lines[:3])[:300]
    causes = [cause for marker, cause in _CAUSES if marker in why]
    return f"{causes[0]}: {short}" if causes else short


def _verify(task: Task) -> str | None:
    """Why ``task`` cannot run here (init, start, the expert's solution or a wrong answer misbehave), or None."""
    defn = AgentBenchOsDefinition()
    ok, why = _episode_success(defn, task, lambda history: defn.expert(task, history))
    if not ok:
        return _with_cause(why)
    wrong, _ = _episode_success(defn, task, lambda history: defn.wrong_answer(task))
    if wrong:
        return "a wrong answer passes its check too (the check cannot tell)"
    return None


def import_os_records(records: Iterable[Any], *, prefix: str, script_dir: Path, source: str = "",
                      split: Split = "test", test_percent: int | None = None, verify: bool = True,
                      report: OsImportReport | None = None) -> OsImportReport:
    """:func:`import_agentbench_os` on one file's records already read (task ids ``{prefix}-{index:05d}``)."""
    report = report if report is not None else OsImportReport(source)
    for index, record in enumerate(records):
        report.records += 1
        try:
            payload = _payload(index, record, script_dir, Path(source).name)
        except _Skip as e:
            report.skipped_files[len(report.skipped)] = f"{Path(source).name}"
            report.skipped.append(Skipped(index, str(e)))
            continue
        description = record["description"]
        task_split = split if test_percent is None else derivation.split_of("agentbench-os-split", description,
                                                                            test_percent)
        task = Task(id=f"{prefix}-{index:05d}", env=ENV_ID, split=task_split, instruction=description,
                    payload=payload)
        why = _verify(task) if verify else None
        if why is not None:
            report.skipped_files[len(report.skipped)] = f"{Path(source).name}"
            report.skipped.append(Skipped(index, why))
            continue
        if isinstance(record.get("create"), list):
            report.notes.append(Note(index, task.id, "'create' is a list, read as no 'create' (as AgentBench does)"))
        report.tasks.append(task)
    return report


def import_agentbench_os(path: str | os.PathLike[str], *, script_dir: str | os.PathLike[str] | None = None,
                         split: Split = "test", test_percent: int | None = None,
                         verify: bool = True) -> OsImportReport:
    """Import an AgentBench OS task file, or every ``*.json`` / ``*.jsonl`` file directly in a directory (see the
    module docs), into ``agentbench_os`` tasks.

    ``script_dir``: where ``file`` references are read from (default: :func:`default_script_dir` of each file);
    ``split`` / ``test_percent``: as :func:`agenttuning.envs.agentbench.db.import_agentbench_db`'s (a split by a
    hash of the description, so tasks with the same text stay together); ``verify``: run every task in the sandbox
    and leave out those that cannot run here (needs the sandbox: :func:`~.sandbox.unavailable_reason`)."""
    p = Path(path)
    if test_percent is not None and not 0 <= test_percent <= 100:
        raise ValueError(f"test_percent must be between 0 and 100, not {test_percent}")
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix in (".json", ".jsonl") and f.is_file())
        if not files:
            raise ValueError(f"{p}: no .json or .jsonl task file in this directory")
    elif p.is_file():
        files = [p]
    else:
        raise ValueError(f"{p}: no such task file or directory")
    if verify:
        from agenttuning.envs.os.sandbox import unavailable_reason

        reason = unavailable_reason()
        if reason:
            raise RuntimeError(f"cannot verify the tasks of {p} in the sandbox ({reason}); import with verify=False")
    report = OsImportReport(str(p), verified=verify)
    for f in files:
        prefix = f"{NAME}-" + (re.sub(r"[^A-Za-z0-9_.]+", "_", f.stem) or "tasks")
        import_os_records(read_os_task_file(f), prefix=prefix, source=str(f),
                          script_dir=Path(script_dir) if script_dir is not None else default_script_dir(f),
                          split=split, test_percent=test_percent, verify=verify, report=report)
    return report


# --------------------------------------------------------------------------------------------------------------
# The built-in sample: tasks of our own, written in AgentBench's layout (scripts inline)

_INTEGER_MATCH = "import sys\nsys.exit(0 if int(sys.argv[1]) == int(sys.argv[2]) else 1)\n"
_STRING_MATCH = "import sys\nsys.exit(0 if sys.argv[1].strip() == sys.argv[2].strip() else 1)\n"

SAMPLE: dict[str, list[dict[str, Any]]] = {
    "train": [
        {"description": "How many files ending in .txt are directly inside /root/docs?",
         "create": {"local": "default", "init": {"code": "mkdir -p /root/docs && cd /root/docs && "
                                                         "touch a.txt b.txt c.md d.txt && mkdir e.txt"}},
         "evaluation": {"match": "3"}, "labels": ["file"]},
        {"description": "How many lines does /root/notes have?",
         "create": {"init": "seq 1 17 > /root/notes"},
         "evaluation": {"check": [None, {"language": "python", "code": _INTEGER_MATCH}],
                        "example": "wc -l < /root/notes"}, "labels": ["file"]},
        {"description": "Make /root/run.sh executable by its owner only (mode 700).",
         "create": {"init": {"code": "printf 'echo hi\\n' > /root/run.sh && chmod 644 /root/run.sh"}},
         "evaluation": {"check": {"code": "[ \"$(stat -c %a /root/run.sh)\" = 700 ]"},
                        "example": {"code": "chmod 700 /root/run.sh"}}, "labels": ["permission"]},
    ],
    "test": [
        {"description": "A program appends to one of the files in /root/out every second. Which one? "
                        "Answer with its name only.",
         "create": {"init": {"code": "mkdir -p /root/out && touch /root/out/a.log /root/out/b.log /root/out/c.log"}},
         "start": "(while true; do echo tick >> /root/out/b.log; sleep 1; done) &",
         "evaluation": {"match": "b.log"}, "labels": ["process", "background"]},
        {"description": "Which user owns /root/shared?",
         "create": {"init": {"code": "useradd -m carol && mkdir /root/shared && chown carol /root/shared"}},
         "evaluation": {"check": [None, {"language": "python", "code": _STRING_MATCH}],
                        "example": "stat -c %U /root/shared"}, "labels": ["user"]},
        {"description": "Create the directory /root/backup holding a copy of /root/app.conf.",
         "create": {"init": "echo 'port=8080' > /root/app.conf"},
         "evaluation": {"check": {"code": "cmp -s /root/app.conf /root/backup/app.conf"},
                        "example": "mkdir -p /root/backup && cp /root/app.conf /root/backup/"}, "labels": ["file"]},
    ],
}


def os_sample_tasks() -> dict[str, list[Task]]:
    """The built-in sample, imported (not run: the sandbox may be missing where tasks are only listed)."""
    return dict(_os_sample_tasks())


@cache
def _os_sample_tasks() -> Mapping[str, list[Task]]:
    out: dict[str, list[Task]] = {}
    for split, records in SAMPLE.items():
        report = import_os_records(records, prefix=f"{NAME}-sample-{split}", script_dir=Path("."),
                                   source=f"sample-{split}", split=cast(Split, split), verify=False)
        if report.skipped:
            raise RuntimeError(f"the built-in sample does not import: {report.summary()}")
        out[split] = report.tasks
    return out
