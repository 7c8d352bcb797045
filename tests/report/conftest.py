"""Real, small inputs for the report, built once per session by the real stages.

* agent results: ``evaluate_agent`` on the db environment (real SQLite) and the toy ``lookup`` family (held-out),
  5 test tasks each: base = ``noisy:0.5``, tuned = ``expert``, sweep points = other ``noisy:P`` teachers;
* teacher trajectories: the rollout engine with ``noisy:0.4`` on train tasks, plus an expert file that repeats
  three of those tasks and two *test* tasks, so deduplication and decontamination both drop something;
* ``stats.json``: the filter and decontaminate stages on those files; mix ``metrics.json``: the mix stage over
  both sources prepared with the real Llama 3 tokenizer;
* general results: ``GeneralEvalResult(...).to_dict()``; ``metrics.jsonl``: records with the trainer's keys.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest

from agenttuning.report import ReportInputs, SweepPoint


@dataclass(frozen=True)
class Files:
    root: Path
    inputs: ReportInputs  # every input given
    minimal: ReportInputs  # agent results only


def _general(path: Path, loss: float, em: float) -> Path:
    from agenttuning.eval.general import GeneralEvalResult

    r = GeneralEvalResult(loss=loss, perplexity=math.exp(loss), exact_match=em, n=64, tokens=9120, em_scored=64)
    path.write_text(json.dumps(r.to_dict(), indent=2), encoding="utf-8")
    return path


def _train_metrics(path: Path) -> Path:
    """Records with the keys agenttuning.train.trainer logs: a step record each step, eval every 10 steps."""
    lines = [{"step": 0, "eval_agent_loss": 1.9, "eval_general_loss": 2.2}]
    for step in range(1, 41):
        loss = 0.6 + 1.4 * math.exp(-step / 12)
        lines.append({"step": step, "loss": loss, "agent_loss": loss * 0.8, "general_loss": loss * 1.1,
                      "lr": 2e-5 * min(1.0, step / 5), "grad_norm": 1.0, "tokens": 4096, "trained_tokens": 900,
                      "examples": 8, "agent_examples": 2, "tokens_per_s": 5000.0 + step, "epoch": step / 40,
                      "step_s": 0.8})  # fmt: skip
        if step % 10 == 0:
            lines.append({"step": step, "eval_agent_loss": 1.9 - step / 40, "eval_general_loss": 2.2 - step / 400})
    path.write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def files(tmp_path_factory) -> Files:
    from agenttuning.data.decontam import ContaminationIndex
    from agenttuning.stages import decontaminate, filter, mix, prepare
    from agenttuning.tokens.offline import llama3_tokenizer
    from agenttuning.envs import base
    from agenttuning.eval.agent import evaluate_agent
    from agenttuning.policies import make_policy
    from agenttuning.rollout.engine import rollout
    from tests.toy_env import LookupDefinition

    root = tmp_path_factory.mktemp("report-inputs")
    base.available()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(base, "_REGISTRY", dict(base._REGISTRY))
        base.register(LookupDefinition(n_test=5))
        db, lookup = base.get("db"), base.get("lookup")

        def evaluate(spec: str, name: str) -> Path:
            evaluate_agent(spec, ["db", "lookup"], held_in={"db"}, out_dir=root / "eval" / name, n=5)
            return root / "eval" / name

        agent = {"base": evaluate("noisy:0.5", "base"), "tuned": evaluate("expert", "tuned")}
        sweep_specs = [("eta=0.1", 0.1, True, "noisy:0.3"), ("eta=0.2", 0.2, True, "noisy:0.1"),
                       ("eta=0.5", 0.5, True, "noisy:0.2"), ("eta=0.2 unfiltered", 0.2, False, "noisy:0.4")]  # fmt: skip
        sweep = [SweepPoint(label, eta, filt, evaluate(spec, f"sweep{i}"),
                            _general(root / f"sweep{i}-general.json", 2.3 + eta / 4, 0.1 + eta / 10))
                 for i, (label, eta, filt, spec) in enumerate(sweep_specs)]  # fmt: skip

        teacher = root / "teacher"
        teacher.mkdir()
        rollout(db, db.tasks("train")[:12], make_policy("noisy:0.4", env=db), teacher / "db.jsonl")
        rollout(lookup, lookup.tasks("train")[:6], make_policy("noisy:0.4", env=lookup), teacher / "lookup.jsonl")
        extra = db.tasks("train")[:3] + db.tasks("test")[:2]
        rollout(db, extra, make_policy("expert", env=db), teacher / "db-extra.jsonl")
        teachers = [teacher / "db.jsonl", teacher / "lookup.jsonl", teacher / "db-extra.jsonl"]
        index = ContaminationIndex.build(db.tasks("test") + lookup.tasks("test"))  # the test splits of both
        filter.run(filter.FilterConfig(), teachers, root / "kept")
        built = decontaminate.run(decontaminate.DecontaminateConfig(), [root / "kept"], root / "agentinstruct",
                                  index=index)  # fmt: skip
        sharegpt = [{"id": f"chat-{i}", "conversations": [{"from": "human", "value": f"What is {i} squared?"},
                                                          {"from": "gpt", "value": f"{i} squared is {i * i}."}]}
                    for i in range(12)]  # fmt: skip
        (root / "general.json").write_text(json.dumps(sharegpt), encoding="utf-8")
        tok, rows = llama3_tokenizer(), prepare.PrepareConfig(max_len=2048, pack=False)
        prepare.run(rows, [root / "agentinstruct"], tok, root / "prepared-agent")
        prepare.run(rows, [root / "general.json"], tok, root / "prepared-general")
        mixed = mix.run(mix.MixConfig(eta=0.2, n=20), root / "prepared-agent", root / "prepared-general", root / "mix")
        assert built.dropped["test_id"] == 2 and mixed.n == 20
        from agenttuning.data.construction import construction_table
        from agenttuning.stages.filter import read_trajectories

        trajs = read_trajectories(teachers)
        # the first two db tasks stand for self-instructed ones (10 drafts asked for, 2 verified)
        mine = {t.id for t in db.tasks("train")[:2]}
        table = construction_table([t.task for t in trajs], trajs, read_trajectories(root / "kept"),
                                   {"db-v1": (10, 2)}, mine)  # fmt: skip
        (root / "construction.json").write_text(table.model_dump_json(), encoding="utf-8")

    general = {"base": _general(root / "base-general.json", 2.31, 0.125),
               "tuned": _general(root / "tuned-general.json", 2.35, 0.109)}  # fmt: skip
    full = ReportInputs(
        title="AgentTuning report <test>",
        agent=agent,
        general=general,
        data_stats=root / "agentinstruct" / "stats.json",
        construction=root / "construction.json",
        mix=root / "mix" / "metrics.json",
        train_metrics=_train_metrics(root / "metrics.jsonl"),
        teacher_trajectories=teachers,
        sweep=sweep,
        provenance={
            "teacher": "noisy:0.4 (the expert, wrong 40% of steps)",
            "general data": "12 arithmetic chats written by the test",
            "machine": "CI, CPU",
        },
        notes=["Scripted policies stand in for models here: the numbers test the report, not a method."],
        viewer_per_env=4,
    )
    return Files(root, full, ReportInputs(title="minimal", agent=agent))


@pytest.fixture(scope="session")
def chromium() -> str:
    """The Chromium binary; the browser tests are skipped only where none is installed."""
    from tests.report.chromium import find_chromium

    binary = find_chromium()
    if binary is None:
        pytest.skip("no chromium binary found (CI installs Debian's chromium; apt-get install chromium)")
    return binary


@pytest.fixture(scope="session")
def built(files, tmp_path_factory):
    """The full report, built once."""
    from agenttuning.report import build_report

    return build_report(files.inputs, tmp_path_factory.mktemp("report"))
