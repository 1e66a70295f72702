"""The engine against the recipe of the paper's released code (bench/recipe.py), two ways.

    recipe_speedup             the recipe as released (PIL DataLoader, a test-set
                               evaluation and a checkpoint every epoch,
                               `torch.nn.utils.prune` hook masks) / the engine as
                               users run it (run_lineage, default options): what a
                               user of the released code pays, end to end
    engine_speedup_equal_work  the same recipe made to evaluate and checkpoint
                               exactly when the engine does (once per round, at
                               its end, on the engine's splits: training subset,
                               validation, test) / the same engine run: what the
                               engine itself gains (data pipeline, masks, training
                               loop), evaluation cadence left out

All three runs train the same lineage in the same bench run; `_recipe` has
each side's wall and what it did (evaluations, images per evaluation,
checkpoints) and the densities each reached (they must agree).
"""
from __future__ import annotations

import os
import tempfile
import time

import torch

from workers import data
from workers.data.cifar import write_folder
from workers.lineage import run_lineage
from .recipe import Cadence, run_reference
from workers.spec import DataSpec, ModelSpec, PruneSpec, RunOptions, TrainSpec, TrialSpec
from workers.store import SweepStore


def _counting_partials(store):
    """Count the engine's mid-round checkpoints (RoundRun.checkpoint -> store.save_partial)."""
    calls = []
    save = store.save_partial

    def save_partial(k, epoch, files, meta):
        calls.append((k, epoch))
        return save(k, epoch, files, meta)

    store.save_partial = save_partial
    return calls


def _extrapolate(rows, engine_s, released, released_s, equal, equal_s, n_images, epochs=200) -> dict:
    """Both ratios for one round of `epochs` epochs (the paper's 200), EXTRAPOLATED
    from the per-epoch and per-round costs measured here (not measured at that
    length): training per epoch, each evaluation and checkpoint, and what each
    side spends outside its rounds (data, model; the engine's commits) per round."""
    def per_epoch(ref):
        return sum(r["wall_s"] - r["eval_s"] - r["checkpoint_s"] for r in ref) / max(1, sum(r["epochs"] for r in ref))

    def per(ref, key, n):
        return sum(r[key] for r in ref) / max(1, sum(r[n] for r in ref))

    e_train = [r["epochs"] * n_images / r["images_per_s"] if r.get("images_per_s") else 0.0 for r in rows]
    e_epoch = sum(e_train) / max(1, sum(r["epochs"] for r in rows))
    # A round's wall_s ends after its evaluation, before its commit; the rest of
    # engine_s (data, model, commits) is shared out per round.
    e_eval = sum(r["wall_s"] - t for r, t in zip(rows, e_train)) / len(rows)
    e_out = (engine_s - sum(r["wall_s"] for r in rows)) / len(rows)
    engine = epochs * e_epoch + e_eval + e_out
    sides = {}
    for name, ref, total in (("recipe", released, released_s), ("equal_work", equal, equal_s)):
        ep, ev, ck = per_epoch(ref), per(ref, "eval_s", "evaluations"), per(ref, "checkpoint_s", "checkpoints")
        n_ev = sum(r["evaluations"] for r in ref) / max(1, sum(r["epochs"] for r in ref))  # per epoch
        n_ck = sum(r["checkpoints"] for r in ref) / max(1, sum(r["epochs"] for r in ref))
        if name == "equal_work":  # once per round, whatever its length
            n_ev = n_ck = 1.0 / epochs
        out = (total - sum(r["wall_s"] for r in ref)) / len(ref)
        sides[name] = (epochs * (ep + n_ev * ev + n_ck * ck) + out, ep, ev, ck, n_ev * epochs, n_ck * epochs, out)
    recipe, equal_w = sides["recipe"][0], sides["equal_work"][0]
    fmt = ("{e} x {ep:.3f} s/epoch + {nev:g} x {ev:.3f} s evaluation + {nck:g} x {ck:.4f} s checkpoint "
           "+ {out:.2f} s outside rounds = {tot:.1f} s")
    return {
        "label": f"EXTRAPOLATED to one {epochs}-epoch round from the costs measured above, not measured",
        "recipe_speedup": round(recipe / engine, 2), "engine_speedup_equal_work": round(equal_w / engine, 2),
        "engine": f"{epochs} x {e_epoch:.3f} s/epoch + {e_eval:.3f} s end-of-round evaluation "
                  f"+ {e_out:.2f} s outside rounds (data, model, commit) = {engine:.1f} s",
        **{name: fmt.format(e=epochs, ep=v[1], nev=round(v[4], 2), ev=v[2], nck=round(v[5], 2), ck=v[3],
                            out=v[6], tot=v[0]) for name, v in sides.items()}}


def bench_reference(width: float, epochs: int = 6, rounds: int = 2, per_class: int = 50,
                    train_per_class: int = 200, test_per_class: int = 999) -> dict:
    """The same lineage of `per_class` CIFAR-shaped images per class (50: 1% of
    CIFAR-10) by the engine (run_lineage, defaults) and by the reference recipe,
    as released and at the engine's evaluation/checkpoint cadence."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    g = torch.Generator().manual_seed(0)
    info = data.dataset_info("cifar10")
    n_train, n_test = 10 * train_per_class, 10 * test_per_class
    # Synthetic images in CIFAR-10's real file layout: only shapes and counts matter for time.
    train = data.Split(torch.randint(0, 256, (n_train, 3, 32, 32), generator=g, dtype=torch.uint8),
                       torch.arange(n_train) % 10)
    test = data.Split(torch.randint(0, 256, (n_test, 3, 32, 32), generator=g, dtype=torch.uint8),
                      torch.arange(n_test) % 10)
    spec = TrialSpec(DataSpec("cifar10", images_per_class=per_class, augmentation="basic"),
                     model=ModelSpec(width=width), train=TrainSpec(epochs=epochs),
                     prune=PruneSpec(rounds=rounds, rewind_epoch=1))
    with tempfile.TemporaryDirectory() as d:
        root = os.path.join(d, "data")
        write_folder("cifar10", root, train, test)
        opts = RunOptions(data_root=root, device=str(device))  # every other option at its default
        store = SweepStore(os.path.join(d, "runs"), "b").lineage(spec.trial_id)
        partials = _counting_partials(store)
        t0 = time.perf_counter()
        rows = run_lineage(spec, store, opts)
        engine_s = time.perf_counter() - t0
        # The engine's cadence (workers/round.py): val/test every `eval_every` epochs
        # (0 by default: none mid-round), train/val/test at the end of each round;
        # a mid-round checkpoint every `checkpoint_every` epochs (0: none) or
        # `checkpoint_interval_s` seconds, and the round's commit at its end.
        t0 = time.perf_counter()
        equal = run_reference(spec, train, test, info, os.path.join(d, "ref_equal"), device,
                              cadence=Cadence(eval_every=opts.eval_every, checkpoint_every=opts.checkpoint_every,
                                              eval_splits=("train", "val", "test")))
        equal_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        released = run_reference(spec, train, test, info, os.path.join(d, "ref"), device)
        released_s = time.perf_counter() - t0
    n_val = sum(int(r["val_per_class"] or 0) for r in rows[:1]) * info.num_classes
    engine_eval_images = 10 * per_class + n_val + n_test
    ev = opts.eval_every  # mid-round evaluations (val/test) at these epochs, before the round's last
    engine_evals = len(rows) + sum(1 for r in rows for e in range(epochs - r["epochs"] + 1, epochs)
                                   if ev and e % ev == 0)

    def did(ref_rows):
        return {"evaluations": sum(r["evaluations"] for r in ref_rows),
                "images_per_evaluation": ref_rows[0]["eval_images"],
                "checkpoints": sum(r["checkpoints"] for r in ref_rows)}

    engine_did = {"evaluations": engine_evals, "images_per_evaluation": engine_eval_images,
                  "checkpoints": len(rows) + len(partials), "mid_round_checkpoints": len(partials)}
    equal_did = did(equal)
    return {"recipe_speedup": round(released_s / engine_s, 3),
            "engine_speedup_equal_work": round(equal_s / engine_s, 3),
            "_recipe": {
                "engine_s": round(engine_s, 1), "recipe_released_s": round(released_s, 1),
                "recipe_equal_work_s": round(equal_s, 1),
                "engine": engine_did, "recipe_released": did(released), "recipe_equal_work": equal_did,
                # False if the engine checkpointed by the clock (rounds over checkpoint_interval_s)
                "equal_work_matched": all(engine_did[k] == equal_did[k]
                                          for k in ("evaluations", "images_per_evaluation", "checkpoints")),
                "lineage": f"{per_class} images per class ({10 * per_class} images), {spec.num_rounds} rounds, "
                           f"{epochs} epochs, rewind 1, width {width}, batch {spec.train.batch_size}, "
                           f"augmentation basic; {n_test} test images; device {device}",
                "densities": [round(r["density"], 4) for r in rows],
                "reference_densities": [round(r["density"], 4) for r in released],
                "equal_work_densities": [round(r["density"], 4) for r in equal],
                "extrapolated_200_epoch_round": _extrapolate(rows, engine_s, released, released_s, equal, equal_s,
                                                             10 * per_class)}}
