"""AgentBench's DB tasks imported and run on SQLite: the importer, the dialect, the grader, episodes, conformance.

Every task file here is the test's own, in AgentBench's layout (AgentBench's files are never copied in)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from agenttuning.envs import base
from agenttuning.envs.agentbench import db, db_dialect, db_grading
from agenttuning.jsonl import read_records, write_atomic
from agenttuning.rollout.conformance import check_env
from agenttuning.rollout.react import parse_reply
from agenttuning.schema import Task, Trajectory, Turn


# --------------------------------------------------------------------------------------------------------------
# A task file of our own, in AgentBench's layout


def table(name: str, columns: list[tuple[str, str]], rows: list[list[Any]]) -> dict[str, Any]:
    return {"table_name": name, "table_info": {"columns": [{"name": n, "type": t} for n, t in columns], "rows": rows}}


def question(description: str, tbl: dict, label: list, query: str | None, kind: str = "other") -> dict:
    record = {"description": description, "label": label, "table": tbl, "type": [kind],
              "add_description": f"The name of this table is {tbl['table_name']}.", "source": "test"}
    if query is not None:
        record["sql"] = {"query": query, "length": len(query)}
    return record


def change(description: str, tbl: dict, statement: str, kind: str, answer_md5: str | None = None) -> dict:
    record = {"description": description, "label": [statement], "table": tbl, "type": [kind],
              "add_description": f"The name of this table is {tbl['table_name']}.", "source": "test"}
    if answer_md5 is not None:
        record["answer_md5"] = f"[('{answer_md5}',)]"
    return record


SCORES = table("Match Scores: 2020", [("Team", "TEXT"), ("Goals", "TEXT"), ("Year", "INT"), ("Rating", "DECIMAL(4,1)")],
               [["Ajax", "5", "2020", "7.5"], ["Brugge", "12", "2020", "6.0"], ["Celtic", "17", "2019", "8.25"],
                ["Dundee", "3", "2018", "5.5"]])
KEYWORDS = table("table", [("", "TEXT"), ("order", "TEXT"), ("a`b", "INT")], [["x", "y", "1"], ["z", "w", "2"]])


def records() -> list[dict]:
    return [
        # 0: a question whose gold reproduces the label (Goals is TEXT: compared with a number as MySQL compares)
        question("Which teams scored fewer than 10 goals?", SCORES, ["Ajax", "Dundee"],
                 "SELECT Team FROM `Match Scores: 2020` WHERE Goals < 10;", "comparison"),
        # 1: a count with AgentBench's float label
        question("How many teams played in 2020?", SCORES, ["2.0"],
                 "SELECT COUNT(*) FROM `Match Scores: 2020` WHERE `Year` = '2020'", "counting"),
        # 2: a broken gold query (glued keywords, as some of AgentBench's are): imported, graded on the label
        question("Which team has the best rating?", SCORES, ["Celtic"],
                 "SELECT TeamFROM `Match Scores: 2020` ORDER BY Rating DESCLIMIT 1", "ranking"),
        # 3: no gold query at all
        question("What did team Dundee score?", SCORES, ["3"], None),
        # 4-6: changes
        change("Add the team Everton, 9 goals in 2021, rating 6.5.", SCORES,
               "INSERT INTO `Match Scores: 2020` (Team, Goals, `Year`, Rating) VALUES ('Everton', '9', 2021, 6.5);",
               "INSERT"),
        change("Brugge's goals were miscounted: it is 11.", SCORES,
               "UPDATE `Match Scores: 2020` SET Goals = '11' WHERE Team = 'brugge'", "UPDATE"),
        change("Delete the teams of 2018.", SCORES, "DELETE FROM `Match Scores: 2020` WHERE `Year` = 2018", "DELETE"),
        # 7: names SQLite would trip on: a keyword table, an empty column name, a backquote in a name
        question("What is in the column order for x?", KEYWORDS, ["y"],
                 "SELECT `order` FROM `table` WHERE `` = 'x'"),
        # 8-12: left out, each for its reason
        change("Do nothing useful.", SCORES, "UPDATE `Match Scores: 2020` SET Goals = '5' WHERE Team = 'Ajax'",
               "UPDATE"),
        change("Break it.", SCORES, "UPDATE `Match Scores: 2020` SET Goals = REGEXP_REPLACE(Goals, 'a', 'b')",
               "UPDATE"),
        question("Duplicate columns", table("dup", [("a", "TEXT"), ("A", "TEXT")], [["1", "2"]]), ["1"], None),
        question("Short row", table("short", [("a", "TEXT"), ("b", "TEXT")], [["1"]]), ["1"], None),
        "not an object",  # 12
        # 13: a question with a MySQL escape in its gold query
        question("How many goals did O'Brien's team score?",
                 table("scorers", [("Player", "TEXT"), ("Goals", "INT")], [["O'Brien", "4"], ["Obi", "9"]]),
                 ["4"], "SELECT Goals FROM scorers WHERE Player = 'O\\'Brien'"),
        # 14: left out: a gold statement that drops the table
        change("Drop it.", SCORES, "DROP TABLE `Match Scores: 2020`", "DELETE"),
    ]


def write_file(path: Path, items: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in items), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> db.ImportReport:
    return db.import_agentbench_db(write_file(tmp_path_factory.mktemp("ab") / "dev.jsonl", records()))


def task(report: db.ImportReport, index: int) -> Task:
    return next(t for t in report.tasks if t.payload["index"] == index)


# --------------------------------------------------------------------------------------------------------------
# Import


def test_import_keeps_what_runs_and_says_why_it_left_out_the_rest(report):
    assert [t.payload["index"] for t in report.tasks] == [0, 1, 2, 3, 4, 5, 6, 7, 13]
    assert [t.id for t in report.tasks][:2] == ["agentbench_db-dev-00000", "agentbench_db-dev-00001"]
    assert all(t.env == "agentbench_db-v1" and t.split == "test" for t in report.tasks)
    reasons = {s.index: s.reason for s in report.skipped}
    assert set(reasons) == {8, 9, 10, 11, 12, 14}
    assert "leaves the table as it was" in reasons[8]
    assert "fails on SQLite" in reasons[9] and "REGEXP_REPLACE" in reasons[9]
    assert "duplicate column name" in reasons[10]
    assert "row 0 has 1 values for 2 columns" in reasons[11]
    assert "not a JSON object" in reasons[12]
    assert "cannot be read after the gold statement" in reasons[14]
    assert report.counts() == {"records": 15, "imported": 9, "skipped": 6, "questions": 6, "changes": 3,
                               "gold_reproduces": 4, "gold_differs": 1}
    notes = {n.index: n.reason for n in report.notes}
    assert "fails on SQLite" in notes[2] and "DESCLIMIT" in notes[2]
    assert "no gold query" in notes[3]
    summary = report.summary()
    assert "15 tasks read, 9 imported" in summary and "left out #9" in summary


def test_the_instruction_is_agentbenchs_and_the_payload_carries_table_gold_and_type(report):
    t = task(report, 0)
    assert t.instruction == "Which teams scored fewer than 10 goals?\nThe name of this table is Match Scores: 2020."
    p = db.AgentBenchDbPayload.model_validate(t.payload)
    assert p.kind == "select" and p.type == "comparison" and p.label == ["Ajax", "Dundee"] and p.gold_reproduces
    assert p.tables[0].name == "Match Scores: 2020" and p.tables[0].columns[3].type == "DECIMAL(4,1)"
    change_ = db.AgentBenchDbPayload.model_validate(task(report, 5).payload)
    assert change_.kind == "update" and set(change_.gold_hashes) == {"Match Scores: 2020"}
    assert change_.gold_reproduces is None  # no answer_md5 in the record: nothing to compare


def test_splits_by_choice_or_by_hash(tmp_path):
    path = write_file(tmp_path / "x.jsonl", records())
    assert {t.split for t in db.import_agentbench_db(path, split="train").tasks} == {"train"}
    by_hash = db.import_agentbench_db(path, test_percent=50).tasks
    assert {t.split for t in by_hash} == {"train", "test"}
    assert [t.split for t in by_hash] == [t.split for t in db.import_agentbench_db(path, test_percent=50).tasks]
    kept = [t.payload["index"] for t in db.import_agentbench_db(path, require_gold=True).tasks]
    assert kept == [0, 1, 3, 4, 5, 6, 7, 13]
    with pytest.raises(ValueError, match="test_percent"):
        db.import_agentbench_db(path, test_percent=101)


def test_a_json_list_file_imports_like_json_lines(tmp_path):
    path = tmp_path / "std.json"
    path.write_text(json.dumps(records()[:3]), encoding="utf-8")
    tasks = db.import_agentbench_db(path).tasks
    assert [t.id for t in tasks] == ["agentbench_db-std-00000", "agentbench_db-std-00001", "agentbench_db-std-00002"]
    bad = write_file(tmp_path / "bad.jsonl", [records()[0]])
    bad.write_text(bad.read_text() + "{not json\n")
    with pytest.raises(ValueError, match="bad.jsonl:2: invalid JSON"):
        db.import_agentbench_db(bad)


def test_the_mysql_hash_of_the_gold_table_is_checked_against_answer_md5(tmp_path):
    statement = "INSERT INTO scorers VALUES ('Zola', 11)"
    tbl = table("scorers", [("Player", "TEXT"), ("Goals", "INT")], [["O'Brien", "4"]])
    want = db_dialect.mysql_table_md5([("O'Brien", "4"), ("Zola", "11")])  # MySQL keeps every column as TEXT
    path = write_file(tmp_path / "m.jsonl", [change("Add Zola, 11 goals.", tbl, statement, "INSERT", want),
                                             change("Add Zola, 11 goals.", tbl, statement, "INSERT", "0" * 32)])
    good, bad = db.import_agentbench_db(path).tasks
    assert good.payload["gold_reproduces"] is True and good.payload["answer_md5"] == want
    assert bad.payload["gold_reproduces"] is False and "not AgentBench's 000" in bad.payload["gold_note"]


# --------------------------------------------------------------------------------------------------------------
# The dialect


@pytest.mark.parametrize(("mysql", "sqlite"), [
    ("SELECT `a b` FROM `t`", "SELECT `a b` FROM `t`"),  # SQLite reads backquotes itself
    ("SELECT * FROM t WHERE x = 'Don\\'t'", "SELECT * FROM t WHERE x = 'Don''t'"),
    ("SELECT 'a\\nb', 'c\\\\d', 'e\\%'", "SELECT 'a\nb', 'c\\d', 'e\\%'"),
    ("SELECT * FROM t WHERE g < 17 AND 3 >= h", "SELECT * FROM t WHERE g < CAST(17 AS NUMERIC) AND "
                                                 "CAST(3 AS NUMERIC) >= h"),
    ("SELECT x FROM t ORDER BY 1 LIMIT 2", "SELECT x FROM t ORDER BY 1 LIMIT 2"),
    ("SELECT LEFT(x, 2), RIGHT(x, 1) FROM t LEFT JOIN u",
     "SELECT mysql_left(x, 2), mysql_right(x, 1) FROM t LEFT JOIN u"),
    ("SELECT GROUP_CONCAT(x SEPARATOR '; ') FROM t", "SELECT GROUP_CONCAT(x, '; ') FROM t"),
    ("SELECT '<= 5', `x < 3` FROM t -- < 4", "SELECT '<= 5', `x < 3` FROM t -- < 4"),
    ("SELECT `#`, '#' FROM t # a comment", "SELECT `#`, '#' FROM t -- a comment"),
    ("INSERT INTO 1952_Grand_Prix VALUES (1e5, 0x1F, t1.c2)",
     "INSERT INTO `1952_Grand_Prix` VALUES (1e5, 0x1F, t1.c2)"),
])
def test_translate(mysql, sqlite):
    assert db_dialect.translate(mysql) == sqlite


def episode_db(tbl: dict) -> sqlite3.Connection:
    info = tbl["table_info"]
    t = db.Table(name=tbl["table_name"], rows=info["rows"], columns=[db.Column(**c) for c in info["columns"]])
    return db.build_database([t])


def q(conn: sqlite3.Connection, sql: str) -> list[tuple]:
    return conn.execute(db_dialect.translate(sql)).fetchall()


def test_tables_are_built_with_mysql_types_and_case_insensitive_text():
    conn = episode_db(SCORES)
    assert q(conn, "SELECT Team, `Year`, Rating FROM `Match Scores: 2020` WHERE Team = 'AJAX'") == [("Ajax", 2020, 7.5)]
    assert q(conn, "SELECT Goals FROM `Match Scores: 2020` WHERE Goals > 4 ORDER BY Team") == [("5",), ("12",), ("17",)]
    assert q(conn, "SELECT COUNT(*) FROM `Match Scores: 2020` WHERE `Year` = '2020'") == [(2,)]
    accents = episode_db(table("towns", [("Town", "VARCHAR(20)")], [["Montréal"], ["Straße"], ["Zürich "]]))
    found = q(accents, "SELECT Town FROM towns WHERE Town = 'MONTREAL' OR Town = 'strasse'")
    assert found == [("Montréal",), ("Straße",)]
    assert q(accents, "SELECT COUNT(*) FROM towns WHERE Town = 'zurich'") == [(0,)]  # trailing spaces count (NO PAD)
    conn = episode_db(KEYWORDS)
    assert q(conn, "SELECT ``, `order`, `a``b` FROM `table`") == [("x", "y", 1), ("z", "w", 2)]
    assert [db_dialect.affinity(t) for t in ("BIGINT", "DOUBLE PRECISION", "VARBINARY(8)", "DATETIME", "POINT")] == [
        "INTEGER", "REAL", "BLOB", "TEXT", "TEXT"]


def test_mysql_statements_and_functions():
    conn = episode_db(SCORES)
    assert q(conn, "SHOW TABLES") == [("Match Scores: 2020",)]
    assert q(conn, "DESCRIBE `Match Scores: 2020`;")[0] == ("Team", "TEXT", "YES", "", None, "")
    assert q(conn, "SHOW FULL COLUMNS FROM `Match Scores: 2020`") == q(conn, "DESC 'Match Scores: 2020'")
    assert q(conn, "SHOW CREATE TABLE `Match Scores: 2020`")[0][1].startswith('CREATE TABLE "Match Scores: 2020"')
    got = q(conn, "SELECT CONCAT(Team, '-', Goals), CONCAT('a', NULL), CONCAT_WS('/', Team, NULL, Goals), "
                  "IF(Goals > 10, 'many', 'few'), LOCATE('J', Team), LEFT(Team, 2), RIGHT(Team, 2) "
                  "FROM `Match Scores: 2020` WHERE Team = 'Ajax'")
    assert got == [("Ajax-5", None, "Ajax/5", "few", 2, "Aj", "ax")]


def test_mysql_table_md5_matches_mysqls_formula():
    import hashlib

    rows = [("a", "1"), ("b", None), ("é", "2")]
    row_hashes = sorted(hashlib.md5(s.encode()).hexdigest()[:5] for s in ("a,1", "b", "é,2"))
    assert db_dialect.mysql_table_md5(rows) == hashlib.md5(",".join(row_hashes).encode()).hexdigest()
    many = [(str(i),) for i in range(500)]  # MySQL's group_concat stops at 1024 bytes
    joined = ",".join(sorted(hashlib.md5(str(i).encode()).hexdigest()[:5] for i in range(500)))
    assert db_dialect.mysql_table_md5(many) == hashlib.md5(joined[:1024].encode()).hexdigest()


# --------------------------------------------------------------------------------------------------------------
# AgentBench's comparison


@pytest.mark.parametrize(("answer", "label", "ok"), [
    ('["Ajax", "Dundee"]', ["Ajax", "Dundee"], True),
    ('["Dundee", "Ajax", "Ajax"]', ["Ajax", "Dundee"], True),  # a set: order and repeats do not count
    ("[2]", ["2.0"], True),  # one item each: as floats
    ("2", ["2.0"], True),
    ("[('2',)]", ["2"], False),  # a row as a tuple never equals a label string (AgentBench's rule)
    ('["ajax"]', ["Ajax"], False),  # as it is: case counts
    ('["Ajax"]', ["Ajax", "Dundee"], False),
    ("[5, 3]", ["3", "5"], True),  # numbers count as their text in the set comparison
    ('"Ajax"', ["Ajax"], False),  # list("Ajax") is four letters, as AgentBench's list(eval(...)) is
    ("Ajax", ["Ajax"], True),  # not a literal: the text itself
    ("[('Celtic', 8.25)]", ["Celtic"], False),
    ("[]", ["x"], False),
    ("[[1], [2]]", ["1", "2"], False),  # unhashable items fail
    ("__import__('os').getcwd()", ["x"], False),
    ('["none"]', ["none"], True),
    ("[1e999]", ["inf"], True),
])
def test_answers_are_compared_as_agentbench_compares_them(answer, label, ok):
    assert db_grading.answers_match(db_grading.parse_answer(answer), label) is ok


def test_only_the_first_line_of_the_answer_counts_and_huge_answers_are_text():
    assert db_grading.parse_answer('["a"]\n["b"]') == ["a"]
    assert db_grading.parse_answer("[" * 100_000) == ["[" * 100_000]


# --------------------------------------------------------------------------------------------------------------
# Episodes


def definition_for(report: db.ImportReport) -> db.AgentBenchDbDefinition:
    d = db.AgentBenchDbDefinition()
    d.derive_tasks = lambda: {"train": db.sample_tasks()["train"], "test": report.tasks}  # type: ignore[method-assign]
    return d


def op(sql: str) -> str:
    return f"Operation\n```sql\n{sql}\n```"


def play(d: db.AgentBenchDbDefinition, t: Task, actions: list[str]) -> list[base.StepResult]:
    with d.make() as env:
        env.reset(t)
        return [env.step(a) for a in actions]


def test_a_change_is_graded_by_the_rows_it_leaves_not_by_the_statement(report):
    d, t = definition_for(report), task(report, 4)
    done = "Answer\nFinal Answer: []"
    other_order = op("INSERT INTO `Match Scores: 2020` (Rating, `Year`, Goals, Team) "
                     "VALUES ('6.5', '2021', 9, 'Everton')")
    assert play(d, t, [other_order, done])[-1].reward == 1.0
    assert play(d, t, [other_order, other_order, done])[-1].reward == 0.0  # a multiset: the extra row counts
    assert play(d, t, [done])[-1].reward == 0.0
    added_and_removed = [other_order, op("DELETE FROM `Match Scores: 2020` WHERE Team = 'Everton'"), done]
    assert play(d, t, added_and_removed)[-1].reward == 0.0
    assert play(d, t, [op("DROP TABLE `Match Scores: 2020`"), done])[-1].reward == 0.0
    update = task(report, 5)  # the gold matches 'brugge' case-insensitively, as MySQL does
    fix = op("UPDATE `Match Scores: 2020` SET Goals = 11 WHERE Team = 'Brugge'")
    assert play(d, update, [fix, done])[-1].reward == 1


def test_a_question_is_graded_on_its_label_and_observations_are_cut_at_800_characters(report):
    d, t = definition_for(report), task(report, 2)
    results = play(d, t, [op("SELECT Team FROM `Match Scores: 2020` ORDER BY Rating DESC LIMIT 1"),
                          "Answer\nFinal Answer: ['Celtic']"])
    assert results[0].observation == "[('Celtic',)]" and results[1].reward == 1.0 and results[1].success
    long = play(d, t, [op("SELECT printf('%.2000c', 'x')")])[0].observation
    assert len(long) == 800 + len("[TRUNCATED]") and long.endswith("x[TRUNCATED]")
    assert play(d, t, [op("SELECT nope FROM nowhere")])[0].observation.startswith("Error: no such table")


def test_the_expert_runs_the_gold_and_answers_the_label(report):
    d = definition_for(report)
    for t in report.tasks:
        history: list[Turn] = []
        with d.make() as env:
            history.append(Turn(role="user", content=env.reset(t)))
            for _ in range(d.max_turns):
                reply = d.expert(t, history)
                r = env.step(parse_reply(reply).action)
                history += [Turn(role="assistant", content=reply), Turn(role="user", content=r.observation)]
                if r.terminated:
                    break
        assert r.reward == 1.0, t.id
        ran_gold = "```sql" in history[1].content
        assert ran_gold == (t.payload["kind"] != "select" or t.payload["gold_reproduces"] is True), t.id


def test_interrupt_stops_a_runaway_query(report):
    d = definition_for(report)
    with d.make() as env:
        env.reset(task(report, 0))
        threading.Timer(0.1, env.interrupt).start()
        start = time.monotonic()
        r = env.step(op("WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r) SELECT count(*) FROM r"))
        assert time.monotonic() - start < 0.9 and "ran too long" in r.observation


def test_the_imported_set_passes_the_conformance_check(report):
    result = check_env(definition_for(report))
    assert result.passed, [(r.name, r.detail) for r in result.failures()]


# --------------------------------------------------------------------------------------------------------------
# Where the tasks come from


def test_the_registered_environment_runs_the_builtin_sample_or_the_file_it_is_given(report, tmp_path, monkeypatch):
    registered = base.get("agentbench_db")
    assert registered is db.definition() and registered.id == "agentbench_db-v1"
    assert {t.split for t in registered.tasks("train")} == {"train"} and len(registered.tasks("test")) >= 5
    path = tmp_path / "tasks.jsonl"
    write_atomic(path, report.tasks)
    monkeypatch.setenv(db.TASKS_ENV, str(path))
    from_env = db.AgentBenchDbDefinition()
    assert [t.id for t in from_env.tasks("test")] == [t.id for t in report.tasks] and from_env.tasks("train") == []
    assert db.AgentBenchDbDefinition(tasks_file=path).tasks("test") == report.tasks
    foreign = tmp_path / "foreign.jsonl"
    write_atomic(foreign, [t.model_copy(update={"env": "db-v1"}) for t in report.tasks[:1]])
    with pytest.raises(ValueError, match="another environment"):
        db.AgentBenchDbDefinition(tasks_file=foreign).tasks("test")


def test_rollout_runs_an_imported_file_from_the_command_line(report, tmp_path):
    from agenttuning.cli import app

    path = tmp_path / "tasks.jsonl"
    write_atomic(path, report.tasks)
    for policy, want in (("expert", 1.0), ("wrong", 0.0)):
        out = tmp_path / f"{policy}.jsonl"
        r = CliRunner().invoke(app, ["rollout", "--env", "agentbench_db", "--tasks", str(path), "--policy", policy,
                                     "--out", str(out), "--no-progress"], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        trajs = read_records(out, Trajectory)
        assert len(trajs) == len(report.tasks) and all(t.reward == want for t in trajs)
