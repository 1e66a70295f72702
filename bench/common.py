"""What every benchmark shares: the machine's name, device syncs, best-of timing."""
from __future__ import annotations

import os
import platform
import time

import torch


def device_name() -> str:
    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)}"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"cpu: {cpu} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def trial_process_start_s(run: dict, df, slots: int) -> float:
    """Seconds from Tune's start to the first rounds of the first `slots` trials:
    each slot's trial process starting once per sweep (actor reuse), a Ray
    worker importing torch and decoding the data. `run` is the driver's RUN.json,
    `df` the results table."""
    tune_start = run["started"] + (run.get("import_s") or 0) + run["ray_start_s"]
    firsts = sorted(df.loc[df["round"] == 0, "started_at"].map(lambda t: t.timestamp()))[:slots]
    return max(0.0, sum(firsts) / len(firsts) - tune_start) if firsts else 0.0


def run_experiment(experiment: str, storage: str) -> int:
    """`lth-sweep run -e <experiment>` of ./experiments.yaml (resuming what is
    there), timed; returns its exit status. The studies whose tables are in the
    documentation (bench/init_study.py, bench/digits_study.py) run through this."""
    import subprocess
    import sys
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "orchestrator", "run", "-e", experiment, "--storage", storage, "--plain"],
                       stdout=subprocess.DEVNULL)
    if r.returncode == 0:
        print(f"{experiment} ran in {time.time() - t0:.0f} s (wall, Ray start-up included) on {os.cpu_count()} cores")
    return r.returncode


def write_output(path, parts: list[str]) -> None:
    """Print `parts`, one per line, and write them to `path` (None: print only):
    a study's committed output (bench/results/), which the documentation quotes and
    tests/test_readme_claims.py reads its numbers back from."""
    text = "\n".join(parts) + "\n"
    print(text, end="")
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
