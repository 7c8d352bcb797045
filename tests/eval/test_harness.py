"""lm-evaluation-harness on local MMLU- and GSM8K-style files: the YAMLs, and an end-to-end run on a tiny model."""

from __future__ import annotations

import json

import pytest
import yaml

from agenttuning.eval.harness import LocalTask, run_lm_eval, write_task_dir


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def mmlu(path, n=4):
    return write_jsonl(path, [{"question": f"What is {i} + 1?", "subject": "elementary_mathematics",
                               "choices": [str(i + 1), str(i), str(i + 2), "7"], "answer": 0}
                              for i in range(n)])  # fmt: skip


def gsm8k(path, n=3):
    return write_jsonl(path, [{"question": f"Tom has {i} apples and buys 2. How many does he have?",
                               "answer": f"He has {i} + 2 = {i + 2} apples.\n#### {i + 2}"} for i in range(n)])  # fmt: skip


def test_task_yamls_point_at_absolute_local_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mmlu(tmp_path / "mmlu.jsonl")
    gsm8k(tmp_path / "gsm8k.jsonl")
    gsm8k(tmp_path / "train.jsonl")
    files = write_task_dir("tasks", {
        "mmlu_local": "mmlu.jsonl",
        "math": LocalTask("gsm8k", "gsm8k.jsonl", fewshot="train.jsonl"),
    })  # fmt: skip
    assert [f.name for f in files] == ["mmlu_local.yaml", "math.yaml"]
    m = yaml.safe_load(files[0].read_text())
    assert m["dataset_path"] == "json" and m["output_type"] == "multiple_choice"
    assert m["dataset_kwargs"]["data_files"] == {"test": str(tmp_path / "mmlu.jsonl")}
    assert m["num_fewshot"] == 0 and m["doc_to_choice"] == ["A", "B", "C", "D"]
    g = yaml.safe_load(files[1].read_text())
    assert g["dataset_kwargs"]["data_files"]["fewshot"] == str(tmp_path / "train.jsonl")
    assert (g["fewshot_split"], g["num_fewshot"], g["output_type"]) == ("fewshot", 5, "generate_until")
    assert [f["name"] for f in g["filter_list"]] == ["strict-match", "flexible-extract"]


def test_bad_inputs_are_refused_before_anything_is_written(tmp_path):
    mmlu(tmp_path / "mmlu.jsonl")
    with pytest.raises(NotImplementedError, match="sandbox"):
        write_task_dir(tmp_path / "t", {"humaneval_local": tmp_path / "mmlu.jsonl"})
    with pytest.raises(ValueError, match="the first lacks"):
        write_task_dir(tmp_path / "t", {"gsm8k_local": gsm8k(tmp_path / "g.jsonl"), "mmlu_x": tmp_path / "g.jsonl"})
    with pytest.raises(ValueError, match="kind"):
        write_task_dir(tmp_path / "t", {"trivia": tmp_path / "mmlu.jsonl"})
    with pytest.raises(FileNotFoundError):
        write_task_dir(tmp_path / "t", {"mmlu_local": tmp_path / "missing.jsonl"})
    with pytest.raises(ValueError, match="fewshot file"):
        write_task_dir(tmp_path / "t", {"mmlu_local": LocalTask("mmlu", tmp_path / "mmlu.jsonl", num_fewshot=5)})
    assert not (tmp_path / "t").exists()


@pytest.mark.slow
def test_lm_eval_end_to_end_on_a_tiny_model(tmp_path):
    pytest.importorskip("lm_eval")
    from tests.tiny_models import tiny_mistral_llama

    model, tok = tiny_mistral_llama(max_pos=512)
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    write_task_dir(tmp_path / "tasks", {"mmlu_local": mmlu(tmp_path / "mmlu.jsonl", 4),
                                        "gsm8k_local": gsm8k(tmp_path / "gsm8k.jsonl", 3)})  # fmt: skip
    out = run_lm_eval(tmp_path / "model", tmp_path / "tasks", ["mmlu_local", "gsm8k_local"],
                      gen_kwargs={"max_gen_toks": 4}, dtype="float32")  # fmt: skip
    res = out["results"]
    assert 0.0 <= res["mmlu_local"]["acc,none"] <= 1.0 and "acc_stderr,none" in res["mmlu_local"]
    assert {"exact_match,strict-match", "exact_match,flexible-extract"} <= set(res["gsm8k_local"])
    assert out["n-samples"] == {"mmlu_local": {"original": 4, "effective": 4},
                                "gsm8k_local": {"original": 3, "effective": 3}}  # fmt: skip
    limited = run_lm_eval(tmp_path / "model", tmp_path / "tasks", ["mmlu_local"], limit=2, dtype="float32")
    assert limited["n-samples"]["mmlu_local"] == {"original": 4, "effective": 2}
    with pytest.raises(ValueError, match="no task named"):
        run_lm_eval(tmp_path / "model", tmp_path / "tasks", ["mmlu"])
