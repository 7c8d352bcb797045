"""Evaluation (AgentTuning §3): agent tasks held-in and held-out, the normalised overall score, general abilities.

* :mod:`.agent` — :func:`~.agent.evaluate_agent`: a policy on the test split of each environment, success rate and
  mean reward with 95% intervals (:mod:`.stats`), ``results.json`` keyed by versioned env id and prompt hash.
* :mod:`.score` — :func:`~.score.overall`: per-task scores divided by the task's mean over the compared models,
  averaged within held-in / held-out.
* :mod:`.general` — :func:`~.general.evaluate_general`: loss / perplexity / exact match on held-out general chat,
  offline; :mod:`.harness` — MMLU- and GSM8K-style tasks through lm-evaluation-harness from local files.

Submodules are imported on use (torch and lm-eval load only where needed).
"""
