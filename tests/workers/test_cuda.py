"""The CUDA paths: bf16 autocast and channels_last, images kept on the host, the
t-vMF head's precision, fused training, packed processes. Marked `cuda`: they
run wherever a GPU is (`pytest -m cuda`, bench/gpu_check.sh) and are listed as
skipped elsewhere. The precision check of the t-vMF head also runs on the CPU's
own bf16 autocast."""
from __future__ import annotations

import pytest
import torch

from workers import data as D
from workers.data.cifar import write_folder
from workers.losses import TvMFHead
from workers.lineage import run_lineage
from workers.spec import DataSpec, ModelSpec, PruneSpec, RunOptions, TrainSpec, TrialSpec
from workers.store import SweepStore

cuda = pytest.mark.cuda


def _cifar_like(root, per_class=120, test_per_class=40):
    g = torch.Generator().manual_seed(0)
    train = D.Split(torch.randint(0, 256, (10 * per_class, 3, 32, 32), generator=g, dtype=torch.uint8),
                    torch.arange(10 * per_class) % 10)
    test = D.Split(torch.randint(0, 256, (10 * test_per_class, 3, 32, 32), generator=g, dtype=torch.uint8),
                   torch.arange(10 * test_per_class) % 10)
    write_folder("cifar10", str(root), train, test)
    return str(root)


def _spec(method="imp", aug="basic", seed=0):
    return TrialSpec(DataSpec("cifar10", images_per_class=50, augmentation=aug), model=ModelSpec(width=0.25),
                     train=TrainSpec(epochs=3, batch_size=100, lr=0.05),
                     prune=PruneSpec(method=method, rounds=2, rewind_epoch=1), seed=seed)


@pytest.mark.parametrize("device_images", [2_000_000, 0], ids=["images on the GPU", "images on the host"])
@cuda
def test_a_bf16_lineage_runs_on_cuda(tmp_path, device_images):
    root = _cifar_like(tmp_path / "data")
    spec = _spec()
    opts = RunOptions(data_root=root, device="cuda", max_device_images=device_images)
    rows = run_lineage(spec, SweepStore(str(tmp_path), "s").lineage(spec.trial_id), opts)
    assert [round(r["density"], 4) for r in rows] == [1.0, 0.8, 0.64]
    assert all(r["device"].startswith("cuda") and 0 <= r["test_acc"] <= 1 for r in rows)


@cuda
def test_a_fused_group_on_cuda(tmp_path):
    """A bf16 group on the GPU fuses every round after its self-check passed:
    both parts, the numerics and the float64 logic, on the device."""
    from workers.group import run_group
    root = _cifar_like(tmp_path / "data")
    specs = [_spec(aug=a, seed=i) for i, a in enumerate(["none", "basic", "contrast", "rand"])]
    st = SweepStore(str(tmp_path), "g")
    out = run_group([(s, st.lineage(s.trial_id)) for s in specs], RunOptions(data_root=root, device="cuda"))
    assert all(len(v) == 3 and v[1]["fused_with"] for v in out.values())
    for r in (r for rows in out.values() for r in rows if r.get("fused_with")):
        assert r["fuse_check"]["passed"] and "fallback" not in r["numerics"], r["fuse_check"]
        assert r["fuse_check"]["logic"]["worst"]["margin"] < 1e-2


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16 autocast"])
@cuda
def test_fused_members_equal_their_solo_steps_on_cuda_and_every_fusion_bug_shows(bf16):
    """Four cifar-shaped members after an epoch of training (momentum of their
    own, masks at density 0.8): one fused step on the GPU equals each member's
    solo step within the self-check's rule (updates, momentum, BatchNorm
    statistics, loss; in the numerics and in float64) on both kernels, and
    every bug of bench/fuse_mutations.py fails it. Nothing about speed."""
    from bench.fuse_mutations import MUTATIONS, mutated
    from bench.members import make_members
    from workers.fusecheck import self_check
    members = make_members("cifar", 4, 0.25, torch.device("cuda"), 3, bf16=bf16)
    for t in members:
        t.train_epoch(0, 0)
    assert all(t.autocast == bf16 for t in members)
    for strategy in ("grouped", "loop"):
        o = self_check(members, strategy)
        assert o["passed"], (strategy, o["worst"], o["logic"]["worst"])
    for name in MUTATIONS:
        with mutated(name):
            o = self_check(members, "grouped")
        assert not o["passed"] and o["logic"]["worst"]["margin"] > 1e6, name


def _tvmf_under_autocast(device: str):
    """(fp32 head on the bf16-rounded input, the head under bf16 autocast, the head run in bf16)."""
    torch.manual_seed(0)
    head = TvMFHead(64, 10).to(device)
    x = torch.randn(32, 64, device=device).to(torch.bfloat16)
    ref = head(x.float())
    with torch.autocast(device, dtype=torch.bfloat16):
        got = head(x)
    low = head.to(torch.bfloat16)(x).float()
    return ref, got, low


def test_tvmf_cosine_stays_fp32_under_cpu_autocast():
    ref, got, low = _tvmf_under_autocast("cpu")
    assert got.dtype == torch.float32 and torch.equal(got, ref)  # fp32 arithmetic on the given input
    assert (low - ref).abs().max() > 1e-3  # what bf16 arithmetic would have cost


@cuda
def test_tvmf_cosine_stays_fp32_under_cuda_autocast():
    ref, got, _ = _tvmf_under_autocast("cuda")
    assert got.dtype == torch.float32 and torch.allclose(got, ref, rtol=1e-5, atol=1e-6)


@cuda
def test_packed_processes_share_the_gpu():
    """Two trials, each in its own process with half the GPU's memory, both
    train to the end (their speed is bench's `packed_gpu_speedup`, not a test's)."""
    from bench.packed import bench_packed
    out = bench_packed("cuda", trials=2, width=0.25, epochs=2)
    assert out["_packed"]["trials"] == 2 and out["_packed"]["packed_images_per_s"] is not None



@cuda
def test_a_group_sized_to_a_cuda_memory_cap_fuses_under_it_without_running_out(tmp_path, monkeypatch):
    """The plan of workers/memory.py on the device itself: a per-process cap
    (as Ray's trainable sets one) that fits the check of two slots but not of
    three; a group of four fuses two at a time, checked, and nothing runs out
    (tests/workers/test_memory.py is the same on the CPU's meter)."""
    from workers import memory
    from workers.group import run_group
    dev = torch.device("cuda")
    total = torch.cuda.mem_get_info(dev)[1]
    real_steps = memory.steps

    def steps(t, probe, images, state_copy):  # the cap: what the members hold now, plus two slots' check
        step, step64, state64 = out = real_steps(t, probe, images, state_copy)
        cap = torch.cuda.memory_allocated(dev) + memory.need(2, 2, step, step64, state64) + step // 2
        assert memory.need(3, 3, step, step64, state64) > cap - torch.cuda.memory_allocated(dev)
        torch.cuda.set_per_process_memory_fraction(cap / total, dev)
        return out

    monkeypatch.setattr(memory, "steps", steps)
    root = _cifar_like(tmp_path / "data")
    specs = [_spec(seed=s) for s in range(4)]
    st = SweepStore(str(tmp_path / "runs"), "s")
    try:
        got = run_group([(s, st.lineage(s.trial_id)) for s in specs],
                        RunOptions(data_root=root, device="cuda", fuse_conv="grouped"))
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, dev)
    rounds = [m for rows in got.values() for m in rows]
    assert len(rounds) == 12
    for r in rounds:
        assert r["numerics"]["fused"] == 2 and r["numerics"]["narrowed"] == {"from": 4, "why": "memory plan"}
        assert r["fuse_check"]["passed"], r["fuse_check"]
