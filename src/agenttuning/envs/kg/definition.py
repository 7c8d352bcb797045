"""The ``kg`` environment family: identity, prompts, tasks, expert (AgentTuning section 2.1; AgentBench's KG task)."""

from __future__ import annotations

from functools import cached_property

from agenttuning.envs.base import EnvDefinition
from agenttuning.envs.kg import data, env, expert, tasks, tools
from agenttuning.envs.kg.env import KgEnv
from agenttuning.envs.kg.payload import KgPayload
from agenttuning.schema import Task, Turn

_SYSTEM_PROMPT = """\
You answer questions over a knowledge graph of countries, cities, continents, subregions, currencies and languages \
by calling tools. Each question lists the entities it names: write their names exactly as given.

Relations of each kind of entity (with the kind they lead to):
- country: continent, subregion, capital (city), major_cities (city), currency, languages (language), borders (country)
- city: country, capital_of (country)
- continent, subregion: countries (country)
- currency: used_in (country)
- language: spoken_in (country)

Tools, where E is an entity name or a variable such as #0:
- get_relations(E): the relations of E.
- get_neighbors(E, relation): the entities that E is linked to by the relation.
- intersection(#a, #b): the entities in both variables (of the same kind).
- count(#a): how many entities #a holds.
A tool that returns entities or a number stores them in a new variable (#0, then #1, ...) and shows it.

In every turn, think, then take exactly one action:
Thought: <your reasoning>
Action: <one tool call>
Once a variable holds exactly the answer (for a "how many" question: the count), finish with:
Thought: <your reasoning>
Action: Final Answer: #k
You have at most {turns} turns."""

_EXAMPLE_QUESTION = "Which languages are spoken in both Belgium and Switzerland?"
_EXAMPLE_ENTITIES = ("Belgium", "Switzerland")
_EXAMPLE_STEPS = (
    ("get_neighbors(Belgium, languages)", "First the languages spoken in Belgium."),
    ("get_neighbors(Switzerland, languages)", "Now the languages spoken in Switzerland."),
    ("intersection(#0, #1)", "The languages in both #0 and #1 are spoken in both countries."),
)


class KgDefinition(EnvDefinition[KgPayload]):
    """AgentBench's knowledge-graph task rebuilt on real geography data (see the package docs)."""

    name = "kg"
    version = 1
    description = "Answer multi-hop questions over a knowledge graph of countries, cities, currencies and languages."
    max_turns = 8
    env_class = KgEnv

    # --- tasks ---------------------------------------------------------------------------------------------
    def derive_tasks(self) -> dict[str, list[Task]]:
        return tasks.derive(data.graph(), self.id)

    # --- prompts -------------------------------------------------------------------------------------------
    @property
    def system_prompt(self) -> str:
        return _SYSTEM_PROMPT.format(turns=self.max_turns)

    @cached_property
    def _one_shot(self) -> list[Turn]:
        """The example episode, its observations produced by the real tools on the real graph."""
        session = tools.Session(data.graph())
        turns = [Turn(role="user", content=self.observation(_EXAMPLE_QUESTION, _EXAMPLE_ENTITIES))]
        for action, thought in _EXAMPLE_STEPS:
            turns.append(Turn(role="assistant", content=f"Thought: {thought}\nAction: {action}"))
            turns.append(Turn(role="user", content=session.run(tools.parse(action))))
        last = session.variables[-1]
        assert isinstance(last, tools.EntitySet)
        names = " and ".join(sorted(last.members))
        turns.append(Turn(role="assistant", content=(
            f"Thought: #2 holds {names}, which answers the question.\nAction: Final Answer: #2")))
        return turns

    @property
    def one_shot(self) -> list[Turn]:
        return list(self._one_shot)

    def observation(self, question: str, entities: list[str] | tuple[str, ...]) -> str:
        """The first observation of an episode: the question and the entities it names."""
        return f"Question: {question}\nEntities: [{', '.join(entities)}]"

    # --- episodes ------------------------------------------------------------------------------------------
    def expert(self, task: Task, history: list[Turn]) -> str:
        return expert.expert_reply(self.payload(task), history)

    def wrong_answer(self, task: Task) -> str:
        return expert.wrong_reply()

    def adversarial_actions(self, task: Task) -> list[str]:
        """Generic garbage, then tool calls at the size limits, on undefined variables and with odd arguments."""
        entity = self.payload(task).entities[0]
        near = "x" * (tools.MAX_NAME_CHARS - 1)  # the longest name still searched for near matches
        return super().adversarial_actions(task) + [
            f"get_relations({near})",
            f"get_neighbors({near}, borders)",
            f"get_neighbors({entity}, " + "r" * 1900 + ")",
            "get_relations(" + "a" * (env.MAX_ACTION_CHARS - 20) + ")",
            f"get_neighbors({entity}, borders)", "intersection(#0, #0)", "count(#1)", "intersection(#0, #2)",
            "count(#" + "9" * 1500 + ")",
            "Final Answer: " + "9" * 1900,
            "Final Answer: #" + "9" * 1900,
            f"get_neighbors(\x00{entity}, borders)", f"get_relations({entity}\ud800)",
        ]
