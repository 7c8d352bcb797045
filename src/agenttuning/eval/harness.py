"""General benchmarks through lm-evaluation-harness, from local files (AgentTuning §3.3: MMLU, GSM8K, HumanEval).

``lm_eval`` (the optional extra ``eval``: ``pip install 'lm-eval>=0.4.3'``) runs MMLU and GSM8K the same way the
paper's general-ability numbers are usually reproduced. Its built-in tasks read the Hugging Face hub; here each
task is a YAML whose ``dataset_path: json`` and ``dataset_kwargs.data_files`` name **absolute local paths**, so a
machine with a local model folder and the data files runs offline (``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``
are set for the run).

* :func:`write_task_dir` writes one ``<name>.yaml`` per task into a folder: ``{"mmlu_local": "mmlu_test.jsonl",
  "gsm8k_local": LocalTask("gsm8k", "gsm8k_test.jsonl", fewshot="gsm8k_train.jsonl", num_fewshot=5)}``. A bare
  path takes its kind from the task name (``mmlu``/``gsm8k`` in it).
* :func:`run_lm_eval` runs ``lm_eval.simple_evaluate(model="hf", ...)`` with a ``TaskManager`` over that folder
  and returns lm-eval's results dict (``results``, ``n-samples``, ``configs``, ``versions``, ``higher_is_better``).

Record layouts (JSON lines; the hub files exported with ``datasets`` have exactly these fields):

* **MMLU** (``cais/mmlu``): ``question``, ``choices`` (4 strings), ``answer`` (index 0-3), optional ``subject``.
  Prompt and metric as lm-eval's ``mmlu`` (``"<question>\\nA. ..\\nB. ..\\nC. ..\\nD. ..\\nAnswer:"``, log-likelihood
  of `` A``..`` D``, ``acc``), with the subject description line when the record has a ``subject``. One task over
  all questions gives the micro average, which is what lm-eval's ``mmlu`` group reports (sizes as weights).
* **GSM8K** (``openai/gsm8k``, config ``main``): ``question``, ``answer`` ending in ``#### N``. Prompt, stop
  sequences, filters (``strict-match``: ``#### N``; ``flexible-extract``: the last number) and ``exact_match`` as
  lm-eval's ``gsm8k``; few-shot examples come from an optional ``fewshot`` file (lm-eval uses 5 from ``train``).
* **HumanEval** (``openai/openai_humaneval``: ``prompt``, ``test``, ``entry_point``) is *not* run here: scoring it
  executes model-written code, and lm-eval's ``code_eval`` runs that code in a subprocess of the evaluating
  process with only Python-level guards, which is no sandbox. The plan (docs/eval.md): generate completions with
  lm-eval's ``bypass`` metric and ``log_samples``, then execute each ``prompt + completion + test`` inside a
  throwaway container (``docker run --rm --network none --read-only --memory 512m --pids-limit 64 --cpus 1`` with
  a timeout) and report pass@1; or run lm-eval's own ``humaneval`` task with ``confirm_run_unsafe_code=True``
  only inside such a container or VM. :func:`write_task_dir` refuses ``humaneval`` kinds until then.

Getting the real sets on a connected machine (then copy the files anywhere and pass their paths)::

    from datasets import load_dataset
    load_dataset("cais/mmlu", "all", split="test").to_json("mmlu_test.jsonl")
    load_dataset("cais/mmlu", "all", split="dev").to_json("mmlu_dev.jsonl")        # 5-shot examples
    load_dataset("openai/gsm8k", "main", split="test").to_json("gsm8k_test.jsonl")
    load_dataset("openai/gsm8k", "main", split="train").to_json("gsm8k_train.jsonl")
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = ["KINDS", "LocalTask", "run_lm_eval", "write_task_dir"]

Kind = Literal["mmlu", "gsm8k"]
KINDS: tuple[Kind, ...] = ("mmlu", "gsm8k")
_REQUIRED = {"mmlu": ("question", "choices", "answer"), "gsm8k": ("question", "answer")}
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
_HUMANEVAL = (
    "HumanEval-style tasks execute model-written code, which this package runs only in a sandbox it cannot provide "
    "here; see docs/eval.md ('HumanEval') for the container-based plan"
)


@dataclass(frozen=True)
class LocalTask:
    """One local task: its kind, the evaluated file, and optionally a file of few-shot examples."""

    kind: str
    test: str | os.PathLike[str]
    fewshot: str | os.PathLike[str] | None = None
    num_fewshot: int | None = None  # default: 5 when a fewshot file is given, else 0


def _kind_of(name: str) -> str:
    lowered = name.lower()
    if "humaneval" in lowered:
        return "humaneval"
    for kind in KINDS:
        if kind in lowered:
            return kind
    raise ValueError(f"task {name!r}: cannot tell its kind from the name; pass LocalTask(kind, path)")


def _check_file(path: Path, kind: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, encoding="utf-8") as f:
        line = next((ln for ln in f if ln.strip()), None)
    if line is None:
        raise ValueError(f"{path}: empty")
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        raise ValueError(f"{path}: the first line is not JSON (JSON lines expected)") from None
    missing = [k for k in _REQUIRED[kind] if k not in record]
    if missing:
        raise ValueError(f"{path}: {kind} records need {', '.join(_REQUIRED[kind])}; the first lacks {missing}")


def _yaml(name: str, task: LocalTask) -> dict[str, Any]:
    kind = task.kind
    if kind == "humaneval":
        raise NotImplementedError(f"task {name!r}: {_HUMANEVAL}")
    if kind not in KINDS:
        raise ValueError(f"task {name!r}: unknown kind {kind!r} (use one of {', '.join(KINDS)})")
    test = Path(task.test).resolve()
    _check_file(test, kind)
    files = {"test": str(test)}
    shots = task.num_fewshot if task.num_fewshot is not None else (5 if task.fewshot else 0)
    if shots and task.fewshot is None:
        raise ValueError(f"task {name!r}: num_fewshot={shots} needs a fewshot file")
    config: dict[str, Any] = {"task": name, "dataset_path": "json"}
    if task.fewshot is not None:
        fewshot = Path(task.fewshot).resolve()
        _check_file(fewshot, kind)
        files["fewshot"] = str(fewshot)
        config |= {"fewshot_split": "fewshot", "fewshot_config": {"sampler": "first_n"}}
    config |= {"dataset_kwargs": {"data_files": files}, "test_split": "test", "num_fewshot": shots}
    if kind == "mmlu":
        config |= {
            "output_type": "multiple_choice",
            "description": "{% if subject is defined and subject %}The following are multiple choice questions "
            "(with answers) about {{subject.replace('_', ' ')}}.\n\n{% endif %}",
            "doc_to_text": "{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}\n"
            "D. {{choices[3]}}\nAnswer:",
            "doc_to_choice": ["A", "B", "C", "D"],
            "doc_to_target": "answer",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
            "metadata": {"version": 1.0, "source": "agenttuning local mmlu"},
        }
    else:  # gsm8k
        config |= {
            "output_type": "generate_until",
            "doc_to_text": "Question: {{question}}\nAnswer:",
            "doc_to_target": "{{answer}}",
            "metric_list": [{
                "metric": "exact_match", "aggregation": "mean", "higher_is_better": True, "ignore_case": True,
                "ignore_punctuation": False, "regexes_to_ignore": [",", "\\$", "(?s).*#### ", "\\.$"],
            }],
            "generation_kwargs": {"until": ["Question:", "</s>", "<|im_end|>"], "do_sample": False,
                                  "temperature": 0.0},
            "repeats": 1,
            "filter_list": [
                {"name": "strict-match", "filter": [
                    {"function": "regex", "regex_pattern": "#### (\\-?[0-9\\.\\,]+)"},
                    {"function": "take_first"}]},
                {"name": "flexible-extract", "filter": [
                    {"function": "regex", "group_select": -1, "regex_pattern": "(-?[$0-9.,]{2,})|(-?[0-9]+)"},
                    {"function": "take_first"}]},
            ],
            "metadata": {"version": 3.0, "source": "agenttuning local gsm8k"},
        }  # fmt: skip
    return config


def write_task_dir(
    directory: str | os.PathLike[str], tasks: Mapping[str, str | os.PathLike[str] | LocalTask]
) -> list[Path]:
    """Write ``<directory>/<name>.yaml`` for each task; returns the files written (checked before any is written).

    Names must not clash with lm-eval's built-in tasks when the default task index is included (``run_lm_eval``
    does not include it); ``mmlu_local`` / ``gsm8k_local`` are safe.
    """
    import yaml

    configs = {}
    for name, spec in tasks.items():
        if not name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"task name {name!r}: use letters, digits, '_' and '-'")
        task = spec if isinstance(spec, LocalTask) else LocalTask(_kind_of(name), spec)
        configs[name] = _yaml(name, task)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, config in configs.items():
        path = out / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
        written.append(path)
    return written


def run_lm_eval(
    model_path: str | os.PathLike[str],
    task_dir: str | os.PathLike[str],
    tasks: Sequence[str],
    *,
    limit: float | None = None,
    device: str = "cpu",
    batch_size: int | str = 1,
    dtype: str = "auto",
    gen_kwargs: dict[str, Any] | None = None,
    num_fewshot: int | None = None,
    apply_chat_template: bool = False,
    seed: int = 1234,
    offline: bool = True,
    log_samples: bool = False,
    bootstrap_iters: int = 100000,
) -> dict[str, Any]:
    """Evaluate a local Hugging Face model folder on tasks of ``task_dir`` with lm-evaluation-harness.

    Returns lm-eval's results dict: ``results[task]`` holds ``"<metric>,<filter>"`` keys (``acc,none``,
    ``exact_match,strict-match``...) and their ``_stderr``; ``n-samples[task]`` the ``original`` and
    ``effective`` (after ``limit``) sample counts. ``gen_kwargs`` overrides generation settings (e.g.
    ``{"max_gen_toks": 256}``); ``num_fewshot`` overrides the YAML's. ``apply_chat_template`` as lm-eval's
    (off: the paper's base-model style prompting). Only lm-eval's built-in task index is left out, so the
    names in ``task_dir`` cannot clash with it.
    """
    with _hub_offline(offline):  # before lm_eval (and huggingface_hub / datasets) read the variables
        try:
            import lm_eval
            from lm_eval.tasks import TaskManager
        except ImportError as e:
            raise ImportError("run_lm_eval needs lm-evaluation-harness: pip install 'agenttuning[eval]'") from e

        manager = TaskManager(include_path=str(Path(task_dir).resolve()), include_defaults=False)
        unknown = [t for t in tasks if t not in manager.all_tasks]
        if unknown:
            raise ValueError(f"{task_dir}: no task named {unknown} (have {sorted(manager.all_tasks)})")
        results = lm_eval.simple_evaluate(
            model="hf", model_args={"pretrained": str(model_path), "dtype": dtype}, tasks=list(tasks),
            task_manager=manager, limit=limit, device=device, batch_size=batch_size, gen_kwargs=gen_kwargs,
            num_fewshot=num_fewshot, apply_chat_template=apply_chat_template, log_samples=log_samples,
            bootstrap_iters=bootstrap_iters, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
            fewshot_random_seed=seed,
        )  # fmt: skip
    if results is None:  # only on non-zero ranks of a distributed run
        return {}
    return dict(results)


@contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """With ``offline``, the Hugging Face offline variables set to 1 (where unset) for the block, then restored."""
    saved = {var: os.environ.get(var) for var in _OFFLINE_VARS}
    if offline:
        for var in _OFFLINE_VARS:
            os.environ.setdefault(var, "1")
    try:
        yield
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
