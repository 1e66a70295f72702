"""The driver: plan -> check -> lock the sweep -> skip what is done -> hand the rest to Ray Tune.

Tune schedules, pins GPUs (CUDA_VISIBLE_DEVICES per trial) and retries
failed trials; it is *not* the record of what is done. Storage manifests
are: every `run` reads them, skips finished lineages, and starts a fresh
Tune experiment for the rest (orchestrator/tune/), whose trainables
continue each lineage from its last committed round. A driver killed at any
moment therefore costs at most the rounds in flight (or less, with mid-round
checkpoints), and re-running the same command is the whole resume procedure.

Nothing here imports Ray: a user error is found and reported without it.
"""
from __future__ import annotations

import os
import time
import torch

from orchestrator import signals
from orchestrator.grid import units
from orchestrator.request import SweepRequest
from orchestrator.resources import check_resources
from orchestrator.results import Collector
from orchestrator.summary import Summary
from workers import preflight
from workers.evaluations import pending
from workers.lease import SweepLock, log
from workers.store import SweepStore


def run_sweep(request: SweepRequest) -> int:
    """Run (or resume) a sweep. Returns the process exit status."""
    trials, sweep_name, address = request.trials, request.sweep_name, request.address
    sweep = SweepStore(request.storage, sweep_name)
    timings: dict = {}
    if address is None:
        cpus = request.num_cpus if request.num_cpus is not None else os.cpu_count() or 1
        gpus = request.num_gpus if request.num_gpus is not None else torch.cuda.device_count()
        # Grouped from every trial of the experiment, finished or not, and the
        # GPUs: the same command on the same cluster size fuses the same lineages.
        plan = units(trials, gpus)
        check_resources(plan, [{"CPU": cpus, "GPU": gpus}], "the local Ray")
        preflight.check([(t.spec, t.options) for t in trials])

    with SweepLock(sweep):
        signals.graceful()  # from here a stop must let what runs commit or drop cleanly
        t_start = time.time()
        if request.verify:
            from orchestrator.verify import redo_corrupt
            redo_corrupt(sweep)
        # One small pointer per lineage, read concurrently (workers/store.py), not every
        # manifest of the sweep one request at a time.
        pointers = sweep.pointers([t.trial_id for t in trials])
        prefixes = {tid: p["prefix"] for tid, p in pointers.items()}
        unfinished, done_rounds = set(), 0
        for t in trials:
            k = prefixes[t.trial_id]
            done_rounds += min(k, t.spec.num_rounds)
            if k < t.spec.num_rounds or pending(t.spec, sweep.lineage(t.trial_id), t.options):
                unfinished.add(t.trial_id)
        if address is not None and unfinished:
            # A cluster's GPUs are known once connected; connect only when there is work.
            from orchestrator.tune.ray_start import connect
            t0 = time.time()
            gpus = connect(address)
            timings["ray_start_s"] = round(time.time() - t0, 3)
            plan = units(trials, gpus)
        elif address is not None:
            plan = units(trials)
        group_of = {t.trial_id: u.unit_id for u in plan if len(u.trials) > 1 for t in u.trials}
        sweep.write_json(sweep.PLAN, {
            "sweep": sweep_name, "experiment": request.experiment,
            "trials": {t.trial_id: {"rounds": t.spec.num_rounds, **t.row(), "fused_group": group_of.get(t.trial_id)}
                       for t in trials}})
        collector = Collector(sweep)
        wall = (0.0, 0)
        if request.verify:
            collector.rebuild()  # a scrub read every file anyway: derive the whole table again
        else:
            # The table checked against the pointers just read; only trials that disagree
            # (a round whose row a kill lost, rows from before schema 5) are derived again.
            synced = collector.sync([t.trial_id for t in trials], pointers)
            wall = synced["wall"]
            if synced["derived"]:
                log(f"results table: {len(synced['derived'])} trial(s) derived again from their manifests")
        todo = [u for u in plan if any(t.trial_id in unfinished for t in u.trials)]
        total_rounds = sum(t.spec.num_rounds for t in trials)
        log(f"sweep {sweep_name!r} ({request.experiment}) at {sweep.fs.to_uri(sweep.dir)}: {len(trials)} trials, "
            f"{len(trials) - len(unfinished)} already done; rounds committed {done_rounds}/{total_rounds}"
            + (f"; {len(group_of)} lineages fused in {len(set(group_of.values()))} groups" if group_of else ""))
        summary = Summary(sweep, prefixes, wall)
        summary.write("running" if todo else "ended")
        if not todo:
            log("nothing to do")
            return 0
        timings["start_s"] = round(time.time() - t_start, 3)  # reading what is done, checking the table
        lineages = None
        if request.trackers:
            from orchestrator.trackers import Lineages
            lineages = Lineages(list(request.trackers), sweep, {t.trial_id: t.spec.to_dict() for t in trials})
            lineages.setup()
        started = time.time()
        from orchestrator.tune import run as tune_run  # Ray is imported only when there is work for it
        timings["import_s"] = round(time.time() - started, 3)
        rc = tune_run.run(request, sweep, todo, (done_rounds, total_rounds), timings,
                          tune_run.Handover(collector=collector, prefixes=prefixes, summary=summary,
                                            trackers=lineages))
        # What this run cost and where the time went (bench/orchestrator.py reads it).
        sweep.write_json(sweep.RUN, {"started": started, "finished": time.time(), "rc": rc,
                                     "trials": len(todo), **timings, "fuse_checks": sweep.fuse_checks()})
        return rc
