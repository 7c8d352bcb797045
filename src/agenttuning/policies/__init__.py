"""Policies behind one async contract (:class:`~agenttuning.policies.base.Policy`), built from a spec string.

===================  ==============================================================================
spec                 policy
===================  ==============================================================================
``openai:MODEL``     any OpenAI-compatible chat endpoint (OpenAI, vLLM, llama.cpp, Ollama, ``agenttuning serve``)
``hf:PATH_OR_ID``    a local Hugging Face causal LM with its chat template, batching concurrent episodes
``expert``           the environment's oracle
``wrong``            a deliberately wrong answer (scores 0)
``noisy:P``          the wrong answer with probability P per step, else the expert; ``random`` = ``noisy:0.5``
===================  ==============================================================================
"""

from __future__ import annotations

from typing import Any

from agenttuning.envs.base import EnvDefinition
from agenttuning.policies.base import Policy, PolicyError, Reply

__all__ = ["Policy", "PolicyError", "Reply", "make_policy"]


def make_policy(spec: str, *, env: EnvDefinition | None = None, **options: Any) -> Policy:
    """Build a policy from its spec; ``options`` go to the policy's constructor (unset ones are dropped)."""
    kind, _, arg = spec.partition(":")
    options = {k: v for k, v in options.items() if v is not None}
    if kind == "openai":
        if not arg:
            raise ValueError("the openai policy needs a model: 'openai:MODEL'")
        from agenttuning.policies.openai import OpenAIPolicy

        return OpenAIPolicy(arg, **options)
    if kind == "hf":
        if not arg:
            raise ValueError("the hf policy needs a model id or path: 'hf:PATH_OR_ID'")
        from agenttuning.policies.hf import HFPolicy

        return HFPolicy(arg, **options)
    if kind in ("expert", "wrong", "noisy", "random"):
        if env is None:
            raise ValueError(f"the {kind!r} policy needs an environment")
        from agenttuning.policies import baselines

        if kind == "expert":
            return baselines.ExpertPolicy(env)
        if kind == "wrong":
            return baselines.WrongPolicy(env)
        p = 0.5 if kind == "random" else _probability(arg, spec)
        return baselines.NoisyPolicy(env, p, seed=int(options.get("seed", 0)))
    raise ValueError(f"unknown policy {spec!r}: use openai:MODEL, hf:PATH_OR_ID, expert, wrong, noisy:P or random")


def _probability(arg: str, spec: str) -> float:
    try:
        return float(arg)
    except ValueError:
        raise ValueError(f"{spec!r}: 'noisy:P' needs a probability P, e.g. noisy:0.3") from None
