"""Policy specs as types: one parser from the spec string, one check of a policy's options.

A policy is named by a short string everywhere a user writes one (``--policy``, ``teacher.policy`` in a pipeline
config) and everywhere one is recorded (a trajectory's ``policy``, ``results.json``). In code it is a
:data:`PolicySpec`, a union of one frozen pydantic model per kind, told apart by ``kind``:

===================  =======================================  ==============================================
string               spec                                      policy
===================  =======================================  ==============================================
``openai:MODEL``     ``OpenAISpec(model="MODEL")``             an OpenAI-compatible chat endpoint
``hf:PATH_OR_ID``    ``HFSpec(model="PATH_OR_ID")``            a local Hugging Face causal LM
``expert``           ``ExpertSpec()``                          the environment's oracle
``wrong``            ``WrongSpec()``                           a deliberately wrong answer
``noisy:P``          ``NoisySpec(p=P)``                        wrong with probability P per step, else expert
``random``           ``NoisySpec(kind="random", p=0.5)``       ``noisy:0.5``, under its own name
===================  =======================================  ==============================================

:func:`parse_policy_spec` is the only parser; ``str(spec)`` (or ``spec.text``) gives the string back, so
``parse_policy_spec(str(spec)) == spec`` and configs and records keep holding strings. A field typed
:data:`PolicySpecField` takes either form and dumps the string. :func:`check_policy_options` says whether option
names are parameters of the kind's policy, so a typo in a config fails when it is loaded, not mid-run.
"""

from __future__ import annotations

import inspect
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, model_validator

__all__ = [
    "KINDS",
    "ExpertSpec",
    "HFSpec",
    "NoisySpec",
    "OpenAISpec",
    "PolicyKind",
    "PolicySpec",
    "PolicySpecError",
    "PolicySpecField",
    "WrongSpec",
    "check_policy_options",
    "parse_policy_spec",
    "policy_option_names",
]

PolicyKind = Literal["openai", "hf", "expert", "wrong", "noisy", "random"]
KINDS: tuple[str, ...] = ("openai", "hf", "expert", "wrong", "noisy", "random")
USAGE = "use openai:MODEL, hf:PATH_OR_ID, expert, wrong, noisy:P or random"
#: the seed is the only option of the policies an environment plays itself (expert, wrong, noisy, random)
ENV_POLICY_OPTIONS = frozenset({"seed"})


class PolicySpecError(ValueError):
    """A policy spec string that does not parse; the message starts with the string (``'noisy:2': ...``)."""


class _Spec(BaseModel):
    """What every spec shares: frozen, no unknown fields, its ``kind``, and its string form as ``text`` and
    ``str()`` (the kind alone, unless a spec kind says more)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: str

    @property
    def text(self) -> str:
        """The spec string that parses back to this spec."""
        return self.kind

    @property
    def needs_env(self) -> bool:
        """Whether the policy is played by an environment (expert, wrong, noisy): built per environment."""
        return True

    def __str__(self) -> str:
        return self.text


class _ModelSpec(_Spec):
    """A policy that is a model (``KIND:MODEL``): one policy serves every environment."""

    model: str = Field(min_length=1, description="The model: a name the endpoint serves, or a hub id, folder, "
                                                  ".gguf file or alias to load.")  # fmt: skip

    @property
    def text(self) -> str:
        return f"{self.kind}:{self.model}"

    @property
    def needs_env(self) -> bool:
        return False


class OpenAISpec(_ModelSpec):
    """``openai:MODEL``: any OpenAI-compatible chat endpoint (OpenAI, vLLM, llama.cpp, ``agenttuning serve``)."""

    kind: Literal["openai"] = "openai"


class HFSpec(_ModelSpec):
    """``hf:PATH_OR_ID``: a local Hugging Face causal LM (hub id, folder, ``.gguf`` file or alias)."""

    kind: Literal["hf"] = "hf"


class ExpertSpec(_Spec):
    """``expert``: the environment's oracle."""

    kind: Literal["expert"] = "expert"


class WrongSpec(_Spec):
    """``wrong``: answers at once with a deliberately wrong answer (scores 0)."""

    kind: Literal["wrong"] = "wrong"


class NoisySpec(_Spec):
    """``noisy:P``: the wrong answer with probability ``p`` per step, else the expert's; ``random`` is ``p=0.5``.

    ``kind`` keeps the name the spec was written with, so ``random`` reads back as ``random``.
    """

    kind: Literal["noisy", "random"] = "noisy"
    p: float = Field(ge=0.0, le=1.0, description="Probability of the wrong answer at each step.")

    @model_validator(mode="after")
    def _random_is_one_half(self) -> NoisySpec:
        if self.kind == "random" and self.p != 0.5:
            raise ValueError("'random' is noisy:0.5; write noisy:P for another probability")
        return self

    @property
    def text(self) -> str:
        if self.kind == "random":
            return "random"
        short = f"{self.p:g}"  # as NoisyPolicy names itself, unless that loses digits
        return f"noisy:{short if float(short) == self.p else repr(self.p)}"


PolicySpec = Annotated[OpenAISpec | HFSpec | ExpertSpec | WrongSpec | NoisySpec, Field(discriminator="kind")]


def parse_policy_spec(text: str | PolicySpec) -> PolicySpec:
    """The spec a string names (a spec is returned as it is); :class:`PolicySpecError` says what is wrong.

    >>> parse_policy_spec("noisy:0.3")
    NoisySpec(kind='noisy', p=0.3)
    >>> str(parse_policy_spec("hf:runs/a/model"))
    'hf:runs/a/model'
    """
    if isinstance(text, _Spec):
        return text  # type: ignore[return-value]
    if not isinstance(text, str):
        raise PolicySpecError(f"{text!r}: a policy spec is a string; {USAGE}")
    kind, sep, arg = text.partition(":")
    if kind == "openai":
        if not arg:
            raise PolicySpecError(f"{text!r}: 'openai' needs a model: 'openai:MODEL'")
        return OpenAISpec(model=arg)
    if kind == "hf":
        if not arg:
            raise PolicySpecError(f"{text!r}: 'hf' needs a model id or path: 'hf:PATH_OR_ID'")
        return HFSpec(model=arg)
    if kind in ("expert", "wrong", "random") and sep:
        raise PolicySpecError(f"{text!r}: {kind!r} takes no argument")
    if kind == "expert":
        return ExpertSpec()
    if kind == "wrong":
        return WrongSpec()
    if kind == "random":
        return NoisySpec(kind="random", p=0.5)
    if kind == "noisy":
        try:
            p = float(arg)
        except ValueError:
            p = -1.0
        if not 0.0 <= p <= 1.0:  # also NaN
            raise PolicySpecError(f"{text!r}: 'noisy:P' needs a probability P in [0, 1], e.g. noisy:0.3")
        return NoisySpec(p=p)
    raise PolicySpecError(f"{text!r}: {USAGE} (unknown policy kind {kind!r})")


def _from_text(value: Any) -> Any:
    return parse_policy_spec(value) if isinstance(value, str) else value


#: a pydantic field holding a policy spec: it takes the string or a spec, and dumps the string
PolicySpecField = Annotated[PolicySpec, BeforeValidator(_from_text), PlainSerializer(str, return_type=str)]


def policy_option_names(kind: PolicyKind) -> set[str]:
    """The option names a kind's policy takes: its constructor's keyword parameters (``seed`` for the
    environment-played kinds)."""
    if kind == "openai":
        from agenttuning.policies.openai import OpenAIPolicy as policy_class
    elif kind == "hf":
        from agenttuning.policies.hf import HFPolicy as policy_class  # type: ignore[assignment]
    elif kind in KINDS:
        return set(ENV_POLICY_OPTIONS)
    else:
        raise PolicySpecError(f"{kind!r}: {USAGE} (unknown policy kind {kind!r})")
    return set(inspect.signature(policy_class.__init__).parameters) - {"self", "model"}


def check_policy_options(kind: PolicyKind, options: dict[str, Any]) -> None:
    """Option names must be parameters of the kind's policy (a typo would fail only when the policy is built);
    a ValueError names the unknown ones and lists the known."""
    if not options:
        return
    known = policy_option_names(kind)
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(map(repr, unknown))} for a {kind} policy "
                         f"(known: {', '.join(sorted(known))})")  # fmt: skip
