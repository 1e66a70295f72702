"""`lth-sweep bench --restart-scale N [N ...] [--rounds R] [--latency-ms MS]`: what a
restart, a stop, `status` and `query --compare` cost on a finished sweep of N
lineages x R rounds, on S3 as a cluster sees it: requests on the wire and seconds.

The sweep is built through the project's own commit code: one real lineage of
R rounds (digits, 1% of the training split, width 1/32, one epoch a round) is trained,
and its round files and metrics are committed for each of the N grid points of
the experiment (N/3 cells by training fraction, 3 seeds each) (LineageStore.commit_round: real manifests, pointers, row files
folded into real shards by the Collector) into a local directory, which a
moto S3 server on 127.0.0.1 then holds from its start (bench/moto.py's
preload: the same bytes, without 10^5 PUTs through moto's HTTP front). Every measured command then runs as a user runs it (`lth-sweep ...`
in its own process) against a proxy on loopback that adds `latency_ms` to every
request (20 ms: S3 from a cluster) and counts requests by HTTP method
(bench/s3proxy.py). Per N:

    restart_s, restart_requests       `run` of the finished sweep: nothing to do
    restart_requests_per_lineage      restart_requests / N
    restart_1pct_s, ..._requests      `run` after the last round of 1% of the lineages was
                                      un-committed: it trains those rounds (the wall includes
                                      Ray's start and their training; restart_1pct_start_s is
                                      the driver's own part before Ray: RUN.json start_s)
    run_requests_per_round            requests of that run beyond the restart's, per round it
                                      committed (Tune's own state included)
    stop_s, stop_requests, stop_rc    SIGTERM to exit of a `run` with 8 lineages in flight
                                      (8 CPU slots; the last R-1 rounds of 8 lineages un-committed),
                                      sent once the first of them committed a round
    status_s, status_requests         `status --json`
    query_s, query_requests           `query --compare --format json`
    build_s                           building the sweep (not a figure of the tool)

Walls are whole processes (interpreter and imports included, about 2-3 s here).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

# N lineages as N/3 grid cells of 3 seeds (cells by training fraction): a study's shape.
SEEDS = 3
YAML = """
experiments:
  restart:
    datasets: [digits]
    fractions: [{fractions}]
    augmentations: [none]
    seeds: [{seeds}]
    model: {{width: 0.03125}}
    train: {{epochs: 1, batch_size: 10, lr: 0.05}}
    imp: {{rounds: {imp_rounds}, rewind_epoch: 0}}
    eval: {{val_per_class: 0}}
    resources: {{gpu: 0, cpu: 1}}
"""
BUCKET = "restart"
URI = f"s3://{BUCKET}/runs"
IN_FLIGHT = 8


def experiment_yaml(n: int, rounds: int) -> str:
    """`n` lineages (rounded up to a multiple of SEEDS) of `rounds` rounds."""
    cells = -(-n // SEEDS)
    fractions = ", ".join(f"{0.01 + 0.0001 * i:.4f}" for i in range(cells))
    return YAML.format(fractions=fractions, seeds=", ".join(str(i) for i in range(SEEDS)), imp_rounds=rounds - 1)


def _trials(d: str):
    from orchestrator.config import load_config
    from orchestrator.grid import expand
    return expand(load_config(os.path.join(d, "experiments.yaml"))["experiments"]["restart"])


def build(d: str, rounds: int, log=print, threads: int = 2) -> float:
    """The finished sweep in the local directory `local(d)` (the S3 server then
    serves it from its start: bench/moto.py's preload); seconds."""
    from orchestrator.results import Collector
    from workers.lineage import run_lineage
    from workers.spec import RunOptions
    from workers.store import SweepStore
    t0 = time.perf_counter()
    trials = _trials(d)
    scratch = SweepStore(os.path.join(d, "scratch"), "one")
    first = trials[0].spec
    run_lineage(first, scratch.lineage(first.trial_id), RunOptions(device="cpu"))
    lin0 = scratch.lineage(first.trial_id)
    made = []
    for k in range(rounds):
        man = lin0.read_manifest(k)
        made.append((man["metrics"], lin0.load_round(k, list(man["files"]))))
    sweep = SweepStore(local(d), "restart")

    def commit(t) -> None:
        spec = t.spec.to_dict()
        lin = sweep.lineage(t.trial_id)
        lin.write_spec(spec)
        for k, (metrics, files) in enumerate(made):
            lin.commit_round(k, files, metrics, spec)
    with ThreadPoolExecutor(threads) as pool:
        for i, _ in enumerate(pool.map(commit, trials)):
            if (i + 1) % 500 == 0:
                log(f"restart-scale: {i + 1}/{len(trials)} lineages committed")
    Collector(sweep).sync([t.trial_id for t in trials])
    return time.perf_counter() - t0


def _cli(d: str, env: dict, *args, timeout: float = 3600) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "orchestrator", *args, "-e", "restart", "--storage", URI], cwd=d,
                       env=env, capture_output=True, text=True, timeout=timeout)
    return r, time.perf_counter() - t0


def _measured(proxy, d, env, *args) -> tuple[subprocess.CompletedProcess, float, int]:
    before = sum(proxy.counts().values())
    r, wall = _cli(d, env, *args)
    if r.returncode not in (0, 130):
        raise RuntimeError(f"restart-scale: lth-sweep {' '.join(args)} failed: {(r.stdout + r.stderr)[-2000:]}")
    return r, wall, sum(proxy.counts().values()) - before


def _stop(proxy, d: str, env: dict, trials, rounds: int) -> dict:
    """A run with IN_FLIGHT lineages to finish, stopped by SIGTERM once one of them commits."""
    from workers.store import SweepStore
    sweep = SweepStore(URI, "restart")
    chosen = [t.trial_id for t in trials[-IN_FLIGHT:]]
    for tid in chosen:
        sweep.lineage(tid).invalidate_from(1)
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "run", "-e", "restart", "--storage", URI,
                             "--num-cpus", str(IN_FLIGHT), "--plain"], cwd=d, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 1800
    while proc.poll() is None and time.time() < deadline:
        if any(sweep.lineage(tid).read_manifest(1) is not None for tid in chosen):
            break
        time.sleep(0.2)
    before, t0 = sum(proxy.counts().values()), time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=600)[0]
    return {"stop_s": round(time.perf_counter() - t0, 2), "stop_requests": sum(proxy.counts().values()) - before,
            "stop_rc": proc.returncode, "stop_tail": out.strip().splitlines()[-1:] if out.strip() else []}


def local(d: str) -> str:
    """Where `build` writes the sweep: the objects of `URI`, as files."""
    return os.path.join(d, "built")


@contextlib.contextmanager
def _s3(d: str, latency_ms: float):
    """A moto server holding what `build` wrote, a counting proxy before it, and the environment of each."""
    from .moto import moto_server
    from .s3proxy import FaultProxy
    preload = (local(d), URI.split("/", 3)[3]) if os.path.isdir(local(d)) else None
    with moto_server(os.path.join(d, "moto.log"), BUCKET, preload=preload) as server:
        port = int(server["endpoint"].rsplit(":", 1)[1])
        proxy = FaultProxy(port, latency_s=latency_ms / 1000, keep_log=False)
        direct = {**os.environ, **server["env"]}
        through = {**direct, "AWS_ENDPOINT_URL": proxy.endpoint, "LTH_DEVICE": "cpu", "RAY_AIR_NEW_OUTPUT": "0"}
        saved = dict(os.environ)
        os.environ.update(server["env"])  # this process builds the sweep on the server itself
        try:
            yield proxy, through
        finally:
            os.environ.clear()
            os.environ.update(saved)
            proxy.close()


def bench_restart_one(n: int, rounds: int = 17, latency_ms: float = 20.0, log=print) -> dict:
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "experiments.yaml"), "w") as f:
            f.write(experiment_yaml(n, rounds))
        trials = _trials(d)
        build_s = build(d, rounds, log=log)
        log(f"restart-scale {n}x{rounds}: built in {build_s:.0f}s")
        with _s3(d, latency_ms) as (proxy, env):
            out = {"lineages": n, "rounds": rounds, "latency_ms": latency_ms, "build_s": round(build_s, 1)}
            return _measure(out, d, proxy, env, trials, log)


def _measure(out: dict, d: str, proxy, env: dict, trials, log) -> dict:
    n, rounds = out["lineages"], out["rounds"]
    r, wall, req = _measured(proxy, d, env, "run", "--num-cpus", "2", "--plain")
    assert "nothing to do" in r.stdout + r.stderr, (r.stdout + r.stderr)[-2000:]
    out.update(restart_s=round(wall, 2), restart_requests=req, restart_requests_per_lineage=round(req / n, 3))
    _, wall, req = _measured(proxy, d, env, "status", "--json")
    out.update(status_s=round(wall, 2), status_requests=req)
    _, wall, req = _measured(proxy, d, env, "query", "--compare", "--format", "json")
    out.update(query_s=round(wall, 2), query_requests=req)
    from workers.store import SweepStore
    sweep = SweepStore(URI, "restart")
    few = [t.trial_id for t in trials[:max(1, math.ceil(n / 100))]]
    for tid in few:
        sweep.lineage(tid).invalidate_from(rounds - 1)
    _, wall, req = _measured(proxy, d, env, "run", "--num-cpus", "2", "--plain")
    run = sweep.read_json(sweep.RUN) or {}
    out.update(restart_1pct_s=round(wall, 2), restart_1pct_requests=req,
               restart_1pct_start_s=run.get("start_s"),
               run_requests_per_round=round(max(0, req - out["restart_requests"]) / len(few), 1))
    out.update(_stop(proxy, d, env, trials, rounds))
    log(f"restart-scale {n}x{rounds}: {json.dumps(out)}")
    return out


def bench_restart_scale(ns: list[int], rounds: int = 17, latency_ms: float = 20.0, log=print) -> dict:
    rows = [bench_restart_one(n, rounds, latency_ms, log) for n in ns]
    return {"restart_scale": rows}
