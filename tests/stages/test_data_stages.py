"""The data stages end to end on real rollout output: trajectories -> AgentInstruct -> mixture."""

from __future__ import annotations

import json

from agenttuning.data.decontam import ContaminationIndex
from agenttuning.data.formats import read_agentinstruct, read_examples
from agenttuning.data.mix import epoch_length
from agenttuning.data.stages import build_agentinstruct, mix_datasets
from agenttuning.jsonl import AppendWriter
from tests.data.builders import make_traj


def test_build_then_mix(db, db_trajectories_file, db_trajectories, tmp_path):
    extra = tmp_path / "extra.jsonl"
    test_task = db.tasks("test")[0]
    with AppendWriter(extra) as w:
        w.write(make_traj("db-train-90001", reward=0.0))  # low reward
        w.write(make_traj("db-train-90002", parse_error_at=0))  # unparsable
        w.write(db_trajectories[0])  # a second rollout of a task: duplicate
        w.write(make_traj("db-train-90003", instruction=test_task.instruction))  # a test question

    out = tmp_path / "agentinstruct"
    index = ContaminationIndex.build(db.tasks("test"))
    built = build_agentinstruct([db_trajectories_file, extra], out, index=index)
    assert built.filter.dropped == {"low_reward": 1, "parse_error": 1}
    assert built.decontam.dropped["duplicate_id"] == 1 and built.decontam.dropped["test_instruction"] == 1
    assert built.written == {"db": built.kept} and built.kept == 20 - built.decontam.dropped["test_ngram"]
    assert sorted(p.name for p in out.iterdir()) == ["db.jsonl", "manifest.json", "stats.json"]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["envs"][0]["total"] == 24 and stats["envs"][0]["kept"] == 22
    assert stats["decontam"]["kept"] == built.kept
    assert json.loads((out / "manifest.json").read_text())["files"] == {"db": "db.jsonl"}
    assert len(read_agentinstruct(out).examples) == built.kept  # stats/manifest are not read as data

    general = tmp_path / "sharegpt.json"
    convs = [{"id": f"c{i}", "conversations": [{"from": "human", "value": f"Tell me about topic {i}."},
                                                {"from": "gpt", "value": "Sure."}]} for i in range(100)]  # fmt: skip
    convs += [convs[0] | {"id": "dup"}, {"id": "empty", "conversations": []},
              {"id": "leak", "conversations": [{"from": "human", "value": test_task.instruction},
                                               {"from": "gpt", "value": "I know this one."}]}]  # fmt: skip
    general.write_text(json.dumps(convs))
    mixed = mix_datasets(out, general, tmp_path / "mix", eta=0.2, seed=1, index=index)
    assert (mixed.n_agent, mixed.n_general) == (built.kept, 100)
    assert mixed.general_dropped == {"empty": 1, "duplicate_text": 1, "test_instruction": 1}
    assert mixed.n == epoch_length(built.kept, 100, 0.2) == built.kept * 5
    train = read_examples(mixed.out)
    assert len(train) == mixed.n and {e.source for e in train} == {"agent", "general"}
    metrics = json.loads((tmp_path / "mix" / "metrics.json").read_text())
    assert metrics["n"] == mixed.n and metrics["eta"] == 0.2 and metrics["general_dropped"]["empty"] == 1
