"""The GPU check: everything CUDA in one run of at most ~8 minutes on one GPU,
written as one JSON file (bench/gpu_check.sh is the entry point).

    cuda_tests   `pytest -m cuda`: bf16 lineages (images on the GPU and on the host),
                 a fused group, the t-vMF head's precision, packed processes
    lineage      a short bf16 + channels_last lineage on CIFAR-shaped data, timed
    bench        the engine's ratios, packed_gpu_speedup (4 processes) and
                 fused_speedup at K = 4, 8, 16, on this device

`--smoke` runs the same steps at toy sizes (CI runs it on the CPU: the CUDA
tests are then listed as skipped, and every figure is a CPU one, labelled so).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

from .common import device_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cuda_tests(smoke: bool) -> dict:
    t0 = time.perf_counter()
    # Smoke (CI, no CUDA): only the CUDA tests' own file, which is all it can
    # show; collecting the whole suite to skip the same tests costs ~5 s more.
    where = os.path.join(ROOT, "tests", "workers", "test_cuda.py") if smoke else os.path.join(ROOT, "tests")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "-rs",
                        where], cwd=ROOT, capture_output=True, text=True, timeout=420)
    tail = [line for line in r.stdout.splitlines() if line.strip()][-12:]
    return {"rc": r.returncode, "seconds": round(time.perf_counter() - t0, 1), "summary": tail}


def lineage(smoke: bool) -> dict:
    from workers import data as D
    from workers.data.cifar import write_folder
    from workers.lineage import run_lineage
    from workers.spec import DataSpec, ModelSpec, PruneSpec, RunOptions, TrainSpec, TrialSpec
    from workers.store import SweepStore
    cuda = torch.cuda.is_available()
    per_class, epochs, width = (60, 1, 0.125) if smoke else (500, 10, 1.0)
    g = torch.Generator().manual_seed(0)
    train = D.Split(torch.randint(0, 256, (10 * per_class, 3, 32, 32), generator=g, dtype=torch.uint8),
                    torch.arange(10 * per_class) % 10)
    test = D.Split(torch.randint(0, 256, (2000, 3, 32, 32), generator=g, dtype=torch.uint8), torch.arange(2000) % 10)
    spec = TrialSpec(DataSpec("cifar10", images_per_class=min(50, per_class // 2), augmentation="basic"),
                     model=ModelSpec(width=width), train=TrainSpec(epochs=epochs),
                     prune=PruneSpec(rounds=2, rewind_epoch=1))
    with tempfile.TemporaryDirectory() as d:
        write_folder("cifar10", os.path.join(d, "data"), train, test)
        t0 = time.perf_counter()
        rows = run_lineage(spec, SweepStore(os.path.join(d, "runs"), "g").lineage(spec.trial_id),
                           RunOptions(data_root=os.path.join(d, "data")))
        seconds = time.perf_counter() - t0
    return {"seconds": round(seconds, 1), "bf16": cuda and spec.train.bf16, "channels_last": cuda,
            "rounds": [{k: r[k] for k in ("round", "density", "test_acc", "images_per_s", "device")} for r in rows]}


def bench(smoke: bool) -> dict:
    from . import steps
    out = {}
    for name, fn in steps(smoke, full=False):
        if name in ("engine", "fused", "packed"):
            out.update(fn())
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench/gpu_check.sh", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "gpu_check.json"))
    ap.add_argument("--smoke", action="store_true", help="toy sizes: checks the script runs")
    a = ap.parse_args(argv)
    res = {"device": device_name(), "cuda": torch.cuda.is_available(), "torch": torch.__version__,
           "smoke": a.smoke}
    for name, fn in (("cuda_tests", cuda_tests), ("lineage", lineage), ("bench", bench)):
        t0 = time.perf_counter()
        try:
            res[name] = fn(a.smoke)
        except Exception as e:  # one failing part must not cost the others' figures
            res[name] = {"error": f"{type(e).__name__}: {e}"}
        print(f"gpu_check: {name} done in {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
        with open(a.out, "w") as f:  # written after every part: a timeout keeps what finished
            json.dump(res, f, indent=1, default=str)
    print(a.out)
    return 0 if all("error" not in res[n] for n in ("lineage", "bench")) and res["cuda_tests"].get("rc") in (0, 5) \
        else 1


if __name__ == "__main__":
    raise SystemExit(main())
