"""The data stages end to end on real rollout output: trajectories -> filter -> decontaminate -> prepare -> mix."""

from __future__ import annotations

import json

import pytest

from agenttuning.data.decontam import ContaminationIndex
from agenttuning.data.formats import read_agentinstruct
from agenttuning.data.mix import MixSampler, epoch_length
from agenttuning.data.outputs import EmptyOutputError
from agenttuning.data.reader import read_data
from agenttuning.jsonl import AppendWriter
from agenttuning.stages import decontaminate, filter, mix, prepare
from agenttuning.stages.manifest import read_stage_manifest
from agenttuning.tokens.offline import llama3_tokenizer
from tests.data.builders import make_traj


@pytest.fixture(scope="module")
def db():
    from agenttuning.envs.base import get

    return get("db")


@pytest.fixture(scope="module")
def trajectories(db, tmp_path_factory):
    """20 expert db-v1 trajectories (real rollout) plus one of each thing the two stages must drop."""
    from agenttuning.policies import make_policy
    from agenttuning.rollout.engine import rollout

    folder = tmp_path_factory.mktemp("rollout")
    summary = rollout(db, db.tasks("train")[:20], make_policy("expert", env=db), folder / "db.jsonl")
    first = sorted(summary.trajectories, key=lambda t: t.task.id)[0]
    with AppendWriter(folder / "extra.jsonl") as w:
        w.write(make_traj("db-train-90001", reward=0.0))  # low reward
        w.write(make_traj("db-train-90002", parse_error_at=0))  # unparsable
        w.write(first)  # a second rollout of a task: duplicate
        w.write(make_traj("db-train-90003", instruction=db.tasks("test")[0].instruction))  # a test question
    return folder


def test_filter_then_decontaminate_drop_each_kind_once_and_write_agentinstruct(db, trajectories, tmp_path):
    kept = filter.run(filter.FilterConfig(), [trajectories], tmp_path / "kept")
    assert (kept.total, kept.n_kept, kept.dropped) == (24, 22, {"low_reward": 1, "parse_error": 1})
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["kept.jsonl", "manifest.json", "stats.json"]

    index = ContaminationIndex.build(db.tasks("test"))
    out = tmp_path / "agentinstruct"
    clean = decontaminate.run(decontaminate.DecontaminateConfig(), [tmp_path / "kept"], out, index=index)
    assert clean.dropped["duplicate_id"] == 1 and clean.dropped["test_instruction"] == 1
    assert clean.files == {"db": "db.jsonl"} and clean.records == {"db": clean.n}
    assert clean.n == 22 - sum(clean.dropped.values())
    stats = json.loads((out / "stats.json").read_text())
    assert stats["envs"][0]["total"] == 24 and stats["envs"][0]["kept"] == 22  # the filter's table, carried
    assert stats["decontam"]["kept"] == clean.n
    assert read_stage_manifest(out).result == clean.model_dump(mode="json")
    assert len(read_agentinstruct(out).examples) == clean.n  # stats/manifest are not read as data
    assert all(t.loss is not None for ex in read_agentinstruct(out).examples for t in ex.turns if t.role == "assistant")


def test_decontaminate_general_chat_drops_empty_duplicate_and_leaked(db, tmp_path):
    general = tmp_path / "sharegpt.json"
    convs = [{"id": f"c{i}", "conversations": [{"from": "human", "value": f"Tell me about topic {i}."},
                                                {"from": "gpt", "value": "Sure."}]} for i in range(30)]  # fmt: skip
    convs += [convs[0] | {"id": "dup"}, {"id": "empty", "conversations": []},
              {"id": "leak", "conversations": [{"from": "human", "value": db.tasks("test")[0].instruction},
                                               {"from": "gpt", "value": "I know this one."}]}]  # fmt: skip
    general.write_text(json.dumps(convs))
    index = ContaminationIndex.build(db.tasks("test"))
    out = decontaminate.run(decontaminate.DecontaminateConfig(), [general], tmp_path / "g", index=index)
    assert out.dropped == {"duplicate_text": 1, "empty": 1, "test_instruction": 1} and out.n == 30
    back = read_data(tmp_path / "g").examples
    assert len(back) == 30 and {e.source for e in back} == {"general"}  # written as ShareGPT, read back as general


def test_mix_describes_the_draws_the_trainer_makes(trajectories, tmp_path):
    tok = llama3_tokenizer()
    filter.run(filter.FilterConfig(), [trajectories], tmp_path / "kept")
    decontaminate.run(decontaminate.DecontaminateConfig(), [tmp_path / "kept"], tmp_path / "ai",
                      index=ContaminationIndex.build([]))  # fmt: skip
    from agenttuning.data.formats import write_examples
    from agenttuning.data.general import stdlib_examples

    write_examples(stdlib_examples(seed=0)[:50], tmp_path / "general.jsonl")
    config = prepare.PrepareConfig(max_len=2048, pack=False)
    agent = prepare.run(config, [tmp_path / "ai"], tok, tmp_path / "p-agent")
    general = prepare.run(config, [tmp_path / "general.jsonl"], tok, tmp_path / "p-general")

    m = mix.run(mix.MixConfig(eta=0.2, seed=5), tmp_path / "p-agent", tmp_path / "p-general", tmp_path / "mix")
    assert (m.n_agent, m.n_general) == (agent.rows, general.rows)
    assert m.n == m.epoch_length == epoch_length(agent.rows, general.rows, 0.2)
    draws = MixSampler(m.n_agent, m.n_general, 0.2, 5).take(m.n)  # what the trainer draws with this seed
    assert m.draws == {"agent": sum(s == "agent" for s, _ in draws), "general": sum(s == "general" for s, _ in draws)}
    import pyarrow.parquet as pq

    rows = {s: pq.read_table(tmp_path / f"p-{s}" / "train.parquet").column("input_ids").to_pylist()
            for s in ("agent", "general")}  # fmt: skip
    assert m.tokens == {s: sum(len(rows[s][i]) for src, i in draws if src == s) for s in ("agent", "general")}
    assert m.agent_token_share > m.agent_share  # agent trajectories are long: more than eta of the tokens
    assert json.loads((tmp_path / "mix" / "metrics.json").read_text())["n"] == m.n

    with pytest.raises(EmptyOutputError, match="draws general examples, but there are none"):
        mix.run(mix.MixConfig(eta=0.5), tmp_path / "p-agent", None, tmp_path / "m2")
    with pytest.raises(ValueError, match="not a prepare output"):
        mix.run(mix.MixConfig(eta=1.0), tmp_path / "ai", None, tmp_path / "m3")
    packed = prepare.run(prepare.PrepareConfig(max_len=2048), [tmp_path / "ai"], tok, tmp_path / "packed")
    assert packed.rows < agent.rows
    with pytest.raises(ValueError, match="packed rows"):
        mix.run(mix.MixConfig(eta=1.0), tmp_path / "packed", None, tmp_path / "m4")
