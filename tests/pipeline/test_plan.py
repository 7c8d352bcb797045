"""The plan: which stages a config change re-runs (keys depend on settings and upstream keys only)."""

from __future__ import annotations

from agenttuning.pipeline import load_pipeline_config, plan


def _keys(*overrides: str) -> dict[str, str]:
    return {p.stage.name: p.key for p in plan(load_pipeline_config("scratch", list(overrides)))}


def _changed(a: dict[str, str], b: dict[str, str]) -> set[str]:
    return {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}


def test_plan_is_deterministic_and_in_order() -> None:
    keys = _keys()
    assert keys == _keys()
    assert list(keys) == ["tasks", "rollout", "filter", "construction", "decontaminate", "general", "tokenizer", "model", "prepare", "mix",
                          "train", "eval-base", "eval-tuned"]


def test_changing_eta_changes_only_mix_train_and_tuned_eval() -> None:
    assert _changed(_keys(), _keys("mix.eta=0.5")) == {"mix", "train", "eval-tuned"}


def test_unfiltered_keeps_the_base_model_and_its_evaluation() -> None:
    changed = _changed(_keys(), _keys("filter.enabled=false"))
    assert changed == {"filter", "construction", "decontaminate", "prepare", "mix", "train", "eval-tuned"}


def test_teacher_and_training_changes_flow_downstream() -> None:
    teacher = _changed(_keys(), _keys("teacher.n=5"))
    assert "general" not in teacher and {"rollout", "tokenizer", "model", "train", "eval-base"} <= teacher
    train = _changed(_keys(), _keys("train.lr=0.01"))
    assert train == {"train", "eval-tuned"}
    evaluation = _changed(_keys(), _keys("eval.n=3"))
    assert evaluation == {"eval-base", "eval-tuned"}


def test_an_hf_model_skips_the_tokenizer_stage() -> None:
    keys = _keys("model.name=some-org/some-chat-model")  # a hub id: a missing local path fails at load
    assert "tokenizer" not in keys and "model" in keys


def test_self_instruct_adds_the_instruct_stage_and_changes_only_the_agent_data_side() -> None:
    run = "tasks.self_instruct=[{env: db, teacher: 'openai:m', base_url: 'http://127.0.0.1:9/v1', n: 4}]"
    keys = _keys(run)
    assert list(keys)[:2] == ["instruct", "tasks"]
    changed = _changed(_keys(), keys)
    assert {"instruct", "tasks", "rollout", "filter", "construction", "decontaminate", "train"} <= changed
    assert "general" not in changed
    # the teacher's tasks are addressed by what was asked: another n is another instruct stage
    assert _keys(run.replace("n: 4", "n: 5"))["instruct"] != keys["instruct"]


def test_registering_a_family_redoes_an_evaluation_only_when_it_evaluates_every_family(monkeypatch) -> None:
    from agenttuning.envs import base
    from tests.toy_env import LookupDefinition

    named, every = ("eval.envs=[db, kg]",), ("eval.envs=[all]",)
    before = _keys(*named), _keys(*every)
    base.available()
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    base.register(LookupDefinition())
    after = _keys(*named), _keys(*every)
    # its test split is new data to decontaminate against either way; evaluation changes only for 'all'
    assert _changed(before[0], after[0]) == {"decontaminate", "prepare", "mix", "train", "eval-tuned"}
    assert {"eval-base", "eval-tuned"} <= _changed(before[1], after[1])
