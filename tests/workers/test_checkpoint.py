"""A committed round's network on disk (workers/checkpoint.py): only what the
masks cannot give, read back bit for bit for every architecture, the dense
fallback where a pruned position is not +0.0, rounds of the format before it
(weights.safetensors) still read, resumed and verified, and a real lineage in
the new format resumed bit for bit."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from orchestrator.verify import verify_sweep
from workers import checkpoint as C
from workers import data
from workers import pruning as P
from workers import train as TR
from workers.evaluations.base import model_at
from workers.group import run_group
from workers.lineage import run_lineage
from workers.methods import RoundStart
from workers.models import ARCHS, build_model, model_state
from workers.round import copy_round
from workers.spec import DataSpec, ModelSpec, PruneSpec, RunOptions, TrainSpec, TrialSpec
from workers.store import CorruptRound, SweepStore

CPU = RunOptions(device="cpu")
DROP = {"wall_s", "images_per_s", "started_at", "finished_at", "checkpoint_uri", "node"}


def exact(a: dict, b: dict) -> bool:
    """The same names, dtypes, shapes and bit patterns (-0.0 and NaN payloads count)."""
    return sorted(a) == sorted(b) and all(
        a[n].dtype == b[n].dtype and a[n].shape == b[n].shape and torch.equal(C.bits(a[n]), C.bits(b[n]))
        for n in a)


def layout(blob: bytes) -> dict:
    return {e[0]: dict(zip(("dtype", "shape", "kind", "codec", "count"), e[1:]))
            for e in C.metadata(blob)["layout"]}


def stable(metrics):
    return [{k: v for k, v in m.items() if k not in DROP} for m in metrics]


# --- the codec -------------------------------------------------------------------

@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_every_architecture_round_trips_bit_for_bit_at_every_density(arch):
    torch.manual_seed(0)
    model = build_model(arch, num_classes=10, in_channels=3, image_size=32, width=0.125)
    names = P.prunable_names(model)
    params = dict(model.named_parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    masks = P.full_masks(model, names)
    x, y = torch.randn(4, 3, 32, 32), torch.arange(4)
    for rate in (0.0, 0.2, 0.5, 0.9):
        if rate:
            masks = P.global_magnitude_prune(model, masks, rate)
        masker = P.MaskApplier(model, masks, opt)
        masker.apply()
        for _ in range(2):  # steps with momentum and weight decay, masked as the engine does
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            masker.apply()
        state = model_state(model)
        # The masking left the one bit pattern of +0.0 at every pruned weight and momentum entry.
        for n in names:
            gone = ~masks[n].reshape(-1)
            assert not C.bits(state[n])[gone].any(), n
            assert not C.bits(opt.state[params[n]]["momentum_buffer"])[gone].any(), n
        blob = C.encode(state, masks)
        assert C.metadata(blob)["format"] == C.FORMAT and C.metadata(blob)["version"] == C.VERSION
        lay = layout(blob)
        assert [n for n, e in lay.items() if e["kind"] == "sparse"] == names  # no fallback needed
        assert all(lay[n]["count"] == int(masks[n].sum()) for n in names)
        assert exact(C.decode(blob, masks), state) and list(C.decode(blob, masks)) == list(state)
        # Through the files a round commits: the packed masks decode it.
        files = C.round_files(state, masks)
        got, got_masks = C.decode_files(files)
        assert exact(got, state) and all(torch.equal(got_masks[n], masks[n]) for n in names)
        dense = sum(v.numel() * v.element_size() for v in state.values())
        if rate == 0.9:
            assert len(files[C.WEIGHTS]) < 0.5 * dense


def test_the_multiply_alone_leaves_negative_zeros():
    """The trap apply_masks closes: a negative weight times 0 is -0.0."""
    w, m = torch.tensor([-1.5, 2.0, -3.0]), torch.tensor([0.0, 1.0, 0.0])
    torch._foreach_mul_([w], [m])
    assert C.bits(w)[0] != 0  # -0.0
    P.apply_masks([w], [m])
    assert C.bits(w).tolist()[0::2] == [0, 0] and w[1] == 2.0


def test_a_pruned_position_that_is_not_plus_zero_stores_that_tensor_dense():
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(64, 64, generator=g) < 0.3
    clean = torch.randn(64, 64, generator=g) * mask + 0.0  # + 0.0: -0.0 becomes +0.0
    nan = torch.tensor([0x7FC00123], dtype=torch.int32).view(torch.float32)
    state = {"ok": clean.clone(), "neg_zero": clean.clone(), "nan": clean.clone(), "alive": clean.clone(),
             "ok64": clean.double() + 0.0, "okbf16": clean.bfloat16() + 0.0,
             "bias": torch.randn(64, generator=g), "steps": torch.tensor(7)}
    gone = (~mask).nonzero()[0].tolist()
    state["neg_zero"][tuple(gone)] = -0.0
    state["nan"][tuple(gone)] = nan
    state["alive"][tuple(gone)] = 1.0
    state["ok"][tuple(mask.nonzero()[0].tolist())] = nan  # a kept NaN is a value like any other
    masks = {n: mask for n in ("ok", "neg_zero", "nan", "alive", "ok64", "okbf16")}
    blob = C.encode(state, masks)
    lay = layout(blob)
    assert {n: e["kind"] for n, e in lay.items()} == {
        "ok": "sparse", "neg_zero": "dense", "nan": "dense", "alive": "dense", "ok64": "sparse",
        "okbf16": "sparse", "bias": "dense", "steps": "dense"}
    assert exact(C.decode(blob, masks), state)
    # A tensor the masks do not name, or of another shape, is stored whole.
    assert layout(C.encode({"w": clean}, {"w": mask[:, :8]}))["w"]["kind"] == "dense"
    # Decoding needs the masks the values were kept by.
    with pytest.raises(ValueError):
        C.decode(blob, {})
    with pytest.raises(ValueError):
        C.decode(blob, {**masks, "ok": ~mask})
    with pytest.raises(ValueError):
        C.decode(C.round_files({}, {})[C.MASK], masks)  # not this format


def test_compression_only_where_it_pays():
    g = torch.Generator().manual_seed(0)
    weights = (torch.rand(100_000, generator=g) - 0.5) * 0.1  # init-like: shared exponent bytes
    noise = torch.randint(-2**31, 2**31 - 1, (100_000,), generator=g, dtype=torch.int32).view(torch.float32)
    state = {"w": weights, "noise": noise, "small": weights[:100].clone()}
    blob = C.encode(state, {})
    lay = layout(blob)
    assert (lay["w"]["codec"], lay["noise"]["codec"], lay["small"]["codec"]) == ("zstd", "raw", "raw")
    assert len(blob) < 4 * (100_000 + 100) + 0.9 * 4 * 100_000
    assert exact(C.decode(blob, {}), state)


# --- rounds on disk ----------------------------------------------------------

def tiny(rounds=2, epochs=2, seed=0, method="imp"):
    return TrialSpec(DataSpec("digits", fraction=0.1), model=ModelSpec(width=0.125),
                     train=TrainSpec(epochs=epochs, batch_size=40, lr=0.05),
                     prune=PruneSpec(method=method, rounds=rounds, rewind_epoch=1), seed=seed)


class Boom(Exception):
    pass


def die_at_round(monkeypatch, r):
    orig = TR.Trainer.train_epoch

    def dying(self, round_k, epoch):
        if round_k == r:
            raise Boom()
        return orig(self, round_k, epoch)
    monkeypatch.setattr(TR.Trainer, "train_epoch", dying)


def old_round_files(state, masks):
    """What a round committed before workers/checkpoint.py (round.py's commit then)."""
    return {C.DENSE: TR.save_tensors(state), C.MASK: TR.save_tensors(P.pack_masks(masks))}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """One new-format lineage, run to its end."""
    spec = tiny()
    lin = SweepStore(str(tmp_path_factory.mktemp("ref")), "ref").lineage(spec.trial_id)
    return spec, lin, run_lineage(spec, lin, CPU)


def test_a_lineage_commits_the_sparse_format_and_resumes_bit_for_bit(tmp_path, monkeypatch, uninterrupted):
    spec, ref, ref_metrics = uninterrupted
    for k in range(spec.num_rounds):
        files = set(ref.read_manifest(k)["files"])
        assert {C.WEIGHTS, C.MASK} <= files and C.DENSE not in files
        assert (C.REWIND in files) == (k == 0)
        blob = ref.load_round(k, [C.WEIGHTS])[C.WEIGHTS]
        state, masks = C.read_weights(ref, k)
        # Trained by the real loop: every prunable tensor's zeros are +0.0, nothing fell back.
        assert all(layout(blob)[n]["kind"] == "sparse" for n in masks)
        dense = sum(v.numel() * v.element_size() for v in state.values())
        assert len(blob) < dense * (1.0 if k == 0 else 0.95)
    lin = SweepStore(str(tmp_path), "x").lineage(spec.trial_id)
    die_at_round(monkeypatch, 2)
    with pytest.raises(Boom):
        run_lineage(spec, lin, CPU)
    monkeypatch.undo()
    out = run_lineage(spec, lin, CPU)  # resumes from round 1's sparse file
    assert stable(out) == stable(ref_metrics)
    for k in range(spec.num_rounds):
        assert lin.load_round(k, [C.WEIGHTS]) == ref.load_round(k, [C.WEIGHTS])
        assert exact(C.read_weights(lin, k)[0], C.read_weights(ref, k)[0])


def test_an_old_format_sweep_reads_resumes_and_verifies(tmp_path, monkeypatch, uninterrupted):
    spec, ref, ref_metrics = uninterrupted
    sweep = SweepStore(str(tmp_path), "old")
    lin = sweep.lineage(spec.trial_id)
    monkeypatch.setattr(C, "round_files", old_round_files)
    die_at_round(monkeypatch, 2)
    with pytest.raises(Boom):
        run_lineage(spec, lin, CPU)
    monkeypatch.undo()
    assert {C.DENSE, C.MASK} <= set(lin.read_manifest(1)["files"]) and C.WEIGHTS not in lin.read_manifest(1)["files"]
    # Old rounds read through the one reader, equal to the new format's rounds.
    for k in (0, 1):
        state, masks = C.read_weights(lin, k)
        assert exact(state, C.read_weights(ref, k)[0])
        model = model_at(spec, lin, k, data.dataset_info("digits"), torch.device("cpu"))
        assert exact(model_state(model), state)
    # Resumed by today's code: round 2 from the old round 1, in the new format, the same bits.
    out = run_lineage(spec, lin, CPU)
    assert stable(out) == stable(ref_metrics)
    assert C.WEIGHTS in lin.read_manifest(2)["files"]
    assert lin.load_round(2, [C.WEIGHTS]) == ref.load_round(2, [C.WEIGHTS])
    v = verify_sweep(sweep)
    assert v["corrupt"] == [] and v.get("stale", []) == []
    # A lineage that takes an old round over copies the files it has.
    child = SweepStore(str(tmp_path), "child").lineage(spec.trial_id)
    ctx = SimpleNamespace(store=child, token=None, spec=spec)
    copy_round(ctx, 1, RoundStart(copy_from=lin))
    assert set(child.read_manifest(1)["files"]) == set(lin.read_manifest(1)["files"])
    assert exact(C.read_weights(child, 1)[0], C.read_weights(lin, 1)[0])
    # A damaged old weights file is caught by its manifest, as before.
    path = f"{lin.round_dir(1)}/{C.DENSE}"
    raw = bytearray(open(path, "rb").read())
    raw[-1] ^= 0xFF
    open(path, "wb").write(bytes(raw))
    with pytest.raises(CorruptRound):
        C.read_weights(lin, 1)


def test_a_fused_group_commits_canonical_zeros(tmp_path):
    """The fused path masks through the same apply_masks: no tensor falls back to dense."""
    specs = [tiny(rounds=1, seed=s) for s in (0, 1)]
    st = SweepStore(str(tmp_path), "g")
    run_group([(s, st.lineage(s.trial_id)) for s in specs], RunOptions(device="cpu", fuse_conv="loop"))
    for s in specs:
        lin = st.lineage(s.trial_id)
        blob = lin.load_round(1, [C.WEIGHTS])[C.WEIGHTS]
        _, masks = C.read_weights(lin, 1)
        assert P.density(masks) < 1 and all(layout(blob)[n]["kind"] == "sparse" for n in masks)
