"""Self-instruct for ``os`` (issue 14, item 2) against a real loopback OpenAI-compatible server playing the teacher.

The teacher double returns a fixed mix: good tasks (questions, with and without a stated answer, and a change with
a check script), a broken reply, a broken item, an over-long item, an init that fails, a solution that fails, one
that leaves its own check failing, a stated answer the solution does not print, an answer that changes from run to
run, a check that passes on the untouched system, a task whose expert breaks in the episode, a fork bomb, an endless
loop and a flood of output, a copy of a train task, of a test task, a duplicate within the batch (same words, and
same init and solution in other words), and more items than asked for. Everything runs for real: the HTTP server,
the OpenAI client, the bubblewrap sandbox; the teacher's scripts only ever run inside it.
"""

from __future__ import annotations

import json
import time
from itertools import count

import pytest

from agenttuning.data.decontam import ContaminationIndex
from agenttuning.envs.os import definition
from agenttuning.envs.os import instruct as os_instruct
from agenttuning.envs.os.instruct import (CAPS, INIT_WALL_S, SOLUTION_WALL_S, OsDraft, Rejected, _seed_entry,
                                          draft_task, read_drafts, solution_key)  # fmt: skip
from agenttuning.envs.os.tasks import OsPayload
from agenttuning.jsonl import read_records
from agenttuning.schema import Task
from agenttuning.stages.instruct import InstructConfig, reasons, run
from agenttuning.stages.manifest import read_stage_manifest
from tests.openai_server import FakeOpenAIServer

_WHY_NOT = definition().unavailable_reason()
pytestmark = pytest.mark.skipif(_WHY_NOT is not None, reason=f"the os sandbox cannot run here: {_WHY_NOT}")

GOOD_QUESTION = {
    "instruction": "How many lines of /root/inventory/stock.csv mention the warehouse Tarragona? Answer with the "
                   "number only.",
    "init": "mkdir -p /root/inventory\nprintf 'bolt,Tarragona\\nnut,Vigo\\nscrew,Tarragona\\nwasher,Tarragona\\n' "
            "> /root/inventory/stock.csv\n",
    "solution": "grep -c Tarragona /root/inventory/stock.csv",
    "answer": "3",
}
GOOD_CHANGE = {
    "instruction": "Make the script /root/tools/backup-now.sh executable by its owner, and by nobody else.",
    "init": "mkdir -p /root/tools\nprintf '#!/bin/sh\\necho ok\\n' > /root/tools/backup-now.sh\n"
            "chmod 644 /root/tools/backup-now.sh\n",
    "solution": "chmod 744 /root/tools/backup-now.sh",
    "check": '[ "$(stat -c %a /root/tools/backup-now.sh)" = 744 ] || exit 1\n',
}
GOOD_DERIVED = {  # no "answer": the solution's output is the answer
    "instruction": "Which user owns the file /root/shared/report.txt? Answer with the user name only.",
    "init": "mkdir -p /root/shared\necho q3 > /root/shared/report.txt\nchown daemon /root/shared/report.txt\n",
    "solution": "stat -c %U /root/shared/report.txt",
}


def _replies() -> list[str]:
    d = definition()
    first = [
        GOOD_QUESTION,
        GOOD_CHANGE,
        {"instruction": "Where is the solution?", "init": ""},  # unparsable
        dict(GOOD_QUESTION, init="true\n" * 1000),  # too_long
        {"instruction": "Count the files in /root/empty.", "init": "mkdir /root/empty; exit 3",
         "solution": "ls /root/empty | wc -l"},  # init_fails
        {"instruction": "What is in /root/missing.txt?", "init": "",
         "solution": "cat /root/missing.txt"},  # solution_fails
        {"instruction": "Delete /root/old.log.", "init": "echo x > /root/old.log", "solution": "rm -f /root/old.txt",
         "check": "[ ! -e /root/old.log ]"},  # check_fails: the solution misses its own check
        {"instruction": "How many bytes are in /root/b.bin? Answer with the number only.",
         "init": "head -c 10 /dev/zero > /root/b.bin", "solution": "stat -c %s /root/b.bin",
         "answer": "12"},  # answer_mismatch
        {"instruction": "Pick a number.", "init": "", "solution": "echo $RANDOM$RANDOM"},  # unstable
        {"instruction": "Create the directory /root/made.", "init": "", "solution": "mkdir -p /root/made",
         "check": "[ -d /root ]"},  # wrong_passes: the check passes on the untouched system
        {"instruction": "Write three backticks into /root/fence.txt, then create /root/done.", "init": "",
         "solution": "echo '```' > /root/fence.txt; touch /root/done",
         "check": "[ -e /root/done ]"},  # expert_fails: the solution breaks the expert's ```bash fence
        {"instruction": "How many files are in /root? Answer with the number only.", "init": ":(){ :|:& };:",
         "solution": "ls /root | wc -l"},  # sandbox_limit: a fork bomb
        {"instruction": "Wait for it.", "init": "", "solution": "while true; do :; done"},  # sandbox_limit: a loop
        {"instruction": "Say y.", "init": "", "solution": "yes"},  # sandbox_limit: 16 MiB of output
        _seed_entry(d.tasks("train")[0]),  # duplicate of the environment's own task
        _seed_entry(d.tasks("test")[0]),  # test_contaminated
        dict(GOOD_QUESTION),  # duplicate within the batch
    ]
    reworded = dict(GOOD_CHANGE, instruction="Set the mode of /root/tools/backup-now.sh to rwxr--r--.")
    third = [GOOD_DERIVED, reworded, GOOD_QUESTION]  # same init+solution as a kept task: duplicate; then excess
    return [json.dumps(first), "Sure! Here are your tasks: [{oops", "```json\n" + json.dumps(third) + "\n```"]


@pytest.fixture(scope="module")
def test_index() -> ContaminationIndex:
    return ContaminationIndex.build(definition().tasks("test"))


def test_exactly_the_good_tasks_are_kept_and_each_rejection_is_counted(tmp_path, test_index):
    replies, n = _replies(), count()
    with FakeOpenAIServer(lambda messages: replies[next(n)]) as srv:
        config = InstructConfig(env="os", teacher="openai:teacher", base_url=srv.base_url, n=36, per_request=17,
                                concurrency=1, max_retries=0)  # fmt: skip
        started = time.perf_counter()
        out = run(config, tmp_path / "instruct", index=test_index)
        took = time.perf_counter() - started
        prompt = srv.requests[0].body["messages"][-1]["content"]

    d = definition()
    want = [draft_task(d, OsDraft.model_validate(x)) for x in (GOOD_QUESTION, GOOD_CHANGE, GOOD_DERIVED)]
    kept = read_records(tmp_path / "instruct" / "tasks.jsonl", Task)
    assert [t.id for t in kept] == [t.id for t in want]
    assert kept == want
    assert all(t.id.startswith("os-instruct-") and t.env == "os-v1" and t.split == "train" for t in kept)
    assert [t.payload["answer"] for t in kept] == ["3", None, "daemon"]
    assert out.rejected == {"excess": 1, "unparsable": 1, "too_long": 1, "sandbox_limit": 3, "init_fails": 1,
                            "solution_fails": 1, "answer_mismatch": 1, "check_fails": 1, "unstable": 1,
                            "expert_fails": 1, "wrong_passes": 1, "test_contaminated": 1, "duplicate": 3}
    assert list(out.rejected) == [r for r in reasons(os_instruct) if r in out.rejected]  # in the order checked
    assert out.rejected_replies == {"unparsable_reply": 1}
    assert (out.requests, out.asked, out.drafts, out.kept) == (3, 36, 20, 3)
    assert out.drafts == out.kept + sum(out.rejected.values())
    assert took < 60, f"the batch took {took:.1f} s"  # the loop costs SOLUTION_WALL_S; everything else is fast

    lines = [json.loads(x) for x in (tmp_path / "instruct" / "rejections.jsonl").read_text().splitlines()]
    assert len(lines) == 18  # 17 drafts and 1 reply
    limits = sorted(r["detail"].split(":")[0] for r in lines if r["reason"] == "sandbox_limit")
    assert limits == ["in the background", "solution", "solution"], limits
    manifest = read_stage_manifest(tmp_path / "instruct")
    assert manifest is not None and manifest.stage == "instruct" and manifest.result["kept"] == 3
    # the teacher saw the description, the format and seed tasks (as drafts)
    assert d.description in prompt and '"init"' in prompt and '"check"' in prompt and "/root" in prompt
    assert sum(t.instruction in prompt for t in d.tasks("train")) == config.seeds


def test_kept_tasks_grade_in_the_real_environment_and_ids_are_content_addressed():
    d = definition()
    task = draft_task(d, OsDraft.model_validate(GOOD_QUESTION))
    assert isinstance(task, Task) and task.payload["answer"] == "3" and task.payload["kind"] == "instruct"
    OsPayload.model_validate(task.payload)
    assert draft_task(d, OsDraft.model_validate(GOOD_QUESTION)).id == task.id  # same draft, same id
    env = d.make()
    try:
        env.reset(task)
        assert env.step("answer(3)").reward == 1.0
        env.reset(task)
        assert env.step("answer(4)").reward == 0.0
        change = draft_task(d, OsDraft.model_validate(GOOD_CHANGE))
        assert isinstance(change, Task) and change.payload["check"] == GOOD_CHANGE["check"]
        env.reset(change)
        assert env.step("finish").reward == 0.0  # untouched
        env.reset(change)
        env.step("bash\n```bash\nchmod 744 /root/tools/backup-now.sh\n```")
        assert env.step("finish").reward == 1.0
    finally:
        env.close()
    assert solution_key(change) != solution_key(task)
    reworded = draft_task(d, OsDraft.model_validate(dict(GOOD_CHANGE, instruction="Other words.")))
    assert isinstance(reworded, Task) and reworded.id != change.id and solution_key(reworded) == solution_key(change)


def _gives_back_its_gold(tasks: list[Task]) -> None:
    d = definition()
    for task in tasks:
        made = draft_task(d, OsDraft.model_validate(_seed_entry(task)))
        assert isinstance(made, Task), (task.id, made)
        assert (made.payload["answer"], made.payload["check"]) == (task.payload["answer"], task.payload["check"])
        assert solution_key(made) == solution_key(task)


def test_derived_tasks_written_as_drafts_give_back_their_own_gold():
    """The verification rejects no good task: derived tasks of several kinds (questions; changes; background
    processes to find, count or kill), written as drafts, come back with the derived gold answer or check."""
    kinds = {"kill_by_name", "kill_pid_file", "write_pid", "process_count", "add_cron_job", "tar_read_file",
             "passwd_home", "octal_mode", "move_files", "env_value"}
    sample = {t.payload["kind"]: t for t in definition().tasks("test") if t.payload["kind"] in kinds}
    assert set(sample) == kinds
    _gives_back_its_gold(list(sample.values()))


@pytest.mark.slow
def test_every_derived_task_written_as_a_draft_gives_back_its_own_gold():
    d = definition()
    _gives_back_its_gold(d.tasks("train") + d.tasks("test"))


def test_the_command_keeps_verified_tasks_that_rollout_then_runs(tmp_path):
    """`agenttuning instruct --env os` end to end (the default test index: every registered test split), then the
    kept tasks through `agenttuning rollout --tasks` with the expert: every episode scores 1."""
    from typer.testing import CliRunner

    from agenttuning.cli import app

    broken = {"instruction": "Read /root/nothing.", "init": "", "solution": "cat /root/nothing"}
    reply = json.dumps([GOOD_QUESTION, GOOD_CHANGE, GOOD_DERIVED, broken])
    with FakeOpenAIServer(lambda messages: reply) as srv:
        r = CliRunner().invoke(app, ["instruct", "--env", "os", "--teacher", "openai:teacher", "--base-url",
                                     srv.base_url, "--api-key", "k", "-n", "4", "--per-request", "4", "--out",
                                     str(tmp_path / "i")])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "4 / 4 / 3" in r.output and "solution_fails" in r.output
    r = CliRunner().invoke(app, ["rollout", "--env", "os", "--tasks", str(tmp_path / "i" / "tasks.jsonl"),
                                 "--policy", "expert", "--out", str(tmp_path / "roll.jsonl"), "--no-progress"])
    assert r.exit_code == 0, r.output
    trajs = [json.loads(x) for x in (tmp_path / "roll.jsonl").read_text().splitlines()]
    assert len(trajs) == 3 and all(t["success"] and t["reward"] == 1.0 for t in trajs)


def test_replies_are_read_strictly():
    items, whole = read_drafts(json.dumps([
        dict(GOOD_QUESTION, answer=3),  # a number, not a string: strict types
        dict(GOOD_CHANGE, answer="x"),  # a question or a change, not both
        dict(GOOD_QUESTION, kind="question"),  # an unknown key
        {"instruction": "q", "solution": ""},  # an empty solution
        dict(GOOD_QUESTION, solution="x" * (CAPS["solution"] + 1)),
        GOOD_DERIVED,
    ]), 10)
    assert whole is None
    assert [getattr(i, "reason", "ok") for i in items] == ["unparsable"] * 4 + ["too_long", "ok"]
    assert read_drafts('{"instruction": "q"}', 5)[1].reason == "unparsable_reply"
    made = draft_task(definition(), OsDraft(instruction="q", init="echo a\x00b > /root/f", solution="cat /root/f"))
    assert isinstance(made, Rejected) and made.reason == "unparsable"  # a NUL would be dropped on the way in


# (draft fields, reason, seconds it may take at most: the script's bound plus the sandbox's grace and some slack)
ADVERSARIAL = [
    ({"init": ":(){ :|:& };:"}, "sandbox_limit", 3),  # fork bomb in init (it backgrounds itself)
    ({"solution": ":(){ :|:& };:; echo 1"}, "sandbox_limit", 3),  # fork bomb in the solution
    ({"init": "( sleep 0.05; :(){ :|:& };: ) >/dev/null 2>&1 &"}, "sandbox_limit", 3),  # a bomb a little later
    ({"init": "while true; do :; done"}, "sandbox_limit", INIT_WALL_S + 3),  # endless loop in init
    ({"init": "trap '' INT TERM; while true; do :; done"}, "sandbox_limit", INIT_WALL_S + 3),
    ({"solution": "trap '' INT; while true; do :; done"}, "sandbox_limit", SOLUTION_WALL_S + 4),
    ({"init": "yes"}, "sandbox_limit", 3),  # a flood of output in init
    ({"solution": "head -c 100000000 /dev/urandom"}, "sandbox_limit", 3),  # and in the solution
    ({"solution": "seq 1 100000 | tail -n 1; seq 1 1000 >&2"}, "unusable_answer", 3),  # cut output
    ({"solution": "python3 -c 'b = bytearray(1 << 31)'; echo 1"}, "sandbox_limit", 5),  # memory hog
    ({"solution": "exit 0"}, "sandbox_limit", 3),  # kills the shell
    ({"solution": "echo 3; kill -9 $$"}, "sandbox_limit", 3),  # kills its shell
    ({"init": "head -c 200000000 /dev/zero > /root/big"}, "init_fails", 5),  # fills the disk
    ({"solution": "echo '[the command timed out after 1 s and was stopped]'"}, "sandbox_limit", 3),  # only rejected
]


@pytest.mark.parametrize(("fields", "reason", "bound"), ADVERSARIAL, ids=[str(i) for i in range(len(ADVERSARIAL))])
def test_adversarial_scripts_are_contained_and_rejected_in_bounded_time(fields, reason, bound):
    d = definition()
    draft = OsDraft.model_validate({"instruction": "adversarial", "init": "", "solution": "echo 1", **fields})
    started = time.perf_counter()
    made = draft_task(d, draft)
    took = time.perf_counter() - started
    assert isinstance(made, Rejected) and made.reason == reason, made
    assert took < bound, f"{took:.1f} s"
