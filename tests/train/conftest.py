"""Fixtures for the training tests: a tiny saved Llama (small vocabulary, float32) and prepared examples."""

from __future__ import annotations

import pytest

from tests.train.builders import save_tiny_model, write_data


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    """``(agent.parquet, general.jsonl)``: 24 agent and 48 general prepared examples."""
    return write_data(tmp_path_factory.mktemp("data"))


@pytest.fixture
def base_overrides(model_dir, data):
    """A tiny, fast, float32 configuration as key=value overrides (add output_dir and what the test varies)."""
    agent, general = data
    return [
        f"model={model_dir}", f"agent_data={agent}", f"general_data={general}", "eta=0.3", "batch_size=8",
        "max_len=64", "lr=3e-3", "precision=fp32", "seed=1", "warmup_ratio=0.1",
    ]  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run faster on one thread, and timing stays steady on a shared 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
