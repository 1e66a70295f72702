"""`lth-sweep bench`: what the engine and the orchestrator cost, as ratios.

Every figure compares the project's code with a bare baseline doing the
same work on the same machine, so the numbers travel across machines
better than seconds do. Nothing here is asserted by tests (timings are
not test material); the README quotes a run with the machine named.

Keys (null where this machine cannot measure them):
  train_loop_ratio         engine masked loop images/s / bare PyTorch loop images/s
  epoch_overhead_frac      (engine epoch - bare epoch) / bare epoch at 500 training images
  eval_train_ratio         end-of-round evaluation / training time of a 200-epoch round at 500 images
  checkpoint_frac          round commit (serialise, hash, write, manifest) / 200-epoch round
  orchestrator_overhead_ratio   sweep wall / (sum of trial compute / parallel slots)   [--full]
  plan_10k_s               seconds to expand and list a 10,000-trial grid
  query_1m_s               seconds for the winning-ticket query over 1,000,000 rows
  reference_speedup        end-to-end time of a 1% CIFAR-10-shaped lineage (3 rounds) run the
                           reference way (workers/reference.py: PIL DataLoader, per-epoch test
                           evaluation, hook-based masks, per-epoch checkpoints) / run by the engine
  packed_gpu_speedup       4 packed trials vs 1 alone on one GPU (needs CUDA)
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

KEYS = ["train_loop_ratio", "epoch_overhead_frac", "eval_train_ratio", "checkpoint_frac",
        "orchestrator_overhead_ratio", "plan_10k_s", "query_1m_s", "reference_speedup",
        "packed_gpu_speedup"]


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


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _setup(n_train: int, width: float, device, n_eval: int = 0):
    """A CIFAR-shaped lineage round (synthetic uint8 images) in the engine's
    own structures, with a mask at density 0.5 as in a mid-lineage round."""
    from workers import data as D
    from workers import lineage as L
    from workers import pruning as P
    from workers.models import build_model
    from workers.spec import DataSpec, ModelSpec, TrainSpec, TrialSpec

    g = torch.Generator().manual_seed(0)
    info = D.dataset_info("cifar10")
    x = torch.randint(0, 256, (n_train, 3, 32, 32), generator=g, dtype=torch.uint8).to(device)
    y = torch.randint(0, 10, (n_train,), generator=g).to(device)
    xe = torch.randint(0, 256, (max(n_eval, 1), 3, 32, 32), generator=g, dtype=torch.uint8).to(device)
    ye = torch.randint(0, 10, (max(n_eval, 1),), generator=g).to(device)
    spec = TrialSpec(DataSpec("cifar10", fraction=0.01), model=ModelSpec(width=width),
                     train=TrainSpec(epochs=200))
    prep = L.Prepared(info=info, x_train=x, y_train=y, x_val=xe, y_val=ye, x_test=xe, y_test=ye,
                      augment=D.make_augment("none", info), device=device)
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=10, in_channels=3, image_size=32, width=width).to(device)
    names = P.prunable_names(model)
    masks = P.global_magnitude_prune(model, P.full_masks(model, names), 0.5)
    return spec, prep, model, masks


def _bare_epoch(model, opt, x, y, bs, info, device, autocast, channels_last):
    """The baseline: the plainest correct loop over the same tensors."""
    from workers import data as D
    model.train()
    perm = torch.randperm(x.shape[0], device=x.device)
    for b in range(0, x.shape[0], bs):
        idx = perm[b:b + bs]
        xb = D.normalize(x[idx], info)
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = F.cross_entropy(model(xb), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(device)


def _time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_engine(width: float, repeats: int = 3, sizes: tuple = (2000, 500, 10000)) -> dict:
    """train_loop_ratio, epoch_overhead_frac, eval_train_ratio, checkpoint_frac."""
    from safetensors.torch import save as st_save

    from workers import lineage as L
    from workers import pruning as P
    from workers.store import SweepStore

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = {}
    n_loop, n_epoch, n_eval = sizes
    for n, key in ((n_loop, "loop"), (n_epoch, "epoch")):
        spec, prep, model, masks = _setup(n, width, device)
        trainer = L.Trainer(spec, prep, model, masks)
        from workers.models import build_model
        bm = build_model("resnet18", num_classes=10, in_channels=3, image_size=32, width=width).to(device)
        if trainer.channels_last:
            bm.to(memory_format=torch.channels_last)
        bopt = torch.optim.SGD(bm.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

        def engine():
            trainer.train_epoch(1, 3)
            _sync(device)

        def bare():
            _bare_epoch(bm, bopt, prep.x_train, prep.y_train, 100, prep.info, device,
                        trainer.autocast, trainer.channels_last)

        engine(), bare()  # warm-up (allocator, kernels, momentum buffers)
        # Interleave so background load hits both sides alike.
        e_s = b_s = float("inf")
        for _ in range(repeats):
            e_s = min(e_s, _time(engine, 1))
            b_s = min(b_s, _time(bare, 1))
        out[key] = (e_s, b_s)
    e_s, b_s = out["loop"]
    res = {"train_loop_ratio": round(b_s / e_s, 4)}
    e5, b5 = out["epoch"]
    res["epoch_overhead_frac"] = round(max(0.0, e5 - b5) / b5, 4)

    # Evaluation as the engine does it at the end of a round: train subset,
    # validation split (10% of CIFAR-10's training split) and the 10k test set.
    spec, prep, model, masks = _setup(n_epoch, width, device, n_eval=n_eval)
    trainer = L.Trainer(spec, prep, model, masks)
    xv, yv = prep.x_test[:n_eval // 2], prep.y_test[:n_eval // 2]

    def evaluate():
        trainer.accuracy(prep.x_train, prep.y_train)
        trainer.accuracy(xv, yv)
        trainer.accuracy(prep.x_test, prep.y_test)

    evaluate()
    eval_s = _time(evaluate, repeats)
    round_train_s = e5 * 200
    res["eval_train_ratio"] = round(eval_s / round_train_s, 4)

    # The commit of one round: the same files and manifest the engine writes.
    with tempfile.TemporaryDirectory() as d:
        lin = SweepStore(d, "bench").lineage("0" * 16)
        state = L.model_state(model)

        def commit():
            files = {"weights.safetensors": st_save(state),
                     "mask.safetensors": st_save(P.pack_masks(masks)),
                     "metrics.json": b"{}"}
            lin.commit_round(1, files, {"round": 1}, spec.to_dict())

        commit()
        ckpt_s = _time(commit, repeats)
        sizes = {n: os.path.getsize(os.path.join(lin.round_dir(1), n))
                 for n in ("weights.safetensors", "mask.safetensors")}
    weights_bytes = sum(v.numel() * v.element_size() for v in state.values())
    prunable = sum(m.numel() for m in masks.values())
    res["checkpoint_frac"] = round(ckpt_s / round_train_s, 5)
    res["_detail"] = {
        "width": width, "device": str(device),
        "loop_images_per_s": {"engine": round(n_loop / e_s, 1), "bare": round(n_loop / b_s, 1)},
        "epoch_500_s": {"engine": round(e5, 4), "bare": round(b5, 4)},
        "eval_s": round(eval_s, 4), "commit_s": round(ckpt_s, 4),
        "round_bytes": sizes,
        "size_budget_bytes": int(1.05 * weights_bytes + prunable / 8),
        "size_ok": sizes["weights.safetensors"] + sizes["mask.safetensors"] <= 1.05 * weights_bytes + prunable / 8,
    }
    return res


def bench_plan(n: int = 10000) -> float:
    from orchestrator.config import validate
    from orchestrator.grid import expand
    doc = {"experiments": {"big": {
        "datasets": ["cifar10", "cifar100"],
        "fractions": [round(0.01 * (i + 1), 2) for i in range(50)],
        "augmentations": ["none", "basic", "contrast", "auto", "rand"],
        "methods": ["imp", "random_prune"], "seeds": list(range(n // 1000))}}}
    t0 = time.perf_counter()
    trials = expand(validate(doc)["experiments"]["big"])
    json.dumps([t.row() for t in trials])
    dt = time.perf_counter() - t0
    assert len(trials) == n, len(trials)
    return round(dt, 4)


def bench_query(rows: int = 1_000_000) -> float:
    """Winning-ticket query over a results table of `rows` rows (17 rounds
    per trial), written in the real shard layout."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from orchestrator.results import RESULTS_SCHEMA, SCHEMA_VERSION, results_dataset
    from orchestrator.tables import winning_tickets
    from workers.store import SweepStore

    rng = np.random.default_rng(0)
    n_trials = rows // 17 + 1
    with tempfile.TemporaryDirectory() as d:
        st = SweepStore(d, "q")
        os.makedirs(st.results_dir)
        tids = np.array([f"{i:016x}" for i in rng.permutation(n_trials * 97)[:n_trials]])
        trial = np.repeat(np.arange(n_trials), 17)[:rows]
        rnd = np.tile(np.arange(17), n_trials)[:rows]
        cols = {
            "sweep": np.full(rows, "q"), "trial_id": tids[trial],
            "dataset": np.full(rows, "cifar10"), "fraction": np.full(rows, 0.01),
            "augmentation": np.full(rows, "none"), "method": np.full(rows, "imp"),
            "arch": np.full(rows, "resnet18"), "seed": trial % 3, "round": rnd,
            "density": 0.8 ** rnd, "val_acc": rng.random(rows), "test_acc": rng.random(rows),
            "train_acc": rng.random(rows), "epochs": np.full(rows, 198),
            "schema_version": np.full(rows, SCHEMA_VERSION, dtype=np.int32),
        }
        table = pa.table({f.name: (pa.array(cols[f.name], type=f.type) if f.name in cols
                                   else pa.nulls(rows, type=f.type)) for f in RESULTS_SCHEMA},
                         schema=RESULTS_SCHEMA)
        shard = np.array([t[:2] for t in tids])[trial]
        meta = RESULTS_SCHEMA.metadata
        for s in np.unique(shard):
            part = table.filter(pa.array(shard == s))
            pq.write_table(part.replace_schema_metadata(meta), os.path.join(st.results_dir, f"part-{s}.parquet"))
        import duckdb  # noqa: F401  (module import is process start-up, not query time)
        dt = float("inf")
        for _ in range(3):  # best of 3: footers checked and the query run each time
            t0 = time.perf_counter()
            wt = winning_tickets(results_dataset(st))
            dt = min(dt, time.perf_counter() - t0)
        assert len(wt) == n_trials
    return round(dt, 4)


ORCH_YAML = """
experiments:
  orch:
    datasets: [digits]
    fractions: [0.2, 0.3]
    augmentations: [none, basic]
    seeds: [0, 1]
    model: {{width: 0.5}}
    train: {{epochs: {epochs}, batch_size: 50, lr: 0.05}}
    imp: {{rounds: 1, rewind_epoch: 1}}
    resources: {{gpu: 0, cpu: 1}}
"""


def bench_orchestrator(epochs: int = 21) -> dict:
    """8 lineages of ~30 s each on a local Ray with 2 slots."""
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "experiments.yaml"), "w") as f:
            f.write(ORCH_YAML.format(epochs=epochs))
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "orchestrator", "run", "-e", "orch", "--num-cpus", "2"],
                           cwd=d, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if r.returncode != 0:
            raise RuntimeError(r.stderr[-2000:])
        ray_up = next((float(l.split("Ray up in ")[1].split("s")[0]) for l in r.stdout.splitlines()
                       if "Ray up in" in l), 0.0)
        import pandas as pd
        df = pd.read_parquet(os.path.join(d, "runs", "orch", "results"))
        compute = float(df["wall_s"].sum())
        slots = 2
        ideal = compute / slots
        tune_s = next((float(l.split("sweep finished in ")[1].split("s")[0]) for l in r.stdout.splitlines()
                       if "sweep finished in" in l), float("nan"))
        return {"orchestrator_overhead_ratio": round((wall - ray_up) / ideal, 3),
                "_orchestrator": {"sweep_wall_s": round(wall, 1), "ray_startup_s": ray_up,
                                  # Ray up -> last trial done: the per-trial scheduling cost alone,
                                  # without the fixed process start-up (imports) and Ray shutdown.
                                  "scheduling_ratio": round((tune_s - ray_up) / ideal, 3),
                                  "trial_compute_s": round(compute, 1), "slots": slots,
                                  "trials": int(df["trial_id"].nunique()),
                                  "mean_trial_s": round(compute / df["trial_id"].nunique(), 1)}}


def bench_augment(n: int = 500) -> dict:
    """Augmentation alone: batched on the device vs torchvision image by image."""
    from workers import data as D
    from workers.data.augment import reference_augment
    info = D.dataset_info("cifar10")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    x = torch.randint(0, 256, (n, 3, 32, 32), generator=torch.Generator().manual_seed(0),
                      dtype=torch.uint8).to(device)
    out = {}
    for name in ("basic", "contrast", "auto", "rand"):
        fast, ref = D.make_augment(name, info), reference_augment(name, info)
        g = torch.Generator(device).manual_seed(0)

        def run_fast():
            fast(x, g)
            _sync(device)

        run_fast()
        f_s = _time(run_fast, 3)
        r_s = _time(lambda: ref(x.cpu(), torch.Generator().manual_seed(0)), 1)
        out[name] = {"batched_images_per_s": round(n / f_s), "torchvision_images_per_s": round(n / r_s)}
    return {"_augment": out}


def bench_reference(width: float, epochs: int = 6, rounds: int = 2, n_train: int = 50000,
                    n_test: int = 10000) -> dict:
    """The same 1% lineage by the engine (run_lineage, defaults) and by the reference recipe."""
    from workers import data as D
    from workers.lineage import run_lineage
    from workers.reference import run_reference
    from workers.spec import DataSpec, ModelSpec, PruneSpec, RunOptions, TrainSpec, TrialSpec
    from workers.store import SweepStore

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    g = torch.Generator().manual_seed(0)
    info = D.dataset_info("cifar10")
    # CIFAR-10-shaped synthetic splits (50,000 / 10,000): only shapes and counts matter for time.
    train = D.Split(torch.randint(0, 256, (n_train, 3, 32, 32), generator=g, dtype=torch.uint8),
                    torch.arange(n_train) % 10)
    test = D.Split(torch.randint(0, 256, (n_test, 3, 32, 32), generator=g, dtype=torch.uint8),
                   torch.arange(n_test) % 10)
    spec = TrialSpec(DataSpec("cifar10", fraction=0.01, augmentation="basic"), model=ModelSpec(width=width),
                     train=TrainSpec(epochs=epochs), prune=PruneSpec(rounds=rounds, rewind_epoch=1))
    with tempfile.TemporaryDirectory() as d:
        # The engine reads datasets through the in-process cache: seed it with
        # the synthetic splits instead of CIFAR files this machine may not have.
        root = os.path.join(d, "data")
        D._CACHE[("cifar10", os.path.abspath(root))] = (train, test)
        try:
            t0 = time.perf_counter()
            rows = run_lineage(spec, SweepStore(os.path.join(d, "runs"), "b").lineage(spec.trial_id),
                               RunOptions(data_root=root, device=str(device)))
            engine_s = time.perf_counter() - t0
        finally:
            D._CACHE.pop(("cifar10", os.path.abspath(root)), None)
        t0 = time.perf_counter()
        ref = run_reference(spec, train, test, info, os.path.join(d, "ref"), device)
        ref_s = time.perf_counter() - t0
    return {"reference_speedup": round(ref_s / engine_s, 3),
            "_reference": {"engine_s": round(engine_s, 1), "reference_s": round(ref_s, 1),
                           "lineage": f"1% of {n_train:,} images, {rounds + 1} rounds, {epochs} epochs, rewind 1, "
                                      f"width {width}, batch 100",
                           "densities": [round(r["density"], 4) for r in rows],
                           "reference_densities": [round(r["density"], 4) for r in ref]}}


def _packed_worker(device: str, share: float, width: float, epochs: int, barrier, results) -> None:
    """One packed trial: a 1% round's epochs on `device`, its GPU memory capped at `share`."""
    from workers import lineage as L
    dev = torch.device(device)
    if dev.type == "cuda" and share < 1:
        torch.cuda.set_per_process_memory_fraction(share)  # what the driver does for packed trials
    spec, prep, model, masks = _setup(500, width, dev)
    trainer = L.Trainer(spec, prep, model, masks)
    trainer.train_epoch(1, 0)  # warm-up outside the timed part (CUDA context, kernels)
    _sync(dev)
    barrier.wait()
    t0 = time.perf_counter()
    for e in range(epochs):
        trainer.train_epoch(1, e)
    _sync(dev)
    results.put((time.perf_counter() - t0, 500 * epochs))


def bench_packed(device: str = "cuda", trials: int = 4, width: float = 1.0, epochs: int = 20) -> dict:
    """Images/s of `trials` small trials sharing one device, each in its own
    process (as Ray runs packed trials), over one such trial alone."""
    import multiprocessing as mp
    ctx = mp.get_context("spawn")  # CUDA cannot be used in forked children

    def throughput(n: int) -> float:
        barrier, results = ctx.Barrier(n), ctx.Queue()
        procs = [ctx.Process(target=_packed_worker, args=(device, 1.0 / n, width, epochs, barrier, results))
                 for _ in range(n)]
        for p in procs:
            p.start()
        done = [results.get(timeout=1800) for _ in procs]
        for p in procs:
            p.join()
        return sum(images for _, images in done) / max(s for s, _ in done)

    alone = throughput(1)
    packed = throughput(trials)
    return {"packed_gpu_speedup": round(packed / alone, 3),
            "_packed": {"trials": trials, "alone_images_per_s": round(alone, 1),
                        "packed_images_per_s": round(packed, 1), "width": width, "epochs": epochs}}


def run_bench(args) -> int:
    width = 1.0 if torch.cuda.is_available() else 0.25
    res = {k: None for k in KEYS}
    res["device"] = device_name()
    if getattr(args, "smoke", False):
        # Same code paths at toy sizes: for checking that the benchmark runs.
        res["_smoke"] = "tiny sizes: these numbers mean nothing"
        steps = [("engine", lambda: bench_engine(0.0625, repeats=1, sizes=(200, 100, 400))),
                 ("plan", lambda: {"plan_10k_s": bench_plan(1000)}),
                 ("query", lambda: {"query_1m_s": bench_query(20000)}),
                 ("augment", lambda: bench_augment(20)),
                 ("reference", lambda: bench_reference(0.0625, epochs=1, rounds=1, n_train=2000, n_test=200))]
    else:
        steps = [("engine", lambda: bench_engine(width)),
                 ("plan", lambda: {"plan_10k_s": bench_plan()}),
                 ("query", lambda: {"query_1m_s": bench_query()}),
                 ("augment", bench_augment),
                 ("reference", lambda: bench_reference(width))]
    if torch.cuda.is_available():
        steps.append(("packed", bench_packed))
    if args.full:
        steps.append(("orchestrator", bench_orchestrator))
    for name, fn in steps:
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
            if k.startswith("_"):
                print(f"  {k[1:]}: {json.dumps(v)}")
    return 0
