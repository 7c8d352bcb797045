"""``agenttuning pipeline``: the whole method as content-addressed stages (see :mod:`.run` and :mod:`.cache`)."""

from agenttuning.pipeline.config import (
    PipelineConfig,
    PipelineConfigError,
    load_pipeline_config,
)
from agenttuning.pipeline.run import PipelineRun, plan, run_pipeline, run_sweep

__all__ = [
    "PipelineConfig",
    "PipelineConfigError",
    "PipelineRun",
    "load_pipeline_config",
    "plan",
    "run_pipeline",
    "run_sweep",
]
