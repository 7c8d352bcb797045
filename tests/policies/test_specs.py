"""Policy specs (agenttuning.policies.specs): one parser for every kind, the string form round-trips, bad specs name
what is wrong, option names are checked, and make_policy builds the policy a typed spec names."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError

from agenttuning.envs.base import get
from agenttuning.policies import (
    ExpertSpec,
    HFSpec,
    NoisySpec,
    OpenAISpec,
    PolicySpec,
    PolicySpecError,
    WrongSpec,
    check_policy_options,
    make_policy,
    parse_policy_spec,
)
from agenttuning.policies.baselines import ExpertPolicy, NoisyPolicy, WrongPolicy
from agenttuning.policies.openai import OpenAIPolicy
from agenttuning.policies.specs import PolicySpecField, policy_option_names
from agenttuning.schema import Task, Turn
from tests.openai_server import FakeOpenAIServer

PARSED = [
    ("openai:gpt-4o", OpenAISpec(model="gpt-4o")),
    ("openai:org/model:q4", OpenAISpec(model="org/model:q4")),  # only the first colon separates the kind
    ("hf:runs/a/model", HFSpec(model="runs/a/model")),
    ("hf:meta-llama/Llama-3.2-1B-Instruct", HFSpec(model="meta-llama/Llama-3.2-1B-Instruct")),
    ("expert", ExpertSpec()),
    ("wrong", WrongSpec()),
    ("noisy:0.3", NoisySpec(p=0.3)),
    ("noisy:0", NoisySpec(p=0.0)),
    ("noisy:1", NoisySpec(p=1.0)),
    ("noisy:0.1234567", NoisySpec(p=0.1234567)),  # more digits than NoisyPolicy's name keeps
    ("random", NoisySpec(kind="random", p=0.5)),
]


@pytest.mark.parametrize(("text", "spec"), PARSED)
def test_each_kind_parses_to_its_typed_spec(text: str, spec: PolicySpec) -> None:
    parsed = parse_policy_spec(text)
    assert parsed == spec and type(parsed) is type(spec)


@pytest.mark.parametrize(("text", "spec"), PARSED)
def test_the_string_form_round_trips(text: str, spec: PolicySpec) -> None:
    assert str(spec) == spec.text == text
    assert parse_policy_spec(str(spec)) == spec
    assert parse_policy_spec(spec) is spec  # a spec passes through as it is


def test_a_noisy_spec_is_written_canonically_and_random_stays_random() -> None:
    assert str(parse_policy_spec("noisy:.30")) == "noisy:0.3"
    assert str(parse_policy_spec("random")) == "random" and parse_policy_spec("random").p == 0.5
    assert parse_policy_spec("random") != parse_policy_spec("noisy:0.5")  # same policy, its own name
    with pytest.raises(ValidationError, match="'random' is noisy:0.5"):
        NoisySpec(kind="random", p=0.3)


@pytest.mark.parametrize(("text", "message"), [
    ("openai:", "'openai:': 'openai' needs a model: 'openai:MODEL'"),
    ("hf:", "'hf:': 'hf' needs a model id or path: 'hf:PATH_OR_ID'"),
    ("expert:0.3", "'expert:0.3': 'expert' takes no argument"),
    ("wrong:x", "'wrong:x': 'wrong' takes no argument"),
    ("random:0.5", "'random:0.5': 'random' takes no argument"),
    ("noisy:2", "'noisy:2': 'noisy:P' needs a probability P in [0, 1], e.g. noisy:0.3"),
    ("noisy:-0.1", "'noisy:-0.1': 'noisy:P' needs a probability P in [0, 1], e.g. noisy:0.3"),
    ("noisy:nan", "'noisy:nan': 'noisy:P' needs a probability P in [0, 1], e.g. noisy:0.3"),
    ("noisy:lots", "'noisy:lots': 'noisy:P' needs a probability P in [0, 1], e.g. noisy:0.3"),
    ("noisy", "'noisy': 'noisy:P' needs a probability P in [0, 1], e.g. noisy:0.3"),
    ("gpt4", "'gpt4': use openai:MODEL, hf:PATH_OR_ID, expert, wrong, noisy:P or random "
             "(unknown policy kind 'gpt4')"),
])  # fmt: skip
def test_a_bad_spec_says_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(PolicySpecError) as caught:
        parse_policy_spec(text)
    assert str(caught.value) == message
    assert isinstance(caught.value, ValueError)  # the CLI's one-line error path catches ValueError


def test_a_spec_field_takes_the_string_and_dumps_the_string() -> None:
    class Config(BaseModel):
        policy: PolicySpecField

    cfg = Config(policy="noisy:0.3")
    assert cfg.policy == NoisySpec(p=0.3)
    assert cfg.model_dump() == {"policy": "noisy:0.3"} and cfg.model_dump_json() == '{"policy":"noisy:0.3"}'
    assert Config.model_validate_json(cfg.model_dump_json()) == cfg
    assert Config(policy=HFSpec(model="m")).policy == HFSpec(model="m")
    with pytest.raises(ValidationError, match="'noisy:P' needs a probability"):
        Config(policy="noisy:7")


def test_the_union_is_told_apart_by_kind() -> None:
    adapter = TypeAdapter(PolicySpec)
    assert adapter.validate_python({"kind": "hf", "model": "m"}) == HFSpec(model="m")
    assert adapter.validate_python({"kind": "random", "p": 0.5}) == NoisySpec(kind="random", p=0.5)
    with pytest.raises(ValidationError, match="does not match any of the expected tags"):
        adapter.validate_python({"kind": "magic"})


def test_option_names_are_the_constructor_parameters() -> None:
    assert {"batch_size", "max_new_tokens", "kv_reuse", "seed"} <= policy_option_names("hf")
    assert {"base_url", "api_key", "max_tokens", "max_retries"} <= policy_option_names("openai")
    assert "model" not in policy_option_names("hf") | policy_option_names("openai")
    assert policy_option_names("noisy") == policy_option_names("expert") == {"seed"}
    check_policy_options("hf", {"batch_size": 4, "temperature": 0.0})
    with pytest.raises(ValueError, match=r"unknown option\(s\) 'batchsize' for a hf policy \(known: .*batch_size"):
        check_policy_options("hf", {"batchsize": 4})
    with pytest.raises(ValueError, match=r"unknown option\(s\) 'temperature' for a expert policy \(known: seed\)"):
        check_policy_options("expert", {"temperature": 0.5})


def test_make_policy_builds_the_environment_policies_from_typed_specs() -> None:
    db = get("db")
    assert isinstance(make_policy(ExpertSpec(), env=db), ExpertPolicy)
    assert isinstance(make_policy(WrongSpec(), env=db), WrongPolicy)
    noisy = make_policy(NoisySpec(p=0.25), env=db, seed=3)
    assert isinstance(noisy, NoisyPolicy) and (noisy.p_wrong, noisy.seed, noisy.name) == (0.25, 3, "noisy:0.25")
    random = make_policy(parse_policy_spec("random"), env=db)
    assert isinstance(random, NoisyPolicy) and random.p_wrong == 0.5
    with pytest.raises(ValueError, match="the 'expert' policy needs an environment"):
        make_policy(ExpertSpec())
    with pytest.raises(ValueError, match=r"unknown option\(s\) 'temperature' for a noisy policy"):
        make_policy("noisy:0.1", env=db, temperature=0.5)
    with pytest.raises(PolicySpecError, match="'gpt4': use openai:MODEL"):
        make_policy("gpt4", env=db)


async def test_make_policy_from_an_openai_spec_talks_to_that_model() -> None:
    task = Task(id="t-0001", env="fake-v1", split="test", instruction="say hi")
    with FakeOpenAIServer() as srv:
        policy = make_policy(OpenAISpec(model="teacher"), base_url=srv.base_url, api_key="sk-test", max_retries=0)
        try:
            assert isinstance(policy, OpenAIPolicy) and policy.name == "openai:teacher"
            reply = await policy.act([Turn(role="user", content="hello")], task=task)
        finally:
            await policy.aclose()
        assert reply.text == "echo: hello" and srv.requests[0].body["model"] == "teacher"
    with pytest.raises(ValueError, match=r"unknown option\(s\) 'max_new_tokens' for a openai policy"):
        make_policy(OpenAISpec(model="teacher"), max_new_tokens=4)  # an hf option, refused before a client is made
