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
    driver_storage_ops_per_round     storage operations the driver process did while Tune
                                     ran (workers/store.py FS counters, RUN.json), per
                                     committed round; ..._by_kind per operation kind
    driver_bytes_written_per_round   bytes it wrote per round (and _read_)
    results_..., tune_...            the same apart: ours (a manifest read, a results and a
                                     layers row file per round) and Ray Tune's own (its
                                     experiment state, snapshotted at the start, every
                                     TUNE_GLOBAL_CHECKPOINT_S and at the end, and a folder
                                     per trial; orchestrator/tune/counted.py)

`storage="s3"` runs the same against a loopback moto S3 server (`moto[server]`).
Flat per-trial numbers mean nothing grows faster than linearly with the trial
count. Not part of `bench`'s default run: 10,000 trials take a while.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time

import pyarrow.fs as pafs

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


@contextlib.contextmanager
def _storage(kind: str, d: str):
    """(--storage URI, the environment that reaches it): a folder, or a bucket of a moto
    S3 server on 127.0.0.1 started for this run."""
    if kind == "local":
        yield os.path.join(d, "runs"), {}
        return
    if kind != "s3":
        raise ValueError(f"scale storage must be local or s3, not {kind!r}")
    from .moto import moto_server
    with moto_server(os.path.join(d, "moto.log"), "scale") as server:
        saved = {k: os.environ.get(k) for k in server["env"]}
        os.environ.update(server["env"])  # this process reads the results back through the same variables
        try:
            yield "s3://scale/runs", server["env"]
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def _per_round(run: dict) -> dict:
    """The driver's storage operations and bytes during the Tune phase, per committed
    round: ours (the results tables, manifests read) and Ray Tune's own experiment
    state (`tune_*`, counted by orchestrator/tune/counted.py), together and apart."""
    ops, rounds = dict(run.get("tune_storage") or {}), max(1, run.get("rounds_committed") or 0)
    written, read = ops.pop("bytes_written", 0), ops.pop("bytes_read", 0)
    tune_written = ops.pop("tune_bytes_written", 0)
    tune_ops = sum(v for k, v in ops.items() if k.startswith("tune_"))
    return {"rounds_committed": run.get("rounds_committed"),
            "driver_storage_ops_per_round": round(sum(ops.values()) / rounds, 2),
            "driver_storage_ops_per_round_by_kind": {k: round(v / rounds, 2) for k, v in sorted(ops.items())},
            "driver_bytes_written_per_round": round((written + tune_written) / rounds),
            "driver_bytes_read_per_round": round(read / rounds),
            "results_ops_per_round": round((sum(ops.values()) - tune_ops) / rounds, 2),
            "results_bytes_written_per_round": round(written / rounds),
            "tune_ops_per_round": round(tune_ops / rounds, 2),
            "tune_bytes_written_per_round": round(tune_written / rounds)}


def bench_scale_one(n: int, log=print, storage: str = "local") -> dict:
    with tempfile.TemporaryDirectory() as d, _storage(storage, d) as (uri, storage_env):
        with open(os.path.join(d, "experiments.yaml"), "w") as f:
            f.write(YAML.format(seeds=", ".join(str(i) for i in range(n))))
        env = {**os.environ, **storage_env, "LTH_DEVICE": "cpu", "RAY_AIR_NEW_OUTPUT": "0"}
        t0 = time.perf_counter()
        with open(os.path.join(d, "driver.log"), "w") as out:
            proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "run", "-e", "scale", "--num-cpus",
                                     str(SLOTS), "--plain", "--storage", uri], cwd=d, env=env, stdout=out,
                                    stderr=subprocess.STDOUT)
            peak = 0.0
            while proc.poll() is None:
                peak = max(peak, _peak_rss_mb(proc.pid))
                time.sleep(0.5)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            with open(os.path.join(d, "driver.log")) as f:
                raise RuntimeError(f"scale run of {n} trials failed: {f.read()[-2000:]}")
        sweep = SweepStore(uri, "scale")
        run = sweep.read_json(SweepStore.RUN)
        df = load_results(sweep)
        assert df["trial_id"].nunique() == n, (n, df["trial_id"].nunique())
        compute = float(df["wall_s"].sum())
        objects = sum(i.type == pafs.FileType.File for i in sweep.fs.fs.get_file_info(
            pafs.FileSelector(sweep.dir, recursive=True, allow_not_found=True)))
        start = trial_process_start_s(run, df, SLOTS)  # once per sweep, not per trial
        out = {"trials": n, "storage": storage, "wall_s": round(wall, 1), "wall_per_trial_s": round(wall / n, 4),
               "overhead_per_trial_s": round((run["tune_s"] - start - compute / SLOTS) / n, 4),
               "trial_process_start_s": round(start, 1),
               "trial_compute_s": round(compute, 1), "ray_start_s": run["ray_start_s"],
               "peak_driver_rss_mb": round(peak, 1), "storage_objects": objects,
               "storage_objects_per_trial": round(objects / n, 2), **_per_round(run)}
        log(f"scale {n}: {out}")
        return out


def _growth(values: list[float]):
    return round(max(values) / min(values), 2) if len(values) > 1 and min(values) > 0 else None


def bench_scale(ns: list[int], storage: str = "local") -> dict:
    """`storage`: "local" (a folder) or "s3" (a loopback moto server)."""
    rows = [bench_scale_one(n, log=lambda s: print(f"bench: {s}", file=sys.stderr, flush=True), storage=storage)
            for n in ns]
    return {"_scale": rows,
            "_scale_overhead_growth": _growth([r["overhead_per_trial_s"] for r in rows]),
            "_scale_storage_ops_growth": _growth([r["driver_storage_ops_per_round"] for r in rows]),
            "_scale_bytes_written_growth": _growth([r["driver_bytes_written_per_round"] for r in rows])}
