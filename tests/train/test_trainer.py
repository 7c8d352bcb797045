"""The trainer end to end on a tiny random-init Llama (float32, CPU): learning, curves, resume, saving, LoRA."""

from __future__ import annotations

import json
import math

import pytest
import torch

from agenttuning.train import load_config, train
from agenttuning.train.checkpoint import list_checkpoints


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_loss_falls_and_both_eval_curves_are_logged(tmp_path, base_overrides):
    run = tmp_path / "run"
    cfg = load_config(None, [*base_overrides, f"output_dir={run}", "max_steps=30", "lr=1e-2", "eval_fraction=0.15",
                             "eval_every=10", "log_every=1"])  # fmt: skip
    result = train(cfg)
    first, last = sum(result.losses[:3]) / 3, sum(result.losses[-3:]) / 3
    assert result.steps == 30 and len(result.losses) == 30 and last < first - 1.0, result.losses
    records = _records(run)
    steps = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval_agent_loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 31))
    assert [r["step"] for r in evals] == [0, 10, 20, 30]
    assert all(math.isfinite(r["eval_agent_loss"]) and math.isfinite(r["eval_general_loss"]) for r in evals)
    assert evals[-1]["eval_general_loss"] < evals[0]["eval_general_loss"]
    assert all(k in steps[0] for k in ("lr", "grad_norm", "tokens_per_s", "agent_loss", "general_loss", "epoch"))
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["steps"] == 30 and summary["eval_agent_loss"] == evals[-1]["eval_agent_loss"]
    assert summary["loss_impl"] == "fused" and summary["tokens_per_s"] > 0
    assert load_config(run / "config.yaml") == cfg


def test_full_model_is_saved_as_plain_hugging_face(tmp_path, base_overrides, model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = tmp_path / "run"
    result = train(load_config(None, [*base_overrides, f"output_dir={run}", "max_steps=3", "precision=fp32"]))
    assert result.model_dir == run / "model"
    model = AutoModelForCausalLM.from_pretrained(result.model_dir)
    tok = AutoTokenizer.from_pretrained(result.model_dir)
    before = AutoModelForCausalLM.from_pretrained(model_dir)
    assert tok.chat_template and "assistant" in tok.apply_chat_template(
        [{"role": "user", "content": "t5"}, {"role": "assistant", "content": "t6"}], tokenize=False)
    assert not torch.equal(model.model.layers[0].mlp.up_proj.weight, before.model.layers[0].mlp.up_proj.weight)
    assert (result.model_dir / "train_config.yaml").is_file()
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[1, 5, 6, 7]])).logits).all()


def test_bf16_training_saves_bf16_weights(tmp_path, base_overrides):
    from transformers import AutoModelForCausalLM

    run = tmp_path / "run"
    result = train(load_config(None, [*base_overrides, f"output_dir={run}", "max_steps=2", "precision=bf16",
                                      "gradient_checkpointing=true"]))  # fmt: skip
    assert json.loads((run / "model" / "config.json").read_text())["dtype"] == "bfloat16"
    assert AutoModelForCausalLM.from_pretrained(result.model_dir).dtype == torch.bfloat16
    assert all(math.isfinite(x) for x in result.losses)


@pytest.mark.parametrize("impl", ["checkpoint", "full"])
def test_every_loss_path_trains_alike(tmp_path, base_overrides, impl):
    fused = train(load_config(None, [*base_overrides, f"output_dir={tmp_path / 'a'}", "max_steps=3"]))
    other = train(load_config(None, [*base_overrides, f"output_dir={tmp_path / 'b'}", "max_steps=3",
                                     f"loss_impl={impl}"]))  # fmt: skip
    assert fused.loss_impl == "fused" and other.loss_impl == impl
    assert other.losses == pytest.approx(fused.losses, rel=1e-5)


def test_resume_reproduces_the_uninterrupted_run(tmp_path, base_overrides):
    """Interrupted after step 5 (checkpoint at 4), resumed: steps 5..8 give the same losses, bit for bit."""
    common = [*base_overrides, "max_steps=8", "save_every=2", "save_total_limit=2", "eval_fraction=0.1",
              "eval_every=4"]  # fmt: skip
    straight = train(load_config(None, [*common, f"output_dir={tmp_path / 'a'}"]))

    run = tmp_path / "b"

    def interrupt(event):
        if event.step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(load_config(None, [*common, f"output_dir={run}"]), callbacks=[interrupt])
    assert [s for s, _ in list_checkpoints(run)] == [2, 4]
    assert not (run / "metrics.json").exists()
    resumed = train(load_config(None, [*common, f"output_dir={run}"]))
    assert resumed.resumed_from is not None and resumed.resumed_from.name == "step-00000004"
    assert resumed.losses == straight.losses[4:]
    assert resumed.eval == straight.eval
    steps = [r["step"] for r in _records(run) if "loss" in r]
    assert steps == list(range(1, 9))  # the interrupted run's step 5 was cut from metrics.jsonl
    assert [s for s, _ in list_checkpoints(run)] == [6, 8]
    assert not list((run / "checkpoints").glob(".tmp-*"))


def test_a_finished_run_extends_like_a_longer_run(tmp_path, base_overrides):
    """Stopped by max_steps, then resumed with a larger max_steps: with a constant learning rate (the schedule does
    not depend on the run length) the extension gives the longer run's losses exactly."""
    constant = [*base_overrides, "warmup_ratio=0", "min_lr_ratio=1", "save_every=2"]
    long = train(load_config(None, [*constant, f"output_dir={tmp_path / 'long'}", "max_steps=6"]))
    run = tmp_path / "short"
    short = train(load_config(None, [*constant, f"output_dir={run}", "max_steps=3"]))
    assert [s for s, _ in list_checkpoints(run)] == [2, 3]
    extended = train(load_config(None, [*constant, f"output_dir={run}", "max_steps=6"]))
    assert extended.resumed_from.name == "step-00000003"
    assert short.losses + extended.losses == long.losses


def test_resume_refuses_a_different_data_stream(tmp_path, base_overrides):
    from agenttuning.train import ConfigError

    run = tmp_path / "run"
    train(load_config(None, [*base_overrides, f"output_dir={run}", "max_steps=2", "save_every=1"]))
    with pytest.raises(ConfigError, match="eta"):
        train(load_config(None, [*base_overrides, f"output_dir={run}", "max_steps=4", "eta=0.5"]))


def test_gradient_accumulation_matches_a_single_micro_batch(tmp_path, base_overrides):
    one = train(load_config(None, [*base_overrides, f"output_dir={tmp_path / 'a'}", "max_steps=4"]))
    two = train(load_config(None, [*base_overrides, f"output_dir={tmp_path / 'b'}", "max_steps=4", "grad_accum=3"]))
    assert one.losses == pytest.approx(two.losses, rel=1e-5)


def test_lora_saves_an_adapter_and_a_merged_model(tmp_path, base_overrides, model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run = tmp_path / "run"
    result = train(load_config(None, [*base_overrides, f"output_dir={run}", "max_steps=4", "method=lora",
                                      "lora_r=4", "merge=true", "save_every=2", "lr=1e-2"]))  # fmt: skip
    assert result.model_dir == run / "model" and (run / "adapter" / "adapter_config.json").is_file()
    ckpt = list_checkpoints(run)[-1][1]
    from safetensors.torch import load_file

    saved = load_file(ckpt / "model.safetensors")
    assert saved and all("lora_" in k for k in saved)  # checkpoints hold only the trainable weights
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), run / "adapter")
    merged = AutoModelForCausalLM.from_pretrained(run / "model")
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    with torch.no_grad():
        a, m = adapted(ids).logits, merged(ids).logits
        base = AutoModelForCausalLM.from_pretrained(model_dir)(ids).logits
    assert torch.allclose(a, m, atol=1e-5) and not torch.allclose(a, base, atol=1e-4)


def test_qlora_without_cuda_is_a_clear_error(tmp_path, base_overrides):
    from agenttuning.train import ConfigError

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="qlora needs a CUDA GPU"):
        train(load_config(None, [*base_overrides, f"output_dir={tmp_path}", "max_steps=1", "method=qlora"]))


def test_a_second_trainer_on_a_folder_in_use_is_refused_and_changes_nothing(tmp_path, base_overrides):
    """Two trainers on one output folder: the second fails at once with a clear error, before it deletes or
    rewrites anything of the first (here the first is stood in for by a process-held lock on the same file)."""
    from agenttuning.jsonl import LockedError, locked

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    (run / "metrics.json").write_text('{"steps": 1}')
    cfg = load_config(None, [*base_overrides, f"output_dir={run}", "max_steps=1"])
    with locked(run / ".lock", "a training run"), pytest.raises(LockedError, match="in use"):
        train(cfg)
    assert (run / "metrics.jsonl").read_text() == '{"step": 1, "loss": 2.0}\n'
    assert (run / "metrics.json").exists()
    result = train(cfg)  # once the first is gone, the folder is free again
    assert result.steps == 1
