"""The GPU check: everything CUDA in one run of at most ~8 minutes on one GPU,
written as one JSON file (bench/gpu_check.sh is the entry point).

    cuda_tests   `pytest -m cuda`: bf16 lineages (images on the GPU and on the host),
                 a fused group, the t-vMF head's precision, packed processes
    fuse_checks  the fusion self-check (workers/fusecheck.py) of every shipped
                 architecture and variant, grouped and loop, in bf16 autocast and
                 in fp32, with its measured errors
    lineage      a short bf16 + channels_last lineage on CIFAR-shaped data, every
                 round training at least one epoch, timed
    bench        the engine's ratios and fused K = 4, 8, 16 against K solo lineages
                 one after another and K packed processes on the same GPU

It fails (exit 1) when any part errs, when any fusion self-check fails, when
the CUDA tests fail, none were collected or one was skipped on a CUDA host,
and when a round of the lineage trained no epoch; without `--smoke` and
without a CUDA device it refuses to run (exit 2, one line). `--smoke` runs
the same steps at toy sizes (CI runs it on the CPU: the CUDA tests are then
listed as skipped, and every figure is a CPU one, labelled so).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Optional

import torch

from .common import device_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARTS = ("cuda_tests", "fuse_checks", "lineage", "bench")


class CheckFailed(Exception):
    """A part ran and showed something wrong; `partial`: what it measured."""

    def __init__(self, message: str, partial: Optional[dict] = None):
        super().__init__(message)
        self.partial = partial or {}


def cuda_tests(a) -> dict:
    t0 = time.perf_counter()
    # Smoke (CI, no CUDA): only the CUDA tests' own file, which is all it can
    # show; collecting the whole suite to skip the same tests costs ~5 s more.
    where = a.tests or (os.path.join(ROOT, "tests", "workers", "test_cuda.py") if a.smoke
                        else os.path.join(ROOT, "tests"))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "-rs",
                        where], cwd=ROOT, capture_output=True, text=True, timeout=420)
    tail = [line for line in r.stdout.splitlines() if line.strip()][-12:]
    out = {"rc": r.returncode, "seconds": round(time.perf_counter() - t0, 1), "summary": tail}
    if r.returncode == 5:
        raise CheckFailed(f"pytest collected no CUDA tests under {where}")
    if r.returncode != 0:
        raise CheckFailed(f"the CUDA tests failed (pytest exit {r.returncode}): {tail[-1] if tail else ''}")
    skipped = [line for line in r.stdout.splitlines() if line.startswith("SKIPPED")]
    if skipped and torch.cuda.is_available():  # on a CUDA host a skipped CUDA test proved nothing
        raise CheckFailed(f"{len(skipped)} CUDA test(s) skipped on a CUDA host: {skipped[0]}")
    return out


SMOKE_FUSABLE = [("imp", "resnet18"), ("imp", "mobilenetv2")]


def fuse_checks(a) -> dict:
    """The self-check a fused group runs before training, for every
    architecture, both strategies and both arithmetics the trials use."""
    from workers.fusecheck import RULE, self_check
    from .members import make_members
    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    case, k, width = ("quickstart", 2, 0.125) if a.smoke else ("cifar", 4, 1.0 if cuda else 0.25)
    rows = []
    from workers.fusecheck import FUSABLE
    # A smoke run shows the step runs and reports: a plain and a depthwise
    # network (tests/workers/test_fusecheck.py checks every FUSABLE one on
    # both kernels; the full run here does, on the device).
    for method, arch in (SMOKE_FUSABLE if a.smoke else FUSABLE):
        for bf16 in ((True, False) if cuda else (False,)):
            members = make_members(case, k, width, dev, 3, arch=arch, method=method, bf16=bf16)
            for strategy in ("grouped", "loop"):
                o = self_check(members, strategy)
                rows.append({"arch": arch, "method": method, "strategy": strategy, "K": k, "width": width,
                             "arithmetic": "bf16 autocast" if members[0].autocast else str(members[0].dtype),
                             "passed": o["passed"], "fused_error": o["fused_error"],
                             "solo_error": o["solo_error"], "worst": o["worst"], "ratio": o["ratio"],
                             "logic": o["logic"]["worst"], "seconds": o["seconds"]})
            del members
            if cuda:
                torch.cuda.empty_cache()
    caught = _mutations(a, case, max(k, 3), width, dev, cuda)
    out = {"device": str(dev), "rule": RULE, "checks": rows, "passed": sum(r["passed"] for r in rows),
           "total": len(rows), "mutations": caught}
    failed = [f"{r['method']}/{r['arch']} {r['strategy']} {r['arithmetic']}" for r in rows if not r["passed"]]
    failed += [f"{r['method']}/{r['arch']} {r['arithmetic']} with its {r['mutation']} mutated passed"
               for r in caught if not r["caught"]]
    if failed:  # a self-check that fails is what this check exists to show
        raise CheckFailed(f"{len(failed)} of {len(rows) + len(caught)} fusion self-checks failed: "
                          f"{', '.join(failed)}", out)
    return out


def _mutations(a, case: str, k: int, width: float, dev: torch.device, cuda: bool) -> list[dict]:
    """Every fusion bug of bench/fuse_mutations.py, on this device, must fail the
    self-check (ResNet-18 alone in a smoke run): members after an epoch of
    training, so that they carry momentum buffers of their own."""
    from workers.fusecheck import FUSABLE, self_check
    from .fuse_mutations import MUTATIONS, mutated
    from .members import make_members
    rows = []
    for method, arch in ([("imp", "resnet18")] if a.smoke else FUSABLE):
        for bf16 in (True, False):
            members = make_members(case, k, width, dev, 3, arch=arch, method=method, bf16=bf16)
            for t in members:
                t.autocast = bf16  # on CPU too: autocast to bf16 runs there
                t.train_epoch(0, 0)
            for name in MUTATIONS:
                with mutated(name):
                    o = self_check(members, "grouped")
                rows.append({"arch": arch, "method": method, "mutation": name, "K": k,
                             "arithmetic": "bf16 autocast" if bf16 else "float32", "caught": not o["passed"],
                             "logic_margin": o["logic"]["worst"]["margin"], "margin": o["worst"]["margin"]})
            del members
            if cuda:
                torch.cuda.empty_cache()
    return rows


def lineage(a) -> dict:
    from workers import data
    from workers.data.cifar import write_folder
    from workers.lineage import run_lineage
    from workers.spec import DataSpec, ModelSpec, PruneSpec, RunOptions, TrainSpec, TrialSpec
    from workers.store import SweepStore
    cuda = torch.cuda.is_available()
    per_class, epochs, width = (60, 2, 0.125) if a.smoke else (500, 10, 1.0)
    epochs = a.lineage_epochs or epochs
    g = torch.Generator().manual_seed(0)
    train = data.Split(torch.randint(0, 256, (10 * per_class, 3, 32, 32), generator=g, dtype=torch.uint8),
                    torch.arange(10 * per_class) % 10)
    test = data.Split(torch.randint(0, 256, (2000, 3, 32, 32), generator=g, dtype=torch.uint8), torch.arange(2000) % 10)
    spec = TrialSpec(DataSpec("cifar10", images_per_class=min(50, per_class // 2), augmentation="basic"),
                     model=ModelSpec(width=width), train=TrainSpec(epochs=epochs),
                     prune=PruneSpec(rounds=2, rewind_epoch=1))
    with tempfile.TemporaryDirectory() as d:
        write_folder("cifar10", os.path.join(d, "data"), train, test)
        t0 = time.perf_counter()
        rows = run_lineage(spec, SweepStore(os.path.join(d, "runs"), "g").lineage(spec.trial_id),
                           RunOptions(data_root=os.path.join(d, "data")))
        seconds = time.perf_counter() - t0
    out = {"seconds": round(seconds, 1), "bf16": cuda and spec.train.bf16, "channels_last": cuda,
           "rounds": [{k: r[k] for k in ("round", "epochs", "density", "test_acc", "images_per_s", "device")}
                      for r in rows]}
    idle = [r["round"] for r in rows if r["epochs"] < 1]
    if idle:
        raise CheckFailed(f"round(s) {idle} trained no epoch (epochs {epochs} <= rewind_epoch "
                          f"{spec.prune.rewind_epoch}): the lineage checked nothing of training there")
    return out


def bench(a) -> dict:
    from . import steps
    out = {}
    for name, fn in steps(a.smoke, full=False):
        if name in ("engine", "fused", "packed"):
            out.update(fn())
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench/gpu_check.sh", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "gpu_check.json"))
    ap.add_argument("--smoke", action="store_true", help="toy sizes: checks the script runs")
    ap.add_argument("--only", nargs="+", choices=PARTS, help="run only these parts")
    ap.add_argument("--tests", help="where the CUDA tests are (default: the project's tests)")
    ap.add_argument("--lineage-epochs", type=int, help="epochs of the lineage's rounds (rewind after 1)")
    a = ap.parse_args(argv)
    if not a.smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA device: the full check needs one (--smoke runs the same steps at toy "
              "sizes on the CPU)", file=sys.stderr)
        return 2
    res = {"device": device_name(), "cuda": torch.cuda.is_available(), "torch": torch.__version__,
           "smoke": a.smoke, "failed": []}
    for name in a.only or PARTS:
        t0 = time.perf_counter()
        try:
            res[name] = globals()[name](a)
        except Exception as e:  # one failing part must not cost the others' figures
            res[name] = {**getattr(e, "partial", {}), "error": f"{type(e).__name__}: {e}"}
            res["failed"].append(name)
        print(f"gpu_check: {name} {'FAILED' if name in res['failed'] else 'done'} in "
              f"{time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
        with open(a.out, "w") as f:  # written after every part: a timeout keeps what finished
            json.dump(res, f, indent=1, default=str)
    print(a.out)
    for name in res["failed"]:
        print(f"gpu_check: {name}: {res[name]['error']}", file=sys.stderr)
    return 1 if res["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
