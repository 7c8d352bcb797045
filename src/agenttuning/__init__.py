"""agenttuning: AgentTuning (Zeng et al., 2023) end to end — AgentInstruct trajectories, hybrid tuning, evaluation."""

__version__ = "0.1.0"
