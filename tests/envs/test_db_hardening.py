"""The db environment's budgets hold whatever the agent writes (issue #11, kinds 1 and 2 and the NUL/surrogate item).

Real SQLite throughout: each probe is a statement that, before the guards, one built-in call ran for 10-50 s (the
progress handler only runs between VM steps), or an episode that stalled others, or a close under a running call.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest

from agenttuning.envs.base import get

DB = get("db")
TOO_LONG = "ran too long"


def op(sql: str) -> str:
    return f"Operation\n```sql\n{sql}\n```"


def task_of(kind: str, table: str | None = None):
    return next(t for t in DB.tasks("test")
                if t.payload["kind"] == kind and (table is None or t.payload.get("table") == table))


def episode(kind: str = "select", table: str | None = None):
    env = DB.make()
    env.reset(task_of(kind, table))
    return env


# One call of each kind of expensive built-in; the comment is its time before the guards (2-core VM, SQLite 3.40).
SINGLE_CALL_PROBES = {
    "printf precision": "SELECT printf('%.*c', 2147483647, 'x');",  # 9.5 s
    "printf many conversions": "SELECT printf(replace(hex(zeroblob(2000)), '00', '%.99999c'));",
    "format width from a string": "SELECT format('%.*c', '2000000000', 'x');",
    "LIKE over a generated blob": "SELECT hex(zeroblob(400000)) LIKE '%' || hex(zeroblob(20000)) || '1%';",  # 46 s
    "GLOB over a generated blob": "SELECT hex(zeroblob(400000)) GLOB '*' || hex(zeroblob(20000)) || '1*';",  # 38 s
    "instr of a long needle": "SELECT instr(hex(zeroblob(499999)), hex(zeroblob(200000)) || '1');",
    "replace of a long pattern": "SELECT length(replace(hex(zeroblob(499999)), hex(zeroblob(200000)) || '1', 'x'));",
    "group_concat of a runaway CTE":
        "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r) SELECT length(group_concat(i)) FROM r;",
    "zeroblob": "SELECT length(zeroblob(500000000));",
}


@pytest.mark.parametrize("sql", SINGLE_CALL_PROBES.values(), ids=SINGLE_CALL_PROBES.keys())
def test_a_single_expensive_call_cannot_escape_the_statement_budget(sql):
    env = episode()
    try:
        start = time.monotonic()
        r = env.step(op(sql))
        took = time.monotonic() - start
    finally:
        env.close()
    assert took < 3.0, f"{took:.1f} s"
    assert r.info["error"] is True and r.observation.startswith("Error:"), r.observation
    assert not r.terminated and r.reward == 0


def test_printf_within_bounds_still_works():
    env = episode()
    try:
        r = env.step(op("SELECT printf('%5.2f|%-4s|%d%%', 3.14159, 'ab', 7), format('%.*c', 3, 'z');"))
    finally:
        env.close()
    assert r.observation == "[(' 3.14|ab  |7%', 'zzz')]"


def test_an_episode_cannot_grow_memory_without_bound():
    env = episode()
    rss = psutil.Process().memory_info().rss
    try:
        env.step(op("CREATE TABLE junk(b);"))
        for _ in range(8):  # each would add ~45 MB to the in-memory copy if nothing bounded it (9 of 10 turns)
            r = env.step(op("INSERT INTO junk WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r "
                            "LIMIT 1000) SELECT zeroblob(45000) FROM r;"))
        grown = psutil.Process().memory_info().rss - rss
    finally:
        env.close()
    assert "database or disk is full" in r.observation
    assert grown < 100 << 20, f"grew {grown >> 20} MiB"


def test_grading_over_a_view_of_expensive_calls_is_bounded():
    env = episode("update", "cities")
    try:
        env.step(op("DROP TABLE cities;"))
        env.step(op("CREATE VIEW cities AS SELECT printf('%.*c', 2147483647, 'x') AS name, "
                    "hex(zeroblob(400000)) LIKE '%' || hex(zeroblob(20000)) || '1%' AS hit FROM countries;"))
        start = time.monotonic()
        r = env.step("Answer\nFinal Answer: []")
        took = time.monotonic() - start
    finally:
        env.close()
    assert r.terminated and r.reward == 0 and r.success is False
    assert took < 3.0, f"grading took {took:.1f} s"


def _runaway_view(env) -> None:
    """Replace cities by an endless view: hashing it runs until the grading budget (10 s) or an interrupt."""
    env.step(op("DROP TABLE cities;"))
    env.step(op("CREATE VIEW cities AS WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r) "
                "SELECT i FROM r;"))


def test_a_slow_grading_does_not_stall_other_episodes():
    slow, normal = episode("update", "cities"), episode("update", "cities")
    _runaway_view(slow)
    normal.step(op("UPDATE cities SET population = population + 1 WHERE id = -1;"))  # a write: hashed at grading
    done = threading.Event()
    worker = threading.Thread(target=lambda: (slow.step("Answer\nFinal Answer: []"), done.set()))
    worker.start()
    try:
        time.sleep(0.3)  # the slow grading now holds the hashing lock
        assert not done.is_set()
        start = time.monotonic()
        r = normal.step("Answer\nFinal Answer: []")
        took = time.monotonic() - start
        assert r.terminated
        assert took < 2.0, f"the other episode's grading waited {took:.1f} s"
    finally:
        slow.interrupt()
        worker.join(5)
        slow.close()
        normal.close()
    assert done.is_set(), "interrupt() did not end the slow grading"


def test_a_runaway_statement_does_not_stall_a_normal_query_in_another_episode():
    slow, normal = episode(), episode()
    results = {}
    worker = threading.Thread(target=lambda: results.update(slow=slow.step(op(
        "SELECT count(*) FROM cities a, cities b, cities c WHERE a.name || b.name LIKE '%' || c.name || '%';"))))
    worker.start()
    try:
        time.sleep(0.1)
        start = time.monotonic()
        r = normal.step(op("SELECT name FROM countries WHERE alpha2 = 'FR';"))
        took = time.monotonic() - start
    finally:
        worker.join(10)
        slow.close()
        normal.close()
    assert r.observation == "[('France',)]"
    assert took < 0.5, f"{took:.2f} s"
    assert TOO_LONG in results["slow"].observation


# In a subprocess, so that a crash (SIGSEGV when a connection is closed under a running statement) fails the test
# instead of killing pytest.
_INTERRUPT_SCRIPT = textwrap.dedent("""
    import threading, time
    from agenttuning.envs.base import get
    d = get("db")
    task = next(t for t in d.tasks("test") if t.payload.get("table") == "cities")
    env = d.make()
    env.reset(task)
    out = {}
    def run(action):
        start = time.monotonic()
        out["result"] = env.step(action)
        out["took"] = time.monotonic() - start
    for action, wait in ((OP_RUNAWAY, 0.2), (OP_DROP, 0), (OP_VIEW, 0), ("Answer\\nFinal Answer: []", 0.5)):
        worker = threading.Thread(target=run, args=(action,))
        worker.start()
        if wait:
            time.sleep(wait)
            env.interrupt()
        worker.join(3)
        assert not worker.is_alive(), f"step({action[:30]!r}) did not return after interrupt()"
        print(repr(out["result"].observation[:80]), round(out["took"], 2), flush=True)
    assert out["took"] < 1.5
    # close from another thread while a step runs: close interrupts it and waits, never closes under it
    env.reset(task)
    worker = threading.Thread(target=run, args=(OP_RUNAWAY,))
    worker.start()
    time.sleep(0.1)
    env.close()
    env.close()
    worker.join(3)
    print(repr(out["result"].observation[:80]), "closed", flush=True)
""").replace("OP_RUNAWAY", repr(op(
    "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r) SELECT count(*) FROM r, cities;"))).replace(
    "OP_DROP", repr(op("DROP TABLE cities;"))).replace("OP_VIEW", repr(op(
        "CREATE VIEW cities AS WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r) SELECT i FROM r;")))


def test_interrupt_from_another_thread_stops_the_step_and_close_never_crashes():
    proc = subprocess.run([sys.executable, "-c", _INTERRUPT_SCRIPT], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr[-2000:])
    lines = proc.stdout.splitlines()
    assert TOO_LONG in lines[0] and float(lines[0].rsplit(" ", 1)[1]) < 0.9  # before its own 1 s budget
    assert "Answer received" in lines[3]
    assert TOO_LONG in lines[4] and lines[4].endswith("closed")


def test_close_is_safe_twice_and_before_reset():
    env = DB.make()
    env.close()
    env.interrupt()
    env.reset(task_of("select"))
    env.close()
    env.close()
    env.interrupt()
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(op("SELECT 1;"))


@pytest.mark.parametrize("env_name", ["db", "kg"])
@pytest.mark.parametrize("text", ["\x00", "\ud800", "\udfff", "x\x00y"], ids=["nul", "high", "low", "nul-inside"])
def test_nul_and_lone_surrogates_are_invalid_action_feedback(env_name, text):
    d = get(env_name)
    task = d.tasks("test")[0]
    actions = [text, f"Operation\n```sql\nSELECT '{text}';\n```", f"Operation\n```sql\nSELECT * FROM \"{text}\";\n```",
               f"Answer\nFinal Answer: ['{text}']", f"get_relations({text})", f"Final Answer: #{text}"]
    for action in actions:
        env = d.make()
        env.reset(task)
        try:
            r = env.step(action)
        finally:
            env.close()
        assert r.invalid is True, (action, r)
        assert r.reward == 0 and not r.terminated
        r.observation.encode("utf-8")  # the feedback itself is valid text
