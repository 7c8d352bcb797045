"""The ``agentbench_os`` environment: AgentBench's OS task files imported (scripts resolved and inlined, tasks that
cannot run here left out with the reason) and run in the real bubblewrap sandbox. The task files here are our own,
written in AgentBench's layout (``data/NAME.json`` with ``scripts/NAME/``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agenttuning.envs.agentbench.os_tasks import (
    ENV_ID,
    AgentBenchOsDefinition,
    default_script_dir,
    import_agentbench_os,
    read_os_task_file,
)
from agenttuning.envs.os.sandbox import unavailable_reason
from agenttuning.jsonl import write_atomic
from agenttuning.rollout.conformance import check_env

needs_sandbox = pytest.mark.skipif(unavailable_reason() is not None, reason=f"no sandbox: {unavailable_reason()}")

INTEGER_MATCH = "from sys import argv\nexit(0 if int(argv[1]) == int(argv[2]) else 1)\n"
TASKS = [
    {"description": "How many files are in /root/box?", "create": {"local": "default", "init": {"file": "init/box.sh"}},
     "evaluation": {"check": [None, {"language": "python", "file": "check/integer-match.py"}],
                    "example": {"code": "ls /root/box | wc -l"}}, "labels": ["file"]},
    {"description": "What word does /root/w hold?", "create": {"init": "echo kiwi > /root/w"},
     "evaluation": {"match": "kiwi"}},
    {"description": "Put the line 'ok' into /root/flag.", "create": {"local": "default"},
     "evaluation": {"check": {"file": "check/flag.sh"}, "example": {"file": "example/flag.sh"}}},
    {"description": "A background job writes to which file in /root/j?",
     "create": {"init": {"code": "mkdir /root/j && touch /root/j/x /root/j/y"}},
     "start": "(while :; do echo . >> /root/j/y; sleep 1; done) &",
     "evaluation": {"match": {"answer": "y", "strip": True}}},
    {"description": "What is 6 times 7?",
     "evaluation": {"check": [None, {"language": "python", "file": "check/integer-match.py"}, None,
                              {"code": 'test "$1 $2|$3|$4" = "42 42\n||42\n"'}],
                    "example": "echo 42"}},
    # cannot run here, each for its own reason
    {"description": "Write /usr/mark.", "create": {"init": "echo x > /usr/mark"}, "evaluation": {"match": "x"}},
    {"description": "Needs npm's image.", "create": {"local": "packages"}, "evaluation": {"match": "x"}},
    {"description": "Compiled check.", "evaluation": {"check": {"language": "c++", "code": "int main(){}"},
                                                     "example": "true"}},
    {"description": "A missing script.", "evaluation": {"check": {"file": "check/nope.sh"}, "example": "true"}},
    {"description": "A check that always passes.", "evaluation": {"check": {"code": "exit 0"}, "example": "true"}},
    {"description": "No evaluation at all."},
]


def write_layout(root: Path) -> Path:
    """AgentBench's layout: data/dev.json and scripts/dev/{init,check,example}/."""
    (root / "data").mkdir()
    scripts = root / "scripts" / "dev"
    for sub in ("init", "check", "example"):
        (scripts / sub).mkdir(parents=True)
    (scripts / "init" / "box.sh").write_text("mkdir -p /root/box && touch /root/box/a /root/box/b /root/box/c\n")
    (scripts / "check" / "integer-match.py").write_text(INTEGER_MATCH)
    (scripts / "check" / "flag.sh").write_text('grep -qx ok /root/flag\n')
    (scripts / "example" / "flag.sh").write_text("echo ok > /root/flag\n")
    path = root / "data" / "dev.json"
    path.write_text(json.dumps(TASKS))
    return path


def test_script_dir_is_found_as_agentbench_pairs_it(tmp_path: Path) -> None:
    path = write_layout(tmp_path)
    assert default_script_dir(path) == (tmp_path / "scripts" / "dev").resolve()
    beside = tmp_path / "copy"  # our shared copy's layout: dev.json with scripts/dev/ next to it
    (beside / "scripts" / "dev").mkdir(parents=True)
    (beside / "dev.json").write_text("[]")
    assert default_script_dir(beside / "dev.json") == (beside / "scripts" / "dev").resolve()


def test_bad_files_are_errors_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        read_os_task_file(bad)
    lines = tmp_path / "bad.jsonl"
    lines.write_text('{"description": "ok"}\n{not json\n')
    with pytest.raises(ValueError, match="bad.jsonl:2: invalid JSON"):
        read_os_task_file(lines)
    with pytest.raises(ValueError, match="nowhere"):
        import_agentbench_os(tmp_path / "nowhere.json", verify=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no .json or .jsonl task file"):
        import_agentbench_os(empty, verify=False)


def test_import_inlines_scripts_and_reports_what_cannot_be_read(tmp_path: Path) -> None:
    report = import_agentbench_os(write_layout(tmp_path), verify=False)
    by_index = {t.payload["index"]: t for t in report.tasks}
    first = by_index[0].payload
    assert first["init"] == [{"language": "bash", "code": "mkdir -p /root/box && touch /root/box/a /root/box/b /root/box/c\n"}]
    assert first["check"] == [None, {"language": "python", "code": INTEGER_MATCH}]  # null stands for the example
    assert by_index[2].payload["example"]["code"] == "echo ok > /root/flag\n"
    assert by_index[3].payload["start"].endswith("&") and by_index[3].payload["match"] == "y"
    assert by_index[0].id == "agentbench_os-dev-00000" and by_index[0].env == ENV_ID
    reasons = {s.index: s.reason for s in report.skipped}
    assert "'packages' image" in reasons[6]
    assert "'c++'" in reasons[7]
    assert "nope.sh" in reasons[8]
    assert "no 'evaluation'" in reasons[10]
    assert set(reasons) == {6, 7, 8, 10}  # not run: /usr and the always-passing check are only found by running


@needs_sandbox
def test_verification_runs_each_task_and_leaves_out_what_fails_here(tmp_path: Path) -> None:
    report = import_agentbench_os(write_layout(tmp_path))
    assert sorted(t.payload["index"] for t in report.tasks) == [0, 1, 2, 3, 4]
    reasons = {s.index: s.reason for s in report.skipped}
    assert reasons[5].startswith("it writes under /usr, which is read-only in our sandbox")
    assert "a wrong answer passes" in reasons[9]
    assert "11 tasks read, 5 imported" in report.summary() and "6 left out" in report.summary()


@needs_sandbox
def test_grading_follows_agentbench(tmp_path: Path) -> None:
    """Match: stripped answer equals; check: the scripts in order, each given the answer and the earlier outputs."""
    report = import_agentbench_os(write_layout(tmp_path), verify=False)
    defn = AgentBenchOsDefinition()
    by_index = {t.payload["index"]: t for t in report.tasks}

    def final(task, *actions: str):
        env = defn.make()
        try:
            env.reset(task)
            for action in actions:
                result = env.step(action)
            return result
        finally:
            env.close()

    assert final(by_index[1], "answer(  kiwi )").success
    assert not final(by_index[1], "answer(kiwi!)").success
    assert final(by_index[0], "answer(3)").success  # the example's output (3) passed as $2 to integer-match
    assert not final(by_index[0], "answer(4)").success
    assert not final(by_index[0], "answer(three)").success  # the check script raises: a fail
    assert final(by_index[4], "answer(42)").success  # the fourth script is given the answer and every output before
    assert not final(by_index[4], "answer(042)").success  # integer-match passes it; the fourth does not
    assert not final(by_index[2], "finish").success
    assert final(by_index[2], "bash\n```bash\necho ok > /root/flag\n```", "finish").success
    assert final(by_index[3], "bash\n```bash\nsleep 1.5; ls -s /root/j\n```", "answer(y)").success


@needs_sandbox
def test_check_env_passes_on_an_imported_file_and_on_the_sample(tmp_path: Path) -> None:
    report = import_agentbench_os(write_layout(tmp_path), test_percent=50)
    assert {t.split for t in report.tasks} == {"train", "test"}
    out = tmp_path / "tasks.jsonl"
    write_atomic(out, report.tasks)
    for defn in (AgentBenchOsDefinition(tasks_file=out), AgentBenchOsDefinition()):
        result = check_env(defn, concurrency=2)
        assert result.passed, [(r.name, r.detail) for r in result.failures()]


def test_the_sample_imports_in_agentbench_layout() -> None:
    tasks = AgentBenchOsDefinition().derive_tasks()
    assert len(tasks["train"]) == 3 and len(tasks["test"]) == 3
    assert all(t.env == ENV_ID for split in tasks.values() for t in split)
