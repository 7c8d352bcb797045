"""Policies behind one async contract (:class:`~agenttuning.policies.base.Policy`), built from a spec.

===================  ==============================================================================
spec                 policy
===================  ==============================================================================
``openai:MODEL``     any OpenAI-compatible chat endpoint (OpenAI, vLLM, llama.cpp, Ollama, ``agenttuning serve``)
``hf:PATH_OR_ID``    a local Hugging Face causal LM with its chat template, batching concurrent episodes
``expert``           the environment's oracle
``wrong``            a deliberately wrong answer (scores 0)
``noisy:P``          the wrong answer with probability P per step, else the expert; ``random`` = ``noisy:0.5``
===================  ==============================================================================

A spec is a string where users write or records keep one, and a typed :data:`~agenttuning.policies.specs.PolicySpec`
in code (:mod:`agenttuning.policies.specs`: the one parser and the one check of a policy's options).
"""

from __future__ import annotations

from typing import Any

from agenttuning.envs.base import EnvDefinition
from agenttuning.policies.base import Policy, PolicyError, Reply
from agenttuning.policies.specs import (
    ExpertSpec,
    HFSpec,
    NoisySpec,
    OpenAISpec,
    PolicySpec,
    PolicySpecError,
    WrongSpec,
    check_policy_options,
    parse_policy_spec,
)

__all__ = [
    "ExpertSpec",
    "HFSpec",
    "NoisySpec",
    "OpenAISpec",
    "Policy",
    "PolicyError",
    "PolicySpec",
    "PolicySpecError",
    "Reply",
    "WrongSpec",
    "check_policy_options",
    "make_policy",
    "parse_policy_spec",
]


def make_policy(spec: str | PolicySpec, *, env: EnvDefinition | None = None, **options: Any) -> Policy:
    """Build the policy a spec (string or :data:`PolicySpec`) names; ``options`` go to the policy's constructor.

    Unset (None) options are dropped; unknown ones are a ValueError (:func:`check_policy_options`), as is a spec
    that does not parse (:class:`PolicySpecError`) or an environment-played policy without ``env``.
    """
    parsed = parse_policy_spec(spec)
    options = {k: v for k, v in options.items() if v is not None}
    check_policy_options(parsed.kind, options)
    if isinstance(parsed, OpenAISpec):
        from agenttuning.policies.openai import OpenAIPolicy

        return OpenAIPolicy(parsed.model, **options)
    if isinstance(parsed, HFSpec):
        from agenttuning.policies.hf import HFPolicy

        return HFPolicy(parsed.model, **options)
    if env is None:
        raise ValueError(f"the {parsed.kind!r} policy needs an environment")
    from agenttuning.policies import baselines

    if isinstance(parsed, ExpertSpec):
        return baselines.ExpertPolicy(env)
    if isinstance(parsed, WrongSpec):
        return baselines.WrongPolicy(env)
    return baselines.NoisyPolicy(env, parsed.p, seed=int(options.get("seed", 0)))
