"""workers/memory.py: the group-size plan counts the self-check's copies.

CPU has no memory cap of its own, so the cap here is workers/memory.py's
Meter: it counts the bytes of every tensor storage alive and raises torch's
own OutOfMemoryError past its cap, which workers/group.py handles as it does
a GPU's (a split in halves). On CUDA the allocator's counters stand in for
the meter (tests/workers/test_cuda.py)."""
from __future__ import annotations

import logging

import pytest
import torch

from workers import memory
from workers.fusecheck import LOGIC_IMAGES, probe, self_check, state_copy
from workers.fused import FusedTrainer
from workers.group import run_group
from workers.spec import DataSpec, ModelSpec, PruneSpec, RunOptions, TrainSpec, TrialSpec
from workers.store import SweepStore

from .test_fused import member
from .test_fusecheck import fresh_checks  # noqa: F401  (autouse: no check outcome leaks between tests)
from .test_group import one_thread  # noqa: F401  (autouse)


def test_the_meter_counts_what_is_alive_its_peak_and_stops_at_its_cap():
    with memory.Meter() as m:
        a = torch.zeros(1000, 1000)
        b = torch.zeros(1000, 1000)
        view = a[:10]  # a view: no new storage
        del a
        assert m.live == 8_000_000 and m.peak == 8_000_000  # `view` keeps a's storage alive
        del view
        assert m.live == 4_000_000
        b.add_(1)  # in place: nothing new
        assert m.live == 4_000_000 and m.peak == 8_000_000
    with memory.Meter(cap=6_000_000) as m:
        a = torch.zeros(1000, 1000)
        with pytest.raises(torch.OutOfMemoryError):
            torch.zeros(1000, 1000)
        assert m.live == 4_000_000


def _members(arch):
    ts = [member(seed=s, arch=arch, density=None if s == 0 else 0.6) for s in range(3)]
    for t in ts:
        t.train_epoch(0, 0)  # momentum buffers of their own, as a round after the first starts
    return ts


@pytest.mark.parametrize("arch", ["resnet18", "mobilenetv2"])
def test_the_plan_is_above_what_the_check_and_a_fused_epoch_use_and_not_far_above(arch):
    ts = _members(arch)
    step, step64, state64 = memory.steps(ts[0], probe, LOGIC_IMAGES, state_copy)
    with memory.Meter() as m:
        assert self_check(ts, "loop")["passed"]
    check_peak = m.peak
    with memory.Meter() as m:
        FusedTrainer(ts, conv="loop").train_epoch(1, 1)
    train_peak = m.peak
    planned = memory.need(3, 3, step, step64, state64, check=True)
    assert check_peak <= planned <= 4 * check_peak, (check_peak, planned)
    assert train_peak <= memory.need(3, 3, step, step64, state64, check=False) <= 4 * train_peak
    assert check_peak > train_peak  # the check's copies are what a plan without them misses


def spec(seed):
    return TrialSpec(DataSpec("digits", fraction=0.1), model=ModelSpec(arch="resnet18", width=0.125),
                     train=TrainSpec(epochs=2, batch_size=40, lr=0.05), prune=PruneSpec(rounds=1, rewind_epoch=1),
                     seed=seed)


def _capped_run(tmp_path, monkeypatch, count_check: bool):
    """Four lineages as one group under a cap that fits the check of two fused
    slots (with their pads' room to spare) but not of three."""
    probe_member = member(seed=0, batch=40, epochs=2)
    step, step64, state64 = memory.steps(probe_member, probe, LOGIC_IMAGES, state_copy)
    budget = memory.need(2, 2, step, step64, state64, check=True) + step // 2
    assert memory.need(3, 3, step, step64, state64, check=True) > budget
    meter = memory.Meter()

    def available(device):  # the cap starts at the first plan, above what the members hold then
        if meter.cap is None:
            meter.cap = meter.live + budget
        return meter.cap - meter.live

    monkeypatch.setattr(memory, "available", available)
    if not count_check:
        from workers.fusecheck import Fusion
        monkeypatch.setattr(Fusion, "unchecked", lambda self, trainers, width: False)
    specs = [spec(s) for s in range(4)]
    st = SweepStore(str(tmp_path), "s")
    with meter:
        got = run_group([(s, st.lineage(s.trial_id)) for s in specs], RunOptions(device="cpu", fuse_conv="loop"))
    return [m for rows in got.values() for m in rows], meter


def test_a_group_sized_to_a_memory_cap_passes_its_check_and_trains_fused_without_running_out(
        tmp_path, monkeypatch, caplog):
    with caplog.at_level(logging.WARNING, "lth_sweep.group"):
        rounds, meter = _capped_run(tmp_path, monkeypatch, count_check=True)
    assert len(rounds) == 8 and meter.peak <= meter.cap
    for r in rounds:
        assert r["numerics"]["fused"] == 2, r["numerics"]
        assert r["numerics"]["narrowed"] == {"from": 4, "why": "memory plan"}
        assert "fallback" not in r["numerics"] and r["fuse_check"]["passed"]
    said = [rec.getMessage() for rec in caplog.records]
    assert not [s for s in said if "out of memory" in s]
    assert any("4 slots fused need" in s and "fusing 2 at a time" in s for s in said)


def test_a_plan_that_leaves_out_the_checks_copies_runs_out_under_the_same_cap(tmp_path, monkeypatch, caplog):
    """...and the split that follows recovers: the failed attempt's tensors are
    gone before the halves start (its exception's traceback held them)."""
    with caplog.at_level(logging.WARNING, "lth_sweep.group"):
        rounds, meter = _capped_run(tmp_path, monkeypatch, count_check=False)
    assert any("out of memory with 4 lineages" in rec.getMessage() for rec in caplog.records)
    assert len(rounds) == 8 and all(r["numerics"]["narrowed"] == {"from": 4, "why": "out of memory"}
                                    for r in rounds)
