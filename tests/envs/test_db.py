"""The ``db`` environment on real SQLite: data, tasks, episodes, grading and guards."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from agenttuning.envs import base
from agenttuning.envs.db import data, definition, grading, tasks
from agenttuning.envs.db.definition import _EXAMPLE_QUESTION, _EXAMPLE_RESULT, _EXAMPLE_SQL
from agenttuning.envs.db.env import MAX_ROWS_SHOWN, pristine_hash
from agenttuning.rollout.react import ParseError, parse_reply
from agenttuning.schema import Task, Turn, normalise_text

D = definition()


def sql(statement: str) -> str:
    return f"Operation\n```sql\n{statement}\n```"


def answer(value: str) -> str:
    return f"Answer\nFinal Answer: {value}"


def run_episode(task: Task, policy) -> tuple[list[base.StepResult], list[Turn]]:
    """reset -> reply -> parse_reply -> step, until the episode ends (what the rollout engine does)."""
    with D.make() as env:
        history = [Turn(role="user", content=env.reset(task))]
        results = []
        for _ in range(D.max_turns):
            reply = policy(task, history)
            result = env.step(parse_reply(reply).action)
            results.append(result)
            history += [Turn(role="assistant", content=reply, loss=True), Turn(role="user", content=result.observation)]
            if result.terminated or result.truncated:
                break
        return results, history


def first(split: str, template: str) -> Task:
    return next(t for t in D.tasks(split) if t.payload["template"] == template)


# --------------------------------------------------------------------------------------------------------------
# Database


def test_database_holds_real_related_facts():
    conn = data.open_copy()
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == set(data.SCHEMA) and len(tables) >= 6

    def one(query: str) -> list[tuple]:
        return conn.execute(query).fetchall()

    assert one("SELECT capital, alpha3, continent_code FROM countries WHERE name = 'France'") == [
        ("Paris", "FRA", "EU")]
    assert one("SELECT c.name FROM countries c JOIN continents k ON k.code = c.continent_code "
               "WHERE k.name = 'South America' AND c.alpha2 = 'BR'") == [("Brazil",)]
    (tokyo_pop, cc, tz), = one("SELECT population, country_code, timezone FROM cities WHERE name = 'Tokyo'")
    assert cc == "JP" and tz == "Asia/Tokyo" and tokyo_pop > 5_000_000
    assert ("DE",) in one("SELECT neighbour_code FROM borders WHERE country_code = 'FR'")
    assert one("SELECT cu.name FROM countries c JOIN currencies cu ON cu.code = c.currency_code "
               "WHERE c.alpha2 = 'JP'") == [("Yen",)]
    assert ("French",) in one("SELECT l.name FROM country_languages cl JOIN languages l ON l.code = cl.language_code "
                              "WHERE cl.country_code = 'FR'")
    assert one("SELECT COUNT(*) FROM subdivisions WHERE country_code = 'US'")[0][0] >= 50
    assert ("Europe/Paris",) in one("SELECT timezone FROM country_timezones WHERE country_code = 'FR'")
    assert one("SELECT COUNT(*) FROM cities")[0][0] > 20_000
    # every foreign key resolves (the builder drops rows pointing at unknown countries)
    assert one("SELECT COUNT(*) FROM cities WHERE country_code NOT IN (SELECT alpha2 FROM countries)") == [(0,)]
    assert one("SELECT COUNT(*) FROM borders WHERE neighbour_code NOT IN (SELECT alpha2 FROM countries)") == [(0,)]


def _content_hash(path: Path) -> dict[str, str]:
    conn = sqlite3.connect(path)
    try:
        return {t: grading.table_hash(conn, t) for t in data.SCHEMA}
    finally:
        conn.close()


def test_cache_file_is_versioned_atomic_and_deterministic(tmp_path, monkeypatch):
    paths: list[Path] = []
    monkeypatch.setenv("AGENTTUNING_CACHE", str(tmp_path / "a"))
    threads = [threading.Thread(target=lambda: paths.append(data.database_path())) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(paths) == 2 and paths[0] == paths[1]
    path = paths[0]
    assert path.name == f"geo-v{data.DB_VERSION}-{data.cache_key()}.sqlite"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind
    mtime = path.stat().st_mtime_ns
    assert data.database_path() == path and path.stat().st_mtime_ns == mtime  # reused, not rebuilt

    monkeypatch.setenv("AGENTTUNING_CACHE", str(tmp_path / "b"))
    assert _content_hash(path) == _content_hash(data.database_path())  # a second build has the same rows


def test_unusable_cache_falls_back_to_an_in_memory_build(tmp_path, monkeypatch):
    expected = {t: grading.table_hash(data.open_copy(), t) for t in ("countries", "borders")}
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    damaged = tmp_path / "damaged"
    (damaged / "db").mkdir(parents=True)
    (damaged / "db" / f"geo-v{data.DB_VERSION}-{data.cache_key()}.sqlite").write_bytes(b"not a database" * 100)
    for cache in (not_a_dir, damaged):
        monkeypatch.setenv("AGENTTUNING_CACHE", str(cache))
        monkeypatch.setattr(data, "_source", None)
        monkeypatch.setattr(data, "_image", None)
        conn = data.open_copy()
        assert {t: grading.table_hash(conn, t) for t in expected} == expected


# --------------------------------------------------------------------------------------------------------------
# Tasks


def test_task_counts_templates_and_payloads():
    train, test = D.tasks("train"), D.tasks("test")
    assert len(train) >= 500 and len(test) >= 100
    for split, ts in (("train", train), ("test", test)):
        assert [t.id for t in ts] == [f"db-{split}-{i:05d}" for i in range(len(ts))]
        assert all(t.env == D.id == "db-v1" and t.split == split for t in ts)
        templates = Counter(t.payload["template"] for t in ts)
        assert len(templates) >= 10
        assert {t.payload["kind"] for t in ts} == {"select", "insert", "update", "delete"}
        assert any(t.payload["ordered"] for t in ts)
        # payloads survive a JSON round trip (tasks are stored in JSONL)
        assert [Task.model_validate_json(t.model_dump_json()) for t in ts[:50]] == ts[:50]
    for t in train + test:
        p = t.payload
        if p["kind"] == "select":
            assert p["answer"] and all(v is not None for row in p["answer"] for v in row)
            assert p["table_hash"] is None
        else:
            assert p["rows_affected"] >= 1 and p["table_hash"] != pristine_hash(p["table"])


def test_tasks_are_deterministic():
    fresh = tasks.derive_all(D.id)
    assert fresh["train"] == D.tasks("train") and fresh["test"] == D.tasks("test")
    assert D.tasks("test") == D.tasks("test")
    with pytest.raises(ValueError):
        D.tasks("dev")  # type: ignore[arg-type]


def test_splits_share_no_ids_questions_or_entities():
    train, test = D.tasks("train"), D.tasks("test")
    assert not {t.id for t in train} & {t.id for t in test}
    train_text = {normalise_text(t.instruction) for t in train}
    test_text = {normalise_text(t.instruction) for t in test}
    assert not train_text & test_text
    assert len(train_text) == len(train) and len(test_text) == len(test)  # no duplicates within a split either
    assert not {t.payload["entity"] for t in train} & {t.payload["entity"] for t in test}
    assert normalise_text(_EXAMPLE_QUESTION) not in train_text | test_text


def test_reset_shows_question_and_schema_and_is_repeatable():
    task = D.tasks("test")[0]
    with D.make() as env:
        first_obs = env.reset(task)
        env.step(sql("UPDATE countries SET capital = 'X'"))
        assert env.reset(task) == first_obs  # a second reset starts from the pristine database again
        assert env.step(sql("SELECT COUNT(*) FROM countries WHERE capital = 'X'")).observation == "[(0,)]"
    assert first_obs.startswith(task.instruction) and first_obs == D.observation(task.instruction)
    for table, columns in data.SCHEMA.items():
        assert f"- {table}({columns})" in first_obs
    with D.make() as env, pytest.raises(ValueError):
        env.reset(task.model_copy(update={"env": "other-v1"}))


# --------------------------------------------------------------------------------------------------------------
# The environment proves its own tasks


def test_expert_solves_every_test_task():
    failures = []
    for task in D.tasks("test"):
        results, history = run_episode(task, D.expert)
        last = results[-1]
        if not (last.terminated and last.reward == 1.0 and last.success and len(results) == 2):
            failures.append((task.id, task.instruction, history[-3].content[:200]))
        assert all(r.reward == 0.0 for r in results[:-1]) and not any(r.invalid for r in results)
    assert failures == []


def test_expert_solves_one_train_task_per_template():
    by_template = {t.payload["template"]: t for t in reversed(D.tasks("train"))}
    for task in by_template.values():
        results, _ = run_episode(task, D.expert)
        assert results[-1].reward == 1.0, task.id


def test_expert_replies_are_honest_react():
    task = first("test", "capital")
    reply = D.expert(task, [Turn(role="user", content=D.observation(task.instruction))])
    parsed = parse_reply(reply)
    assert parsed.thought.startswith("I need the capital of") and parsed.action.startswith("Operation\n```sql\nSELECT")
    _, history = run_episode(task, D.expert)
    capital = task.payload["answer"][0][0]
    assert history[2].content == repr([(capital,)])
    assert history[3].content == (f"Thought: The query returned {capital}, so that is the answer.\n"
                                  f"Action: Answer\nFinal Answer: {[capital]!r}")


def test_wrong_answer_scores_zero_on_every_test_task():
    for task in D.tasks("test"):
        results, _ = run_episode(task, lambda t, h: D.wrong_answer(t))
        assert len(results) == 1 and results[0].terminated and results[0].reward == 0.0, task.id
        assert results[0].success is False


# --------------------------------------------------------------------------------------------------------------
# Mutation grading


def test_a_change_is_graded_by_the_table_not_by_the_sql():
    task = first("test", "update_city_population")
    _, cid = task.payload["sql"].rsplit("id = ", 1)
    new = task.payload["sql"].split("population = ")[1].split(" ")[0]
    own = f"UPDATE cities SET population = {new} WHERE id IN (SELECT id FROM cities WHERE id = {cid})"
    results, _ = run_episode(task, iter_policy(sql(own), answer("'anything at all'")))
    assert results[-1].reward == 1.0
    # the same change plus collateral damage fails
    results, _ = run_episode(task, iter_policy(sql(own), sql("DELETE FROM cities WHERE id = 1850147"), answer("[]")))
    assert results[-1].reward == 0.0
    # two steps that end in the same rows pass: a detour through another value
    results, _ = run_episode(task, iter_policy(sql(f"UPDATE cities SET population = 1 WHERE id = {cid}"),
                                               sql(own), answer("[]")))
    assert results[-1].reward == 1.0
    # dropping the table fails cleanly
    results, _ = run_episode(task, iter_policy(sql("DROP TABLE cities"), answer("[]")))
    assert results[-1].terminated and results[-1].reward == 0.0


def iter_policy(*actions: str):
    replies = iter(f"Thought: step.\nAction: {a}" for a in actions)
    return lambda task, history: next(replies)


# --------------------------------------------------------------------------------------------------------------
# Isolation


def test_episodes_do_not_see_each_others_writes():
    task = D.tasks("test")[0]
    with D.make() as a, D.make() as b:
        a.reset(task)
        b.reset(task)
        assert a.step(sql("UPDATE countries SET capital = 'Lyon' WHERE alpha2 = 'FR'")).observation == (
            "Query OK, 1 rows affected.")
        assert a.step(sql("SELECT capital FROM countries WHERE alpha2 = 'FR'")).observation == "[('Lyon',)]"
        assert b.step(sql("SELECT capital FROM countries WHERE alpha2 = 'FR'")).observation == "[('Paris',)]"
    with D.make() as c:
        c.reset(task)
        assert c.step(sql("SELECT capital FROM countries WHERE alpha2 = 'FR'")).observation == "[('Paris',)]"


def test_concurrent_episodes_in_threads_are_isolated():
    task, barrier, seen = D.tasks("test")[0], threading.Barrier(4), {}

    def worker(i: int) -> None:
        with D.make() as env:
            env.reset(task)
            env.step(sql(f"UPDATE countries SET capital = 'City{i}' WHERE alpha2 = 'FR'"))
            barrier.wait(timeout=10)  # every thread has written before any reads
            seen[i] = env.step(sql("SELECT capital FROM countries WHERE alpha2 = 'FR'")).observation

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {i: f"[('City{i}',)]" for i in range(4)}


# --------------------------------------------------------------------------------------------------------------
# Actions: feedback, never exceptions


def test_invalid_actions_get_feedback_and_the_episode_goes_on():
    task = first("test", "capital")
    with D.make() as env:
        env.reset(task)
        for action in ("Hello there", "", "Operation\nSELECT 1", "Operation\n```sql\n  ;\n```",
                       "Answer\n['Paris']", "Search[France]"):
            r = env.step(action)
            assert r.invalid and r.observation.startswith("Invalid action") and r.reward == 0.0
            assert not r.terminated and not r.truncated
        r = env.step(sql("SELEC capital FRM countries"))
        assert r.observation.startswith("Error:") and "syntax error" in r.observation and r.info["error"]
        assert not r.invalid and not r.terminated
        r = env.step(sql("SELECT nope FROM countries"))
        assert r.observation == "Error: no such column: nope"
        r = env.step(answer(repr([task.payload["answer"][0][0]])))
        assert r.terminated and r.reward == 1.0
    with pytest.raises(ParseError):
        parse_reply("Thought: I am thinking but do nothing.")


def test_only_the_first_statement_runs():
    with D.make() as env:
        env.reset(D.tasks("test")[0])
        assert env.step(sql("SELECT 'a;b'; UPDATE countries SET capital = 'X'")).observation == "[('a;b',)]"
        assert env.step(sql("SELECT COUNT(*) FROM countries WHERE capital = 'X'")).observation == "[(0,)]"
        assert env.step(sql("SELECT 1 -- comment ; still a comment\n")).observation == "[(1,)]"
        assert env.step("Operation\n```sqlite\nSELECT 3\n```").observation == "[(3,)]"
        assert env.step("Operation\n```\nSELECT 4;\n```\nThis runs the query.").observation == "[(4,)]"


def test_episode_truncates_at_max_turns():
    with D.make() as env:
        env.reset(D.tasks("test")[0])
        results = [env.step(sql("SELECT 1")) for _ in range(D.max_turns)]
        assert all(not r.truncated for r in results[:-1])
        assert results[-1].truncated and not results[-1].terminated and results[-1].reward == 0.0
        with pytest.raises(RuntimeError):
            env.step(sql("SELECT 1"))


def test_large_results_are_cut():
    with D.make() as env:
        env.reset(D.tasks("test")[0])
        obs = env.step(sql("SELECT id FROM cities ORDER BY id")).observation
        assert obs.endswith(f"(only the first {MAX_ROWS_SHOWN} rows are shown)")
        assert obs.split("\n")[0].count("(") == MAX_ROWS_SHOWN
        obs = env.step(sql("SELECT group_concat(name, ' ') FROM (SELECT name FROM cities LIMIT 3000)")).observation
        assert len(obs) < 4100 and "output cut" in obs
        # a string over the length limit (50 kB, which bounds single-call costs) is an error, not a cut result
        assert env.step(sql("SELECT group_concat(name, ' ') FROM cities")).observation == "Error: string or blob too big"


# --------------------------------------------------------------------------------------------------------------
# Guards


def test_attach_vacuum_into_pragmas_and_extensions_are_denied(tmp_path):
    target = tmp_path / "x.db"
    with D.make() as env:
        env.reset(D.tasks("test")[0])
        for statement in (f"ATTACH DATABASE '{target}' AS x", f"VACUUM INTO '{target}'",
                          "PRAGMA writable_schema = 1", "SELECT load_extension('libc')"):
            r = env.step(sql(statement))
            assert r.observation.startswith("Error:") and "authoriz" in r.observation, statement
        assert "name" in env.step(sql("PRAGMA table_info(cities)")).observation
    assert not target.exists()


def test_runaway_queries_are_stopped_quickly():
    with D.make() as env:
        env.reset(D.tasks("test")[0])
        for statement in ("WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r) SELECT COUNT(*) FROM r",
                          "SELECT COUNT(*) FROM cities a, cities b, cities c"):
            start = time.monotonic()
            r = env.step(sql(statement))
            assert time.monotonic() - start < 1.5
            assert r.observation.startswith("Error: the query was stopped") and not r.terminated
        assert env.step(sql("SELECT 2")).observation == "[(2,)]"  # the episode is still usable


# --------------------------------------------------------------------------------------------------------------
# Answer parsing and comparison


def test_final_answer_is_never_evaluated(tmp_path):
    marker = tmp_path / "pwned"
    task = first("test", "capital")
    for payload in (f"__import__('pathlib').Path({str(marker)!r}).write_text('x')",
                    f"[__import__('os').system('touch {marker}')]", "__import__('os').system('echo pwned')"):
        results, _ = run_episode(task, iter_policy(answer(payload)))
        assert results[-1].terminated and results[-1].reward == 0.0
    assert not marker.exists()
    assert grading.parse_answer("__import__('os').system('echo pwned')") == ["__import__('os').system('echo pwned')"]
    assert grading.parse_answer("[" * 10_000 + "]" * 10_000) is not None  # deep nesting does not crash


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("['Paris']", ["Paris"]), ("[('Paris',), ('Lyon',)]", ["Paris", "Lyon"]), ("Paris", ["Paris"]),
        ('"Paris"', ["Paris"]), ("42", [42]), ('["a", 1.5]', ["a", 1.5]), ("[('Province', 3)]", [("Province", 3)]),
        ("[[1, 2], [3, 4]]", [(1, 2), (3, 4)]), ('{"a": 1}', [{"a": 1}]), ("", [""]),
        ("```python\n['x']\n```", ["x"]), ('[null]', [None]),
    ],
)
def test_parse_answer_shapes(text, expected):
    assert grading.parse_answer(text) == expected


def test_comparison_rules():
    match = grading.answers_match
    # floats: equal to 2 decimals (0.01 absolute), or within 1e-9 relative; integers exact
    assert match([36438.57], [36438.56842105263], ordered=False)
    assert match(["36438.57"], [36438.56842105263], ordered=False)
    assert not match([36438.6], [36438.56842105263], ordered=False)
    assert match([1.23456789012e12], [1234567890123.4567], ordered=False)
    assert not match([1.234567e12], [1234567890123.4567], ordered=False)
    assert not match([43], [42], ordered=False) and match([42.0], [42], ordered=False)
    assert match(["1,234"], [1234], ordered=False)
    # strings: stripped, case-insensitive; numbers are not strings' equals by accident
    assert match([" paris "], ["Paris"], ordered=False) and not match(["Pari"], ["Paris"], ordered=False)
    assert not match([True], [1], ordered=False)
    # multisets unless ordered
    assert match(["b", "a"], ["a", "b"], ordered=False) and not match(["b", "a"], ["a", "b"], ordered=True)
    assert not match(["a", "a"], ["a", "b"], ordered=False) and not match(["a"], ["a", "a"], ordered=False)
    # multi-column rows, and one row written flat
    assert match([(48.85, 2.35)], [(48.8534, 2.3488)], ordered=False)
    assert match([48.85, 2.35], [(48.8534, 2.3488)], ordered=False)
    assert not match([("x", 2)], [("x", 3)], ordered=False)


def test_float_and_order_rules_in_episodes():
    avg = first("test", "avg_city_population")
    gold = avg.payload["answer"][0][0]
    assert run_episode(avg, iter_policy(answer(f"[{round(gold, 2)}]")))[0][-1].reward == 1.0
    assert run_episode(avg, iter_policy(answer(f"[{gold + 1}]")))[0][-1].reward == 0.0

    top = first("test", "top_cities")
    names = [r[0] for r in top.payload["answer"]]
    assert top.payload["ordered"] and len(names) >= 3
    assert run_episode(top, iter_policy(answer(repr(names))))[0][-1].reward == 1.0
    assert run_episode(top, iter_policy(answer(repr(names[::-1]))))[0][-1].reward == 0.0

    langs = next(t for t in D.tasks("test") if t.payload["template"] == "languages" and len(t.payload["answer"]) > 1)
    names = [r[0].upper() for r in langs.payload["answer"]]
    assert not langs.payload["ordered"]
    assert run_episode(langs, iter_policy(answer(repr(names[::-1]))))[0][-1].reward == 1.0
    assert run_episode(langs, iter_policy(answer(repr(names[1:]))))[0][-1].reward == 0.0


# --------------------------------------------------------------------------------------------------------------
# Prompts and registry


def test_prompts_and_one_shot_match_the_database():
    context = D.context()
    assert context[0].content == D.system_prompt and context[1].content == "Ok."
    assert [t.role for t in context[2:]] == ["user", "assistant", "user", "assistant"]
    assert all(t.loss is False for t in context if t.role == "assistant")
    for word in ("Operation", "```sql", "Final Answer:", "one statement", "SQLite"):
        assert word in D.system_prompt
    # the example's observation is what the database really answers, and its replies score in the environment
    example = Task(id="db-example", env=D.id, split="train", instruction=_EXAMPLE_QUESTION,
                   payload={"template": "example", "entity": "country:IS", "kind": "select", "sql": _EXAMPLE_SQL,
                            "need": "the continent of Iceland", "tables": ["countries", "continents"],
                            "answer": [["Europe"]]})
    with D.make() as env:
        assert env.reset(example) == context[2].content
        assert env.step(parse_reply(context[3].content).action).observation == _EXAMPLE_RESULT
        assert env.step(parse_reply(context[5].content).action).reward == 1.0
    assert repr(data.open_copy().execute(_EXAMPLE_SQL).fetchall()) == _EXAMPLE_RESULT


def test_registered_under_its_versioned_id():
    assert base.get("db") is D and base.get("db-v1") is D and D in base.available()
    with pytest.raises(KeyError):
        base.get("db-v2")


def test_reset_is_cheap():
    task = D.tasks("test")[0]
    env = D.make()
    start = time.perf_counter()
    for _ in range(20):
        env.reset(task)
    env.close()
    env.close()  # closing twice is safe
    assert (time.perf_counter() - start) / 20 < 0.1
