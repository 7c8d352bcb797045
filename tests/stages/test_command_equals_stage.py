"""The command and the pipeline stage of the same name write byte-identical files from the same inputs (issue 12):
filter, decontaminate, prepare and mix, each run once through ``agenttuning <command>`` and once through the
pipeline's stage table entry, on real db-v1 trajectories (the expert, made to fail now and then) and real general
chat."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from agenttuning.cli import app
from agenttuning.pipeline.config import PipelineConfig
from agenttuning.pipeline.stages import STAGES, StageContext, StageRecord
from agenttuning.stages.manifest import read_stage_manifest

runner = CliRunner()
TABLE = {s.name: s for s in STAGES}
CONFIG = PipelineConfig.model_validate({
    "teacher": {"envs": ["db"]}, "filter": {"min_reward": 1.0}, "prepare": {"max_len": 2048, "pack": False},
    "mix": {"eta": 0.2, "seed": 3},
})  # fmt: skip


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _same_output(command_out: Path, stage_out: Path) -> None:
    """Every data file byte for byte; the manifests agree on the stage, its config and its result (they differ only
    in where the inputs were, the seconds taken and the time written)."""
    a, b = _files(command_out), _files(stage_out)
    assert sorted(a) == sorted(b)
    for name in a:
        if Path(name).name != "manifest.json":
            assert a[name] == b[name], f"{name} differs"
    for sub in {str(Path(n).parent) for n in a if Path(n).name == "manifest.json"}:
        ma, mb = read_stage_manifest(command_out / sub), read_stage_manifest(stage_out / sub)
        assert ma is not None and mb is not None
        assert (ma.stage, ma.config, ma.result) == (mb.stage, mb.config, mb.result)


def _record(name: str, folder: Path, result: dict) -> StageRecord:
    return StageRecord(name, name, folder, result)


def _stage(name: str, out: Path, inputs: dict[str, StageRecord]) -> dict:
    """Run the pipeline's table entry for ``name`` as the runner does, into a fresh folder."""
    out.mkdir(parents=True)
    result = TABLE[name].run(StageContext(CONFIG, out, inputs, progress=False))
    return result if isinstance(result, dict) else result.model_dump(mode="json")


def _cli(*args: str) -> None:
    r = runner.invoke(app, list(args))
    assert r.exit_code == 0, r.output


@pytest.fixture(scope="module")
def rollout_dir(tmp_path_factory):
    """A rollout stage's folder: 16 db-v1 train tasks, the expert failing with probability 0.3 per step."""
    from agenttuning.envs.base import get
    from agenttuning.policies import make_policy
    from agenttuning.rollout.engine import rollout

    db = get("db")
    folder = tmp_path_factory.mktemp("rollout")
    summary = rollout(db, db.tasks("train")[:16], make_policy("noisy:0.3", env=db, seed=1), folder / "db-v1.jsonl")
    assert 0 < summary.successes < 16  # something for the filter to drop
    return folder


@pytest.fixture(scope="module")
def general_dir(tmp_path_factory):
    """A general stage's folder: standard-library docstring chats (real text), as the pipeline writes them."""
    from agenttuning.data.formats import write_examples
    from agenttuning.data.general import stdlib_examples

    folder = tmp_path_factory.mktemp("general")
    write_examples(stdlib_examples(seed=0)[:60], folder / "train.jsonl")
    return folder


def test_filter_decontaminate_prepare_and_mix_commands_equal_their_pipeline_stages(rollout_dir, general_dir, tmp_path):
    cli, pipe = tmp_path / "cli", tmp_path / "pipe"

    _cli("filter", str(rollout_dir / "db-v1.jsonl"), "--out", str(cli / "filter"), "--min-reward", "1")
    filtered = _stage("filter", pipe / "filter", {"rollout": _record("rollout", rollout_dir, {"files": ["db-v1.jsonl"]})})
    assert 0 < filtered["n_kept"] < filtered["total"] == 16
    _same_output(cli / "filter", pipe / "filter")

    _cli("decontaminate", str(cli / "filter"), "--out", str(cli / "decontaminate"))
    decontaminated = _stage("decontaminate", pipe / "decontaminate",
                            {"filter": _record("filter", pipe / "filter", filtered)})  # fmt: skip
    assert decontaminated["files"] == {"db": "db.jsonl"}
    _same_output(cli / "decontaminate", pipe / "decontaminate")

    for source, data in (("agent", cli / "decontaminate"), ("general", general_dir / "train.jsonl")):
        _cli("prepare", str(data), "--tokenizer", "llama3", "--no-pack", "--max-len", "2048",
             "--out", str(cli / f"prepare-{source}"))  # fmt: skip
    model = _record("model", tmp_path, {"model": "llama3", "tokenizer": "llama3", "local": False})
    prepared = _stage("prepare", pipe / "prepare", {
        "decontaminate": _record("decontaminate", pipe / "decontaminate", decontaminated), "model": model,
        "general": _record("general", general_dir, {"train": "train.jsonl"})})  # fmt: skip
    _same_output(cli / "prepare-agent", pipe / "prepare" / "agent")
    _same_output(cli / "prepare-general", pipe / "prepare" / "general")

    _cli("mix", "--agent", str(cli / "prepare-agent"), "--general", str(cli / "prepare-general"), "--eta", "0.2",
         "--seed", "3", "--out", str(cli / "mix"))  # fmt: skip
    mixed = _stage("mix", pipe / "mix", {"prepare": _record("prepare", pipe / "prepare", prepared), "model": model})
    assert mixed["n"] == mixed["epoch_length"] and mixed["draws"]["agent"] > 0
    _same_output(cli / "mix", pipe / "mix")
