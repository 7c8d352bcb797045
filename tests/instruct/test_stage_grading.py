"""The instruct stage's grading never lets one task end a run: an environment that raises while a drafted task is
played (a flaky init script, a broken game) makes that draft ``expert_fails``, with the error as the detail."""

from __future__ import annotations

from types import SimpleNamespace

from agenttuning.schema import Task
from agenttuning.stages.instruct import _verify
from tests.toy_env import LookupDefinition


def test_an_environment_error_while_grading_rejects_the_draft_instead_of_ending_the_run():
    definition = LookupDefinition(n_train=2, n_test=2)
    broken = Task(id="lookup-instruct-1", env=definition.id, split="train", instruction="Find the word for k.",
                  payload={"key": "k", "raise": True})  # every step raises
    family = SimpleNamespace(draft_task=lambda d, draft: broken)
    reason, detail = _verify(definition, family, novelty=None, draft=object())  # type: ignore[arg-type]
    assert reason == "expert_fails"
    assert detail == "the environment failed on the task: RuntimeError: the environment broke"
    # the same task without the fault is graded normally (and reaches the novelty check)
    fine = broken.model_copy(update={"payload": {"key": "k"}})
    novelty = SimpleNamespace(problem=lambda task: None)
    assert _verify(definition, SimpleNamespace(draft_task=lambda d, draft: fine), novelty, object()) == fine


def test_the_config_refuses_a_teacher_that_is_not_an_openai_endpoint():
    import pytest
    from pydantic import ValidationError

    from agenttuning.stages.instruct import InstructConfig

    for bad in ("expert", "openai:", "hf:some/model"):
        with pytest.raises(ValidationError, match=r"teacher .* must be 'openai:MODEL'"):
            InstructConfig(teacher=bad)
    assert InstructConfig(teacher="openai:gpt-4o").teacher == "openai:gpt-4o"
