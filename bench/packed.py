"""packed_gpu_speedup: 4 small trials sharing one GPU, each in its own process
with a 1/4 memory cap (as Ray runs packed trials), vs one trial alone. CUDA only."""
from __future__ import annotations

import time
from typing import Optional

import torch

from workers import train

from .common import sync
from .engine import setup


def _packed_worker(device: str, share: float, width: float, epochs: int, barrier, results,
                   case: Optional[str] = None) -> None:
    """One packed trial: a 1% round's epochs on `device`, its GPU memory capped
    at `share` (`case`: bench/fused.py's member of that case, the same work
    as a fused member; else the engine benchmark's round)."""
    dev = torch.device(device)
    if dev.type == "cuda" and share < 1:
        torch.cuda.set_per_process_memory_fraction(share)  # what the driver does for packed trials
    if case is not None:
        from .members import make_members
        trainer = make_members(case, 1, width, dev, epochs + 1)[0]
    else:
        spec, prep, model, masks = setup(500, width, dev)
        trainer = train.Trainer(spec, prep, model, masks)
    trainer.train_epoch(1, 0)  # warm-up outside the timed part (CUDA context, kernels)
    sync(dev)
    barrier.wait()
    t0 = time.perf_counter()
    for e in range(epochs):
        trainer.train_epoch(1, e)
    sync(dev)
    results.put((time.perf_counter() - t0, 500 * epochs))


def bench_packed(device: str = "cuda", trials: int = 4, width: float = 1.0, epochs: int = 20,
                 case: Optional[str] = None) -> dict:
    """Images/s of `trials` small trials sharing one device, each in its own
    process (as Ray runs packed trials), over one such trial alone."""
    import multiprocessing as mp
    ctx = mp.get_context("spawn")  # CUDA cannot be used in forked children

    def throughput(n: int) -> float:
        barrier, results = ctx.Barrier(n), ctx.Queue()
        procs = [ctx.Process(target=_packed_worker, args=(device, 1.0 / n, width, epochs, barrier, results, case))
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
