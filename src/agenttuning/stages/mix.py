"""The ``mix`` stage (AgentTuning section 2.2): what the eta-mixture of the prepared agent and general data holds.

**Where mixing happens.** The trainer draws the mixture as it trains, with the seeded, resumable
:class:`~agenttuning.data.mix.MixSampler`: each example of a batch is agent data with probability eta. Mixing is
not done offline into a second copy of the data, because rendering and tokenising (``prepare``) is the expensive
part and does not depend on eta: one prepared copy of each source serves every eta of a sweep, and a resumed run
continues the same draws step for step. So this stage writes no training data; it runs the sampler the trainer
runs, over one epoch (``ceil(n_agent / eta)`` draws, or ``n``), and records what that mixture holds: examples and
tokens drawn from each source, the realised agent share, the agent share of the tokens (agent trajectories are
long, so at eta 0.2 they are far more than 20% of the tokens).

Story: read the prepared rows' lengths (as ``prepare`` fitted them) -> draw -> ``metrics.json`` -> manifest last.
``agenttuning mix`` and the pipeline's ``mix`` stage both call :func:`run`.
"""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field

from agenttuning.data.mix import MixSampler, epoch_length
from agenttuning.data.outputs import EmptyOutputError
from agenttuning.data.rows import write_json
from agenttuning.stages.folder import stage_folder
from agenttuning.stages.manifest import StageResult, read_stage_manifest

__all__ = ["MixConfig", "MixOutput", "run"]

PathLike = str | os.PathLike[str]
METRICS = "metrics.json"


class MixConfig(BaseModel):
    """The eta-mixture (paper: eta = 0.2) and its seed, shared with the trainer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    eta: float = Field(0.2, ge=0.0, le=1.0, description="Probability a draw is an agent example.")
    seed: int = Field(0, description="The sampler's seed (the trainer's seed decides its own draws).")
    n: int | None = Field(None, ge=1, description="Draws to describe (None: one epoch, ceil(n_agent / eta)).")


class MixOutput(StageResult):
    """One epoch (or ``n`` draws) of the mixture: sizes, draws and tokens per source, shares."""

    metrics: str = METRICS
    eta: float
    seed: int
    n_agent: int
    n_general: int
    n: int
    epoch_length: int
    draws: dict[str, int]
    tokens: dict[str, int]
    agent_share: float
    agent_token_share: float


def _lengths(prepared: PathLike | None, name: str) -> list[int]:
    """Token count of every prepared row of one source (fitted as its ``prepare`` run fitted them)."""
    if prepared is None:
        return []
    from agenttuning.train.data import load_token_table

    m = read_stage_manifest(prepared)
    if m is None or m.stage != "prepare":
        raise ValueError(f"{prepared}: not a prepare output (no manifest.json of stage 'prepare')")
    if m.config.get("pack"):
        raise ValueError(f"{prepared}: packed rows; mix and the trainer need one example per row (prepare --no-pack)")
    table, _ = load_token_table(prepared, max_len=m.config["max_len"], policy=m.config["length_policy"], name=name)
    return [int(n) for n in table.lengths]


def run(config: MixConfig, agent: PathLike | None, general: PathLike | None, out: PathLike, *,
        overwrite: bool = False) -> MixOutput:  # fmt: skip
    """Describe the mixture of the ``prepare`` outputs ``agent`` and ``general`` in the folder ``out``."""
    inputs = [p for p in (agent, general) if p is not None]
    with stage_folder(out, stage="mix", inputs=inputs, overwrite=overwrite) as w:
        lengths = {"agent": _lengths(agent, "agent"), "general": _lengths(general, "general")}
        n_agent, n_general = len(lengths["agent"]), len(lengths["general"])
        if config.eta > 0 and not n_agent:
            raise EmptyOutputError(f"eta={config.eta} draws agent examples, but there are none"
                                   + ("" if agent else " (give the prepared agent data)"))  # fmt: skip
        if config.eta < 1 and not n_general:
            raise EmptyOutputError(f"eta={config.eta} draws general examples, but there are none"
                                   + ("" if general else " (give the prepared general data, or eta=1)"))  # fmt: skip
        epoch = epoch_length(n_agent, n_general, config.eta)
        n = config.n or epoch
        draws = {"agent": 0, "general": 0}
        tokens = {"agent": 0, "general": 0}
        for source, i in MixSampler(n_agent, n_general, config.eta, config.seed).take(n):
            draws[source] += 1
            tokens[source] += lengths[source][i]
        output = MixOutput(eta=config.eta, seed=config.seed, n_agent=n_agent, n_general=n_general, n=n,
                           epoch_length=epoch, draws=draws, tokens=tokens,
                           agent_share=round(draws["agent"] / n, 4),
                           agent_token_share=round(tokens["agent"] / max(sum(tokens.values()), 1), 4))  # fmt: skip
        write_json(w.path / METRICS, {"stage": "mix", **output.model_dump(exclude={"metrics"})})
        w.finish(config=config, inputs={"agent": str(agent) if agent else None,
                                        "general": str(general) if general else None}, result=output)  # fmt: skip
    return output

