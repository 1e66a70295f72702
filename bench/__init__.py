"""`lth-sweep bench`: what the engine and the orchestrator cost, as ratios.

Every figure compares the project's code with a baseline doing the same work
on the same machine, so the numbers travel across machines better than
seconds do. Nothing here is asserted by tests (timings are not test
material); docs/performance.md quotes a run with the machine named. One file per
family of figures, each importing the engine's public functions:

    engine.py        train_loop_ratio, epoch_overhead_frac, eval_train_ratio, checkpoint_frac
    orchestrator.py  plan_10k_s, query_1m_s, orchestrator_overhead_ratio(_steady) (--full: the sweep
                     against the same lineages in plain processes)
    reference.py     recipe_speedup, engine_speedup_equal_work (against recipe.py: the paper's
                     recipe, reimplemented plainly; as released and at the engine's cadence)
    storage.py       storage_per_lineage_x_dense
    augment.py       batched vs torchvision augmentation (detail only)
    packed.py        packed_gpu_speedup (CUDA only)
    fused.py         fused_speedup, fused_k
    scale.py         --scale N ...: the driver's cost per trial at N trials (not in the default run)
    calibrate.py     --calibrate: the throughput table `plan` costs with (writes it; no keys)
    gpu_check.py     bench/gpu_check.sh: the CUDA tests, fusion self-checks and figures in one JSON
    init_study.py    `python -m bench.init_study`: docs/imp.md's init table (not a bench key)
    intervals.py     bootstrap_cell_s, bootstrap_cell_peak_mb (one cell of 30 seeds x 10,000 test
                     images at B = 20,000); `python -m bench.intervals`: the interval's coverage table

Keys are null where this machine cannot measure them (no GPU, no --full).
"""
from __future__ import annotations

import json
import sys

import torch

from .common import device_name

KEYS = ["train_loop_ratio", "epoch_overhead_frac", "eval_train_ratio", "checkpoint_frac",
        "orchestrator_overhead_ratio", "orchestrator_overhead_ratio_steady", "plan_10k_s", "query_1m_s",
        "recipe_speedup", "engine_speedup_equal_work", "storage_per_lineage_x_dense",
        "packed_gpu_speedup", "fused_speedup", "fused_k", "bootstrap_cell_s", "bootstrap_cell_peak_mb"]


def steps(smoke: bool, full: bool) -> list:
    """(name, function returning a dict of figures) in the order they run."""
    from .augment import bench_augment
    from .engine import bench_engine
    from .intervals import bench_bootstrap_cell
    from .orchestrator import bench_orchestrator, bench_plan, bench_query
    from .reference import bench_reference
    from .storage import bench_storage
    width = 1.0 if torch.cuda.is_available() else 0.25
    if smoke:  # the same code paths at toy sizes: checks that the benchmark runs
        out = [("engine", lambda: bench_engine(0.0625, repeats=1, sizes=(200, 100, 400))),
               ("plan", lambda: {"plan_10k_s": bench_plan(1000)}),
               ("query", lambda: {"query_1m_s": bench_query(20000)}),
               ("augment", lambda: bench_augment(20)),
               ("reference", lambda: bench_reference(0.0625, epochs=2, rounds=1, train_per_class=60,
                                                     test_per_class=20)),
               ("storage", lambda: bench_storage(smoke)),
               ("bootstrap", lambda: bench_bootstrap_cell(5, 1000, 2000))]
    else:
        out = [("engine", lambda: bench_engine(width)),
               ("plan", lambda: {"plan_10k_s": bench_plan()}),
               ("query", lambda: {"query_1m_s": bench_query()}),
               ("augment", bench_augment),
               ("reference", lambda: bench_reference(width)),
               ("storage", lambda: bench_storage(smoke)),
               ("bootstrap", bench_bootstrap_cell)]
    from .fused import bench_fused
    ks = (4, 8, 16) if torch.cuda.is_available() else (4, 8)
    out.append(("fused", lambda: bench_fused(ks=ks, smoke=smoke)))
    if torch.cuda.is_available():
        from .packed import bench_packed
        out.append(("packed", bench_packed))
    if full:  # with --smoke: 2-epoch lineages, the same code paths
        out.append(("orchestrator", lambda: bench_orchestrator(epochs=2 if smoke else 45)))
    return out


# --restart-scale stops a run with 8 lineages in flight: it needs at least that many.
IN_FLIGHT_MIN = 8


def run_bench(args) -> int:
    res = {k: None for k in KEYS}
    res["device"] = device_name()
    smoke = bool(getattr(args, "smoke", False))
    if smoke:
        res["_smoke"] = "tiny sizes: these numbers mean nothing"
    todo = steps(smoke, bool(getattr(args, "full", False)))
    # --scale / --restart-scale / --calibrate are their own runs: asked for alone, they run alone.
    if getattr(args, "scale", None) or getattr(args, "restart_scale", None) or getattr(args, "calibrate", False):
        todo = []
        if getattr(args, "restart_scale", None):
            from orchestrator.errors import UsageError
            if min(args.restart_scale) < IN_FLIGHT_MIN or args.rounds < 2 or args.latency_ms < 0:
                raise UsageError(f"lth-sweep bench: --restart-scale takes lineage counts >= {IN_FLIGHT_MIN}, "
                                 "--rounds >= 2 and --latency-ms >= 0")
            from .restart_scale import bench_restart_scale
            todo.append(("restart-scale", lambda: bench_restart_scale(
                args.restart_scale, rounds=args.rounds, latency_ms=args.latency_ms,
                log=lambda line: print(f"bench: {line}", file=sys.stderr, flush=True))))
        if args.calibrate:
            from .calibrate import calibrate
            sizes = [8] if smoke else None
            todo.append(("calibrate", lambda: {"_calibrate": calibrate(
                sizes=sizes, steps=1 if smoke else 3,
                log=lambda line: print(f"bench: {line}", file=sys.stderr, flush=True))}))
        if args.scale:
            if min(args.scale) < 1:
                from orchestrator.errors import UsageError
                raise UsageError("lth-sweep bench: --scale takes trial counts >= 1")
            from .scale import bench_scale
            todo.append(("scale", lambda: bench_scale(args.scale, storage=getattr(args, "scale_storage", "local"))))
    for name, fn in todo:
        if not args.json:
            print(f"bench: {name} ...", file=sys.stderr, flush=True)
        res.update(fn())
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    if args.json:
        print(json.dumps(res))
    else:
        print(f"device: {res['device']}")
        for k in KEYS:
            v = res[k]
            print(f"  {k:30s} {'-' if v is None else v}")
        for k, v in res.items():
            if k not in KEYS and k != "device":
                print(f"  {k.lstrip('_')}: {json.dumps(v)}")
    return 0
