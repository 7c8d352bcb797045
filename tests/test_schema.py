"""The data model, and its conversions (in :mod:`agenttuning.data.formats`) to AgentInstruct and OpenAI messages,
lossless where the target can hold it."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from agenttuning.data.formats import to_agentinstruct_record, to_openai_record, trajectory_from_agentinstruct
from agenttuning.rollout.react import step_from_reply
from agenttuning.schema import SCHEMA_VERSION, Step, Task, Trajectory, Turn

CONTEXT = [
    Turn(role="user", content="You operate a database. Reply with Thought and Action."),
    Turn(role="assistant", content="Ok.", loss=False),
    Turn(role="user", content="Example question"),
    Turn(role="assistant", content="Thought: example\nAction: Answer\nFinal Answer: [1]", loss=False),
]


def make_traj(**kw) -> Trajectory:
    task = Task(id="db-train-00001", env="db-v1", split="train", instruction="What is the capital of France?")
    steps = [
        step_from_reply("Thought: query it\nAction: Operation\n```sql\nSELECT 1;\n```", observation="[('Paris',)]"),
        step_from_reply("The answer is Paris.\n**Action:** Answer\nFinal Answer: [\"Paris\"]", observation="", reward=1.0,
                        terminated=True),
    ]
    fields = dict(task=task, policy="expert", context=CONTEXT, initial_observation="What is the capital of France?\n"
                  "Tables: countries(name, capital)", steps=steps, reward=1.0, success=True)
    fields.update(kw)
    return Trajectory(**fields)


def test_agentinstruct_layout_matches_the_published_dataset():
    rec = to_agentinstruct_record(make_traj())
    assert list(rec) == ["id", "conversations"] and rec["id"] == "db-train-00001"
    convs = rec["conversations"]
    assert [c["from"] for c in convs] == ["human", "gpt", "human", "gpt", "human", "gpt", "human", "gpt"]
    # null on human turns, false on the in-context gpt turns ("Ok.", the one-shot), true on the trained ones
    assert [c["loss"] for c in convs] == [None, False, None, False, None, True, None, True]
    assert convs[1]["value"] == "Ok."
    assert all(set(c) == {"from", "value", "loss"} for c in convs)
    # the verbatim reply is kept, not a re-rendering of it
    assert convs[-1]["value"] == "The answer is Paris.\n**Action:** Answer\nFinal Answer: [\"Paris\"]"


def test_agentinstruct_round_trip_is_lossless():
    traj = make_traj()
    rec = to_agentinstruct_record(traj)
    back = trajectory_from_agentinstruct(rec, env="db-v1")
    assert to_agentinstruct_record(back) == rec
    assert back.context == traj.context
    assert [(s.thought, s.action) for s in back.steps] == [(s.thought, s.action) for s in traj.steps]
    assert back.steps[0].observation == "[('Paris',)]"


def test_canonical_replies_store_no_raw_copy():
    s = step_from_reply("Thought: a\nAction: b", observation="o")
    assert s.raw is None and s.reply == "Thought: a\nAction: b"
    s2 = step_from_reply("no action here", observation="o")
    assert s2.parse_error and s2.raw == "no action here" and s2.reply == "no action here"


def test_openai_record_keeps_roles_and_loss_flags():
    rec = to_openai_record(make_traj())
    assert [m["role"] for m in rec["messages"]][:2] == ["user", "assistant"]
    assert rec["loss"] == [None, False, None, False, None, True, None, True]
    assert rec["messages"][-1]["content"].endswith('Final Answer: ["Paris"]')


def test_malformed_agentinstruct_records_are_rejected_with_a_reason():
    with pytest.raises(ValueError, match="non-empty list"):
        trajectory_from_agentinstruct({"id": "x", "conversations": []})
    with pytest.raises(ValueError, match=r"conversations\[0\]"):
        trajectory_from_agentinstruct({"id": "x", "conversations": [{"from": "system", "value": "hi"}]})
    with pytest.raises(ValueError, match="human turn cannot carry loss"):
        trajectory_from_agentinstruct({"id": "x", "conversations": [{"from": "human", "value": "hi", "loss": True}]})


def test_records_are_frozen_and_versioned():
    traj = make_traj()
    assert traj.schema_version == SCHEMA_VERSION
    with pytest.raises(ValidationError):
        traj.reward = 0.0  # type: ignore[misc]
    with pytest.raises(ValidationError, match="newer"):
        Trajectory.model_validate({**traj.model_dump(), "schema_version": SCHEMA_VERSION + 1})
    with pytest.raises(ValidationError):
        Step.model_validate({"thought": "", "action": "", "observation": "", "surprise": 1})


def test_json_round_trip_is_exact():
    traj = make_traj()
    assert Trajectory.model_validate_json(traj.model_dump_json()) == traj
