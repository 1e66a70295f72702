"""`lth-sweep bench --scale N [N ...]`: what the driver costs per trial, from 100 to 10,000 trials.

N near-zero lineages (digits, 1 image per class, one dense round of one
epoch at width 1/16, nothing held out) run through the real driver, as a user
runs them (`lth-sweep run` in its own process, a local Ray with 2 CPU slots).
Per N:

    wall_per_trial_s      the sweep's wall time / N (start to exit)
    overhead_per_trial_s  (Tune's wall - the slots' one-time trial process start - trial compute / slots) / N:
                          what the driver adds per trial
    peak_driver_rss_mb    the driver process's peak resident memory (VmHWM; Ray's own
                          processes are not the driver)
    storage_objects       files the sweep left in storage

Flat per-trial numbers mean nothing grows faster than linearly with the trial
count. Not part of `bench`'s default run: 10,000 trials take a while.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

from orchestrator.results import load_results
from workers.store import SweepStore

from .common import trial_process_start_s

YAML = """
experiments:
  scale:
    datasets: [digits]
    images_per_class: [1]
    augmentations: [none]
    seeds: [{seeds}]
    model: {{width: 0.0625}}
    train: {{epochs: 1, batch_size: 10, lr: 0.05}}
    imp: {{rounds: 0, rewind_epoch: 0}}
    eval: {{val_per_class: 0}}
    resources: {{gpu: 0, cpu: 1}}
"""
SLOTS = 2


def _peak_rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def bench_scale_one(n: int, log=print) -> dict:
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "experiments.yaml"), "w") as f:
            f.write(YAML.format(seeds=", ".join(str(i) for i in range(n))))
        env = {**os.environ, "LTH_DEVICE": "cpu", "RAY_AIR_NEW_OUTPUT": "0"}
        t0 = time.perf_counter()
        with open(os.path.join(d, "driver.log"), "w") as out:
            proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "run", "-e", "scale", "--num-cpus",
                                     str(SLOTS), "--plain"], cwd=d, env=env, stdout=out, stderr=subprocess.STDOUT)
            peak = 0.0
            while proc.poll() is None:
                peak = max(peak, _peak_rss_mb(proc.pid))
                time.sleep(0.5)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            with open(os.path.join(d, "driver.log")) as f:
                raise RuntimeError(f"scale run of {n} trials failed: {f.read()[-2000:]}")
        sweep = SweepStore(os.path.join(d, "runs"), "scale")
        run = sweep.read_json(SweepStore.RUN)
        df = load_results(sweep)
        assert df["trial_id"].nunique() == n, (n, df["trial_id"].nunique())
        compute = float(df["wall_s"].sum())
        objects = sum(len(files) for _, _, files in os.walk(sweep.dir))
        start = trial_process_start_s(run, df, SLOTS)  # once per sweep, not per trial
        out = {"trials": n, "wall_s": round(wall, 1), "wall_per_trial_s": round(wall / n, 4),
               "overhead_per_trial_s": round((run["tune_s"] - start - compute / SLOTS) / n, 4),
               "trial_process_start_s": round(start, 1),
               "trial_compute_s": round(compute, 1), "ray_start_s": run["ray_start_s"],
               "peak_driver_rss_mb": round(peak, 1), "storage_objects": objects,
               "storage_objects_per_trial": round(objects / n, 2)}
        log(f"scale {n}: {out}")
        return out


def bench_scale(ns: list[int]) -> dict:
    rows = [bench_scale_one(n, log=lambda s: print(f"bench: {s}", file=sys.stderr, flush=True)) for n in ns]
    per = [r["overhead_per_trial_s"] for r in rows]
    return {"_scale": rows,
            "_scale_overhead_growth": round(max(per) / min(per), 2) if len(per) > 1 and min(per) > 0 else None}
