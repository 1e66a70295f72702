"""One Tune run over the units the driver hands over: the Tuner, its
searcher and callback, signals, and what the run's exit status is.

    rc = run(request, sweep, todo, rounds=(done, total), timings=timings, handover=Handover(trackers=lineages))
"""
from __future__ import annotations

import datetime as _dt
import logging
import os
import signal
import time
from dataclasses import asdict, dataclass
from typing import Any, Optional

# Tune's own progress tables would interleave with ours; one line per
# committed round is printed by ResultsCallback instead.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
import ray  # noqa: E402
from ray import tune  # noqa: E402

from orchestrator import signals  # noqa: E402
from orchestrator.grid import Unit  # noqa: E402
from orchestrator.request import SweepRequest  # noqa: E402
from orchestrator.tune.callback import ResultsCallback  # noqa: E402
from orchestrator.tune.ray_start import quiet_ray_init, wait_for_nodes  # noqa: E402
from orchestrator.tune.searcher import UnitSearcher, dependencies  # noqa: E402
from orchestrator.tune.counted import counted  # noqa: E402
from orchestrator.tune.trial import unit_trainable  # noqa: E402
from workers.lease import log  # noqa: E402
from workers.store import FS, SweepStore  # noqa: E402


def unit_configs(sweep: SweepStore, todo: list[Unit]) -> list[dict]:
    """Each unit as the plain data a trial receives (orchestrator/tune/trainable.py)."""
    base = {"storage": sweep.fs.uri, "sweep": sweep.sweep}
    return [{**base, "unit_id": u.unit_id, "members": {t.trial_id: t.spec.to_dict() for t in u.trials},
             "options": asdict(u.trials[0].options), **u.resources} for u in todo]


def start_ray(request: SweepRequest, todo: list[Unit]) -> list[str]:
    """Join the cluster (waiting for nodes that fit) or start a local Ray; returns Ray's held-back notices."""
    if request.address:
        notices = [] if ray.is_initialized() else quiet_ray_init(address=request.address, log_to_driver=False,
                                                                 logging_level="WARNING")
        wait_for_nodes(todo, f"the cluster at {request.address}", request.wait_s)
        return notices
    # address="local": always a fresh Ray of our own, never a cluster that
    # happens to run on this machine (plain ray.init() would join it). The
    # dashboard is not needed and would listen on a port; if someone turns
    # it on it must stay on loopback.
    return quiet_ray_init(address="local", num_cpus=request.num_cpus, num_gpus=request.num_gpus,
                          include_dashboard=False, dashboard_host="127.0.0.1", log_to_driver=False,
                          logging_level="WARNING")


@dataclass(frozen=True)
class Handover:
    """What the driver read and set up before Tune, for run(): the results
    collector, each lineage's committed rounds at the start, the sweep's
    summary (orchestrator/summary.py) and the experiment trackers. Each may be
    None: run() then makes its own (prefixes are read from storage)."""
    collector: Any = None
    prefixes: Optional[dict] = None
    summary: Any = None
    trackers: Any = None


def run(request: SweepRequest, sweep: SweepStore, todo: list[Unit], rounds: tuple[int, int],
        timings: Optional[dict] = None, handover: Handover = Handover()) -> int:
    """Run the units `todo` as Tune trials; `rounds`: (committed, total) over the
    sweep; fills `timings` (ray_start_s, tune_s, ray_stop_s, compact_s, and what
    the driver process did to storage while Tune ran: tune_storage {op: count,
    bytes_written, bytes_read}, rounds_committed); returns the exit status."""
    collector, prefixes, summary, trackers = (handover.collector, handover.prefixes, handover.summary,
                                              handover.trackers)
    timings = {} if timings is None else timings
    done_rounds, total_rounds = rounds
    t0 = time.monotonic()
    notices = start_ray(request, todo)
    timings["ray_start_s"] = round(timings.get("ray_start_s", 0) + time.monotonic() - t0, 3)
    res = ray.cluster_resources()
    log(f"Ray up in {timings['ray_start_s']:.1f}s: {res.get('CPU', 0):g} CPU, {res.get('GPU', 0):g} GPU"
        + (f" ({len(notices)} notice(s) from Ray held back: {notices[0][:80]}...)" if notices else ""))
    t_tune, storage_before = time.monotonic(), FS.counters()

    callback = ResultsCallback(sweep, collector, done_rounds, total_rounds, plain=request.plain, trackers=trackers,
                               summary=summary)
    configs = unit_configs(sweep, todo)
    searcher = UnitSearcher(sweep, configs, dependencies(todo))
    interrupted, errors = False, []
    # SIGTERM (scheduler preemption, `kill`) takes Ctrl-C's graceful path.
    signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    try:
        callback.panel.__enter__()
        grid = _tuner(request, sweep, searcher, callback).fit()
        errors += [r for r in grid if r.error is not None]
    except KeyboardInterrupt:
        interrupted = True
    finally:
        # The trials have stopped and every round they reported is committed; a
        # SIGTERM from now on (a scheduler, `kill`, a test) must not turn the
        # last seconds of teardown (results table, Ray shutdown) into exit 15
        # from Ray's own handler.
        signal.signal(signal.SIGTERM, _late_sigterm)
        callback.close()
    timings["tune_s"] = round(time.monotonic() - t_tune, 3)
    timings["tune_storage"] = FS.counters(since=storage_before)
    timings["rounds_committed"] = callback.rounds_committed
    # Now rather than at exit: Ray's exit hook first sleeps 0.5 s for log
    # lines this driver does not forward (log_to_driver=False). Ray's shutdown
    # resets SIGTERM to the default in C (orchestrator/signals.py): ignored through it.
    t_stop = time.monotonic()
    with signals.sigterm_ignored():
        ray.shutdown()
    signal.signal(signal.SIGTERM, _late_sigterm)
    timings["ray_stop_s"] = round(time.monotonic() - t_stop, 3)
    # Tune answers a SIGINT (and so our SIGTERM) inside fit() with its own
    # handler: it stops the trials and returns as if done. A lineage short of its
    # rounds with no trial error was stopped: what it had at the start plus the
    # rounds committed since (the callback saw each), not a scan of storage.
    if prefixes is None:
        prefixes = {tid: p["prefix"] for tid, p in sweep.pointers([t.trial_id for u in todo for t in u.trials]).items()}
    have = callback.collector.committed
    stopped = not errors and not searcher.dropped and any(
        max(prefixes.get(t.trial_id, 0), have.get(t.trial_id, 0)) < t.spec.num_rounds for u in todo for t in u.trials)
    if callback.interrupted or interrupted or stopped:
        # A stop leaves the row files pending: they are valid rows, and the next
        # start folds them in, so a stop's work is bounded by the rounds in flight
        # (and a compaction already under way), not by the sweep's size.
        callback.collector.wait_compaction(timeout=30)
    else:
        # Fold the row files left since the run's last compaction into the shards.
        t_compact = time.monotonic()
        callback.collector.wait_compaction()
        callback.collector.compact()
        timings["compact_s"] = round(time.monotonic() - t_compact, 3)
    if summary is not None:
        summary.running.clear()
        summary.write("ended")
    if callback.interrupted or interrupted or stopped:
        log("stopped; committed rounds are safe. Re-run the same command to resume.")
        return 130
    if errors or searcher.dropped:
        causes = sorted({_cause(r.error) for r in errors})
        log(f"{len(errors)} trial(s) failed after {request.max_failures} retries, {len(searcher.dropped)} not "
            f"started because what they are built from failed ({'; '.join(causes)[:400]}); see "
            f"trials/<id>/FAILED.json under {sweep.fs.to_uri(sweep.dir)}. Re-running retries them.")
        return 1
    log(f"sweep finished in {time.monotonic() - t0:.0f}s; rounds committed {callback.done_rounds}/{total_rounds}")
    return 0


def _tuner(request: SweepRequest, sweep: SweepStore, searcher: UnitSearcher, callback: ResultsCallback) -> tune.Tuner:
    # Tune keeps one trial pending for a custom searcher unless told otherwise, and
    # then starts one trial per scheduling step: too slow to fill a cluster. As
    # many pending as its own generator allows (200), or as there are units.
    os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", str(max(1, min(200, len(searcher.configs)))))
    # Tune's own per-trial JSON/CSV/TensorBoard files are a second copy of what the
    # lineage store commits (4 objects and a rewrite per result per trial, on the
    # driver's critical path); trackers the user asks for are explicit (--tracker).
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # Tune snapshots its whole experiment state (every trial, the searcher) to the
    # sweep's storage as often as every 10 s: an object that grows with the sweep,
    # rewritten all run long. Nothing resumes from it (resume reads the manifests),
    # so once every 15 minutes, and at the end, is plenty (orchestrator/tune/counted.py
    # counts what it still costs).
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "900")
    # ...so Tune's ResultGrid finds no metrics files at the end and says so per
    # trial; the rows are ours (orchestrator/results), the warning is noise.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    trainable = tune.with_resources(unit_trainable,
                                    lambda cfg: {"cpu": cfg["unit"]["cpu"], "gpu": cfg["unit"]["gpu"]})
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher, num_samples=-1,
            max_concurrent_trials=request.max_concurrent, reuse_actors=True,
            trial_name_creator=lambda tr: tr.config["unit"]["unit_id"],
            trial_dirname_creator=lambda tr: tr.config["unit"]["unit_id"]),
        run_config=tune.RunConfig(
            name=f"run-{stamp}", storage_path=sweep.tune_dir, storage_filesystem=counted(sweep.fs.fs),
            failure_config=tune.FailureConfig(max_failures=request.max_failures),
            callbacks=[callback], verbose=0))


def _late_sigterm(*_) -> None:
    log("SIGTERM: the trials have stopped already; exiting once the results table is written")


def _cause(err: BaseException) -> str:
    """The innermost message of a trial's error (Tune wraps the worker's)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1][:200] if lines else type(err).__name__
