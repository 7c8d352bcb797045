"""The ``db`` environment family: identity, prompts, tasks, expert (AgentTuning section 2.1; AgentBench's DB task)."""

from __future__ import annotations

from agenttuning.envs.base import EnvDefinition
from agenttuning.envs.db import data, expert, tasks
from agenttuning.envs.db.env import MAX_ROWS_SHOWN, DbEnv
from agenttuning.envs.db.payload import DbPayload
from agenttuning.schema import Task, Turn

_SYSTEM_PROMPT = """\
You work with a SQLite database. Each task is either a question to answer from the data or a change to make to the \
data; it comes with the list of tables and their columns.

Work step by step. In every turn, first think about what to do next, then take exactly one action, in this form:
Thought: <your reasoning>
Action: <one of the two actions below>

1. Run one SQL statement: write "Operation" and then the statement in a ```sql block, like this:
Action: Operation
```sql
SELECT name FROM continents WHERE code = 'AF';
```
Only the first statement of the block is run, so send one statement per turn. You will see the rows it returns as a \
Python list of tuples (at most {rows} rows), the number of rows a change affected, or the error message.

2. Finish: write "Answer" and then "Final Answer:" followed by a Python list, like this:
Action: Answer
Final Answer: ["Africa"]
This ends the task. For a question, the list holds every value asked for, one item per row (a tuple per row when \
several columns are asked for), in the order the question asks for if it asks for one. For a task that inserts, \
updates or deletes data, make the change with operations first; then the content of the final answer does not \
matter (an empty list is fine), only the state of the table is checked.

Use SQLite syntax. Look at the data with queries before answering; never guess. You have at most {turns} turns."""

_EXAMPLE_QUESTION = "Which continent is Iceland in? Give the continent's name."
_EXAMPLE_SQL = (
    "SELECT ct.name FROM countries c JOIN continents ct ON ct.code = c.continent_code WHERE c.name = 'Iceland';"
)
_EXAMPLE_RESULT = "[('Europe',)]"


class DbDefinition(EnvDefinition[DbPayload]):
    """AgentBench's database task rebuilt on real geography data in SQLite (see the package docs)."""

    name = "db"
    version = 1
    description = "Answer questions about, and make changes to, a SQLite database of countries, cities and languages."
    max_turns = 10
    env_class = DbEnv

    # --- tasks ---------------------------------------------------------------------------------------------
    def derive_tasks(self) -> dict[str, list[Task]]:
        return tasks.derive_all(self.id)

    # --- prompts -------------------------------------------------------------------------------------------
    @property
    def system_prompt(self) -> str:
        return _SYSTEM_PROMPT.format(rows=MAX_ROWS_SHOWN, turns=self.max_turns)

    @property
    def one_shot(self) -> list[Turn]:
        return [
            Turn(role="user", content=self.observation(_EXAMPLE_QUESTION)),
            Turn(role="assistant", content=(
                "Thought: The countries table only holds a continent code; the continents table has the names. "
                f"I will join the two.\nAction: Operation\n```sql\n{_EXAMPLE_SQL}\n```")),
            Turn(role="user", content=_EXAMPLE_RESULT),
            Turn(role="assistant", content=(
                "Thought: The query returned Europe, so that is the answer.\n"
                "Action: Answer\nFinal Answer: ['Europe']")),
        ]

    def observation(self, question: str) -> str:
        """The first observation of an episode: the task, then the tables the agent can use."""
        schema = "\n".join(f"- {table}({columns})" for table, columns in data.SCHEMA.items())
        return f"{question}\n\nThe database has these tables:\n{schema}"

    # --- episodes ------------------------------------------------------------------------------------------
    def expert(self, task: Task, history: list[Turn]) -> str:
        return expert.expert_reply(self.payload(task), history)

    def wrong_answer(self, task: Task) -> str:
        return expert.wrong_reply(self.payload(task))

    def adversarial_actions(self, task: Task) -> list[str]:
        """Generic garbage, then SQL that destroys, shadows, runs away or asks for unbounded memory."""
        return super().adversarial_actions(task) + adversarial_sql(list(data.SCHEMA), "countries")


def adversarial_sql(tables: list[str], some_table: str) -> list[str]:
    """Operations that destroy, shadow, run away or ask for unbounded memory, on ``tables`` (SQL names, quoted where
    they need it; ``some_table`` one of them): the ``db`` family's probes, for any family whose actions are SQL."""
    def op(sql: str) -> str:
        return f"Operation\n```sql\n{sql}\n```"

    return [
        *(op(f"CREATE TEMP VIEW {t} AS SELECT * FROM main.{t} WHERE 0;") for t in tables),  # shadow
        *(op(f"DELETE FROM {t};") for t in tables),
        *(op(f"DROP TABLE {t};") for t in tables),
        op("WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r) SELECT count(*) FROM r;"),
        op("SELECT printf('%.*c', 2147483647, 'x');"),
        op("SELECT hex(zeroblob(400000)) LIKE '%' || hex(zeroblob(20000)) || '1%';"),
        op("CREATE TABLE junk AS WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r) "
           "SELECT randomblob(90000) AS b FROM r;"),
        op(f"SELECT 1 \x00; DROP TABLE {some_table};"),
        "Answer\nFinal Answer: " + "[" * 100_000,
    ]
