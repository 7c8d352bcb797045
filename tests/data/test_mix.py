"""Hybrid mixing: the agent share is eta, passes cover each source once, resuming reproduces the run."""

from __future__ import annotations

import pytest

from agenttuning.data.mix import BLOCK, MixSampler, epoch_length


@pytest.mark.parametrize("eta", [0.0, 0.2, 0.5, 1.0])
def test_agent_share_is_eta_over_100k_draws(eta):
    draws = MixSampler(n_agent=1866, n_general=5000, eta=eta, seed=3).take(100_000)
    share = sum(src == "agent" for src, _ in draws) / len(draws)
    assert abs(share - eta) < 0.005
    if eta in (0.0, 1.0):
        assert share == eta


def test_one_source_may_be_empty_when_eta_never_draws_it():
    assert {s for s, _ in MixSampler(0, 10, eta=0.0).take(50)} == {"general"}
    assert {s for s, _ in MixSampler(10, 0, eta=1.0).take(50)} == {"agent"}
    for args in [(0, 10, 0.2), (10, 0, 0.2), (10, 10, 1.5), (10, 10, -0.1)]:
        with pytest.raises(ValueError):
            MixSampler(*args)


def test_resuming_at_any_step_continues_the_uninterrupted_run():
    full = MixSampler(37, 101, eta=0.3, seed=11).take(3 * BLOCK)
    for k in (0, 1, 57, BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK + 333):
        s = MixSampler(37, 101, eta=0.3, seed=11).at(k)
        assert s.step == k and s.take(500) == full[k : k + 500]
    # through the checkpointable state
    s = MixSampler(37, 101, eta=0.3, seed=11)
    s.take(5000)
    resumed = MixSampler(37, 101, eta=0.3, **s.state())
    assert resumed.take(100) == s.take(100) == full[5000:5100]


def test_every_example_is_seen_once_per_pass_and_passes_reshuffle():
    n_agent, n_general = 50, 80
    draws = MixSampler(n_agent, n_general, eta=0.4, seed=5).take(5000)
    for source, n in (("agent", n_agent), ("general", n_general)):
        seq = [i for s, i in draws if s == source]
        passes = [seq[p : p + n] for p in range(0, len(seq) - n + 1, n)]
        assert len(passes) >= 10
        assert all(sorted(p) == list(range(n)) for p in passes)
        assert len({tuple(p) for p in passes}) == len(passes)  # a new order on every pass


def test_the_seed_decides_the_mixture():
    a = MixSampler(20, 20, 0.5, seed=1).take(200)
    assert a == MixSampler(20, 20, 0.5, seed=1).take(200)
    assert a != MixSampler(20, 20, 0.5, seed=2).take(200)


def test_epoch_length_sees_the_agent_data_once_in_expectation():
    assert epoch_length(1866, 10**6, 0.2) == 9330
    assert epoch_length(1866, 10**6, 1.0) == 1866
    assert epoch_length(0, 700, 0.0) == 700
    assert epoch_length(10, 3, 0.3) == 34
