"""The IMP lineage engine: faithfulness, determinism, resume, corruption, legacy lineages."""

import json
import math

import pytest
import torch
from safetensors.torch import load as st_load

from workers import checkpoint as C
from workers import lineage as L
from workers import train as TR
from workers.spec import DataSpec, ModelSpec, PruneSpec, RunOptions, TrainSpec, TrialSpec
from workers.store import SweepStore


def tiny(epochs=3, rounds=2, rewind=1, aug="basic", method="imp", seed=0, **kw):
    return TrialSpec(DataSpec("digits", fraction=0.1, augmentation=aug), model=ModelSpec(width=0.125),
                     train=TrainSpec(epochs=epochs, batch_size=40, lr=0.05, **kw),
                     prune=PruneSpec(method=method, rounds=rounds, rewind_epoch=rewind), seed=seed)


def lineage(tmp_path, spec, name="s"):
    return SweepStore(str(tmp_path), name).lineage(spec.trial_id)


def stable(metrics):
    """Metrics that must be bit-identical between runs (no timings/places)."""
    drop = {"wall_s", "images_per_s", "started_at", "finished_at", "checkpoint_uri", "node"}
    return [{k: v for k, v in m.items() if k not in drop} for m in metrics]


def round_tensors(lin, k):
    return C.read_weights(lin, k)


ORIGINAL_TRAIN_EPOCH = TR.Trainer.train_epoch


def die_at(monkeypatch, when) -> None:
    """Kill the lineage (raise Boom) when the Trainer is about to train an epoch
    for which when(round, epoch) holds; other epochs train as usual."""
    orig = TR.Trainer.train_epoch

    def dying(self, round_k, epoch):
        if when(round_k, epoch):
            raise Boom()
        return orig(self, round_k, epoch)
    monkeypatch.setattr(TR.Trainer, "train_epoch", dying)


def test_density_schedule_and_prunable_set(tmp_path):
    spec = tiny(rounds=3)
    lin = lineage(tmp_path, spec)
    ms = L.run_lineage(spec, lin)
    assert [m["round"] for m in ms] == [0, 1, 2, 3]
    w, masks = round_tensors(lin, 3)
    total = sum(m.numel() for m in masks.values())
    remaining = total
    for k, m in enumerate(ms):
        assert m["density"] == pytest.approx(remaining / total, abs=1e-12)
        remaining -= round(0.2 * remaining)
        assert 0 <= m["val_acc"] <= 1 and 0 <= m["test_acc"] <= 1 and 0 <= m["train_acc"] <= 1
    assert ms[3]["density"] == pytest.approx(0.8 ** 3, abs=1e-4)
    # only conv weights are in the prunable set: never fc, BN or biases
    assert masks and all(n.endswith("weight") and w[n].dim() == 4 for n in masks)
    assert not any(n.startswith("fc") or "bn" in n for n in masks)
    assert (w["fc.weight"] != 0).all()
    # per-layer densities recorded, summing back to the global density
    layers = ms[3]["layers"]
    kept = sum(l["density"] * l["numel"] for l in layers)
    assert kept / sum(l["numel"] for l in layers) == pytest.approx(ms[3]["density"])


def test_pruned_weights_exactly_zero_after_training(tmp_path):
    spec = tiny(rounds=2, weight_decay=0.01)
    lin = lineage(tmp_path, spec)
    L.run_lineage(spec, lin)
    for k in (1, 2):
        w, masks = round_tensors(lin, k)
        for n, m in masks.items():
            assert (w[n][~m] == 0.0).all()  # exactly zero, not small
            assert (w[n][m] != 0.0).float().mean() > 0.99


def test_rewind_restores_saved_state(tmp_path, monkeypatch):
    """Every round k >= 1 starts from the epoch-r state of round 0 under the new mask."""
    spec = tiny(epochs=3, rewind=1, rounds=2)
    starts = {}
    orig = TR.Trainer.train_epoch

    def spy(self, round_k, epoch):
        if round_k not in starts:
            starts[round_k] = (epoch, {k: v.detach().clone() for k, v in self.model.state_dict().items()})
        return orig(self, round_k, epoch)

    monkeypatch.setattr(TR.Trainer, "train_epoch", spy)
    lin = lineage(tmp_path, spec)
    L.run_lineage(spec, lin)
    rewind = st_load(lin.load_round(0, ["rewind.safetensors"])["rewind.safetensors"])
    w0, _ = round_tensors(lin, 0)
    assert any(not torch.equal(rewind[n], w0[n]) for n in rewind)  # epoch 1 != end of round 0
    for k in (1, 2):
        epoch, state = starts[k]
        assert epoch == 1  # the LR schedule resumes at the rewind epoch
        _, masks = round_tensors(lin, k)
        for n, v in rewind.items():
            expect = v * masks[n] if n in masks else v
            assert torch.equal(state[n], expect), n  # weights, BN statistics and head


def test_mask_is_global_magnitude_of_previous_round(tmp_path):
    spec = tiny(rounds=1)
    lin = lineage(tmp_path, spec)
    L.run_lineage(spec, lin)
    w0, m0 = round_tensors(lin, 0)
    _, m1 = round_tensors(lin, 1)
    kept = torch.cat([w0[n][m1[n]].abs() for n in m1])
    cut = torch.cat([w0[n][m0[n] & ~m1[n]].abs() for n in m1])
    assert kept.min() >= cut.max()


def test_random_prune_method(tmp_path):
    spec = tiny(rounds=1, method="random_prune")
    lin = lineage(tmp_path, spec)
    ms = L.run_lineage(spec, lin)
    assert ms[1]["density"] == pytest.approx(0.8, abs=1e-4)


def test_same_seed_same_result_other_seed_differs(tmp_path):
    a = L.run_lineage(tiny(), lineage(tmp_path, tiny(), "a"))
    b = L.run_lineage(tiny(), lineage(tmp_path, tiny(), "b"))
    assert stable(a) == stable(b)
    wa, _ = round_tensors(lineage(tmp_path, tiny(), "a"), 2)
    wb, _ = round_tensors(lineage(tmp_path, tiny(), "b"), 2)
    assert all(torch.equal(wa[n], wb[n]) for n in wa)
    c = L.run_lineage(tiny(seed=1), lineage(tmp_path, tiny(seed=1), "c"))
    assert stable(c) != stable(a)


class Boom(Exception):
    pass


@pytest.mark.parametrize("kill_round,kill_epoch", [(0, 2), (1, 2), (2, 1), (2, 3)])
def test_kill_and_resume_equals_uninterrupted(tmp_path, monkeypatch, kill_round, kill_epoch):
    spec = tiny(epochs=4, rounds=2, rewind=1)
    opts = RunOptions(checkpoint_every=1)
    ref_lin = lineage(tmp_path, spec, "ref")
    ref = L.run_lineage(spec, ref_lin, opts)

    orig = TR.Trainer.train_epoch
    trained = []

    def dying(self, round_k, epoch):
        if (round_k, epoch) == (kill_round, kill_epoch):
            raise Boom()
        trained.append((round_k, epoch))
        return orig(self, round_k, epoch)

    lin = lineage(tmp_path, spec, "killed")
    monkeypatch.setattr(TR.Trainer, "train_epoch", dying)
    with pytest.raises(Boom):
        L.run_lineage(spec, lin, opts)
    monkeypatch.setattr(TR.Trainer, "train_epoch", lambda self, r, e: (trained.append((r, e)), orig(self, r, e))[1])
    out = L.run_lineage(spec, lin, opts)
    assert stable(out) == stable(ref)
    assert len(trained) == len(set(trained)), "an epoch was trained twice"
    for k in range(3):
        w, m = round_tensors(lin, k)
        rw, rm = round_tensors(ref_lin, k)
        assert all(torch.equal(m[n], rm[n]) for n in m)
        assert all(torch.equal(w[n], rw[n]) for n in w)
        assert lin.load_round(k, ["predictions.safetensors"]) == ref_lin.load_round(k, ["predictions.safetensors"])


def test_resume_after_committed_rounds_skips_them(tmp_path, monkeypatch):
    spec = tiny(rounds=2)
    lin = lineage(tmp_path, spec)
    calls = []
    L.run_lineage(spec, lin)
    monkeypatch.setattr(TR.Trainer, "train_epoch", lambda *a: calls.append(a))
    again = L.run_lineage(spec, lin)
    assert calls == [] and len(again) == 3


@pytest.mark.parametrize("target", [C.WEIGHTS, C.MASK, "MANIFEST.json"])
def test_corrupt_round_is_redone_from_previous(tmp_path, monkeypatch, caplog, target):
    spec = tiny(epochs=2, rounds=2, rewind=1)
    ref = L.run_lineage(spec, lineage(tmp_path, spec, "ref"))
    lin = lineage(tmp_path, spec, "x")
    die_at(monkeypatch, lambda r, e: r == 2)
    with pytest.raises(Boom):
        L.run_lineage(spec, lin)
    path = f"{lin.round_dir(1)}/{target}"
    raw = open(path, "rb").read()
    open(path, "wb").write(raw[: len(raw) - 7])  # truncated
    monkeypatch.setattr(TR.Trainer, "train_epoch", ORIGINAL_TRAIN_EPOCH)
    rounds_trained = []
    from workers.round import RoundRun
    real_start = RoundRun.__init__
    monkeypatch.setattr(RoundRun, "__init__", lambda self, ctx, k, start: (rounds_trained.append(k),
                                                                           real_start(self, ctx, k, start))[1])
    with caplog.at_level("WARNING"):
        out = L.run_lineage(spec, lin)
    assert rounds_trained == [1, 2]  # round 1 redone from round 0, not the lineage from scratch
    if target != "MANIFEST.json":
        assert "sha256" in caplog.text or "missing" in caplog.text
    assert stable(out) == stable(ref)


def test_corrupt_rewind_state_redoes_round0(tmp_path, monkeypatch):
    spec = tiny(epochs=2, rounds=1, rewind=1)
    lin = lineage(tmp_path, spec)
    die_at(monkeypatch, lambda r, e: r == 1)
    with pytest.raises(Boom):
        L.run_lineage(spec, lin)
    p = f"{lin.round_dir(0)}/rewind.safetensors"
    raw = bytearray(open(p, "rb").read())
    raw[-1] ^= 0xFF
    open(p, "wb").write(bytes(raw))
    monkeypatch.setattr(TR.Trainer, "train_epoch", ORIGINAL_TRAIN_EPOCH)
    out = L.run_lineage(spec, lin)
    assert [m["round"] for m in out] == [0, 1]


def test_fake_gpu_falls_back_to_cpu(tmp_path, caplog, monkeypatch):
    monkeypatch.delenv("LTH_DEVICE")  # the device choice itself is under test
    spec = tiny(rounds=0, epochs=1, rewind=0)
    with caplog.at_level("WARNING"):
        ms = L.run_lineage(spec, lineage(tmp_path, spec), where={"gpu_ids": ["1"], "node": "n"})
    if not torch.cuda.is_available():
        assert "CUDA is not available" in caplog.text
        assert ms[0]["device"] == "cpu" and ms[0]["gpu_ids"] == "1"


def test_eval_cadence_records_history(tmp_path):
    spec = tiny(rounds=0, epochs=4)
    ms = L.run_lineage(spec, lineage(tmp_path, spec), RunOptions(eval_every=2))
    h = ms[0]["history"]
    assert [r["epoch"] for r in h] == [1, 2, 3, 4]
    assert "val_acc" in h[1] and "val_acc" not in h[0] and "val_acc" not in h[3]


def test_stale_attempt_stops_instead_of_committing(tmp_path, monkeypatch):
    """Tune restarted the trial elsewhere while the old attempt still runs:
    the old one must not commit the round again."""
    from workers.store import TakenOver
    spec = tiny(rounds=1, epochs=2)
    lin = lineage(tmp_path, spec)
    orig = TR.Trainer.train_epoch

    def newer_attempt_claims(self, r, e):
        if r == 1:
            lin.claim({"node": "elsewhere"})
        return orig(self, r, e)

    monkeypatch.setattr(TR.Trainer, "train_epoch", newer_attempt_claims)
    with pytest.raises(TakenOver, match="elsewhere"):
        L.run_lineage(spec, lin)
    assert lin.committed_prefix() == 1  # round 1 was left to the owner
    monkeypatch.setattr(TR.Trainer, "train_epoch", orig)
    assert len(L.run_lineage(spec, lin)) == 2  # a new attempt claims it and finishes


def _as_legacy(lin, spec):
    """spec.json as written before selection moved to query time."""
    legacy = {**spec.to_dict(), "selection": {"selection": "val", "val_fraction": 0.1}}
    legacy.pop("eval")
    lin.write_spec(legacy, replace=True)


def test_a_lineage_begun_before_the_per_class_budget_keeps_its_validation_images(tmp_path):
    spec = tiny(aug="none", rounds=2)
    lin = lineage(tmp_path, spec)
    L.run_lineage(spec, lin)
    _as_legacy(lin, spec)
    lin.invalidate_from(2)
    ms = L.run_lineage(spec, lin)
    assert ms[1]["val_per_class"] == 50  # measured by this version
    # round 2, resumed: 10% of each digits class (about 120 training images each), as its first rounds were
    assert ms[2]["val_per_class"] == 12


def test_a_mirrored_digits_lineage_of_an_older_version_is_redone(tmp_path):
    spec = tiny(aug="basic", rounds=1)
    lin = lineage(tmp_path, spec)
    first = L.run_lineage(spec, lin)
    _as_legacy(lin, spec)
    again = L.run_lineage(spec, lin)
    assert [m["finished_at"] for m in again] != [m["finished_at"] for m in first]  # trained again
    assert stable(again) == stable(first)  # ... the way this version trains it
    assert "selection" not in lin.read_spec()


def test_compiled_lineage_matches_eager(tmp_path):
    """runtime.compile: the forward goes through torch.compile (here with the
    aot_eager backend, which needs no C++ toolchain: dynamo capture and AOT
    autograd are the same as inductor's front end); checkpoints keep plain keys."""
    spec = TrialSpec(DataSpec("digits", fraction=0.1), model=ModelSpec(width=0.125),
                     train=TrainSpec(epochs=2, batch_size=40, lr=0.05), prune=PruneSpec(rounds=1, rewind_epoch=1))
    eager = SweepStore(str(tmp_path), "eager").lineage(spec.trial_id)
    comp = SweepStore(str(tmp_path), "comp").lineage(spec.trial_id)
    m_e = L.run_lineage(spec, eager)
    m_c = L.run_lineage(spec, comp, RunOptions(compile=True, compile_backend="aot_eager"))
    assert [m["density"] for m in m_e] == [m["density"] for m in m_c]
    we, wc = C.read_weights(eager, 1)[0], C.read_weights(comp, 1)[0]
    assert set(we) == set(wc) and not any(k.startswith("_orig_mod") for k in wc)
    for k in we:
        torch.testing.assert_close(wc[k], we[k], rtol=1e-3, atol=1e-4)


def test_the_released_codes_retraining_is_there_labelled(tmp_path, monkeypatch):
    """imp.retrain: paper_code trains every round after the rewind for all
    `epochs` again, its cosine run on past its period (as the paper's released
    code does); the default trains from the rewind epoch to the final one.
    A kill in an epoch past `epochs` resumes to the uninterrupted bits."""
    import dataclasses
    base = tiny(epochs=3, rounds=1, rewind=1)
    spec = dataclasses.replace(base, prune=dataclasses.replace(base.prune, retrain="paper_code"))
    assert spec.trial_id != base.trial_id and "retrain" not in base.canonical().get("prune", {})
    ms = L.run_lineage(base, lineage(tmp_path, base, "rest"))
    assert [m["epochs"] for m in ms] == [3, 2] and [h["epoch"] for h in ms[1]["history"]] == [2, 3]
    opts = RunOptions(checkpoint_every=1)
    ref = L.run_lineage(spec, lineage(tmp_path, spec, "ref"), opts)
    assert [m["epochs"] for m in ref] == [3, 3]
    lrs = [h["lr"] for h in ref[1]["history"]]
    assert [h["epoch"] for h in ref[1]["history"]] == [2, 3, 4]
    assert lrs == pytest.approx([0.5 * 0.05 * (1 + math.cos(math.pi * e / 3)) for e in (1, 2, 3)]) and lrs[-1] == 0
    lin = lineage(tmp_path, spec, "killed")
    die_at(monkeypatch, lambda r, e: (r, e) == (1, 3))  # the epoch past the schedule's period
    with pytest.raises(Boom):
        L.run_lineage(spec, lin, opts)
    assert lin.load_partial(1)[0] == 3
    monkeypatch.setattr(TR.Trainer, "train_epoch", ORIGINAL_TRAIN_EPOCH)
    assert stable(L.run_lineage(spec, lin, opts)) == stable(ref)


def test_a_lineage_never_silently_changes_precision(tmp_path, monkeypatch):
    """Round 0 committed in float64 (a real fp64 round: RunOptions.float64), the
    next attempt in float32: it stops before training with one line naming
    both; --allow-precision-change (RunOptions) continues it, and the results
    cell names both precisions."""
    from orchestrator.results import rows_for_trial
    from workers.context import PrecisionChange
    spec = tiny(epochs=2, rounds=1, aug="none")
    lin = lineage(tmp_path, spec)

    def stop_after_round0(m):
        raise Boom()
    with pytest.raises(Boom):
        L.run_lineage(spec, lin, RunOptions(float64=True), on_round=stop_after_round0)
    assert lin.committed_prefix() == 1
    trained = []
    orig = TR.Trainer.train_epoch
    monkeypatch.setattr(TR.Trainer, "train_epoch", lambda self, r, e: (trained.append((r, e)), orig(self, r, e))[1])
    with pytest.raises(PrecisionChange) as e:
        L.run_lineage(spec, lin, RunOptions())
    assert str(e.value) == (f"trial {spec.trial_id}: round 0 ran in fp64 on cpu, this attempt in fp32 on cpu; "
                            "--allow-precision-change continues it (its cell becomes fp32+fp64)")
    assert trained == [] and lin.committed_prefix() == 1
    out = L.run_lineage(spec, lin, RunOptions(allow_precision_change=True))
    assert trained == [(1, 1)]
    assert [m["numerics"]["dtype"] for m in out] == ["float64", "float32"]
    rows = rows_for_trial(lin.sweep, spec.trial_id)["results"]
    assert [r["precision"] for r in rows] == ["fp64", "fp32"]
    assert {json.loads(r["cell"])["precision"] for r in rows} == {"fp32+fp64"}
    assert json.loads(rows[0]["cell"]) == {**spec.cell(), "precision": "fp32+fp64"}


def test_a_mid_round_checkpoint_in_another_precision_stops_the_round(tmp_path, monkeypatch):
    from workers.context import PrecisionChange
    spec = tiny(epochs=2, rounds=0, aug="none")
    lin = lineage(tmp_path, spec)
    die_at(monkeypatch, lambda r, e: e == 1)
    with pytest.raises(Boom):
        L.run_lineage(spec, lin, RunOptions(float64=True, checkpoint_every=1))
    monkeypatch.undo()
    assert lin.load_partial(0)[0] == 1
    with pytest.raises(PrecisionChange, match=r"round 0 \(1 epoch in, a mid-round checkpoint\) ran in fp64 "
                                              r"on cpu, this attempt in fp32 on cpu"):
        L.run_lineage(spec, lin, RunOptions(checkpoint_every=1))
    assert lin.committed_prefix() == 0 and lin.load_partial(0)[0] == 1
