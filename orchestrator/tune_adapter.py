"""The Ray Tune adapter: one Tune trial per IMP lineage. The only module that imports Ray Tune.

    tune_run(sweep, collector, todo, ...)   # what orchestrator/driver.py hands over

One Tune trial per unit (orchestrator/grid.py `units`): a lineage, or a group of
same-shape lineages fused into one program (workers/group.py). The trainable is
thin: Tune's config -> frozen specs -> run_group (a lineage is a group of one; then each
lineage's evaluations). The searcher (`UnitSearcher`) releases a unit as soon as the
lineages it is built from have finished. The callback keeps the results table
current and prints one line per committed round.
"""
from __future__ import annotations

import datetime as _dt
import os
import signal
import socket
import threading
import time
from collections import deque
from dataclasses import asdict

# Tune's own progress tables would interleave with ours; one line per
# committed round is printed by ResultsCallback instead.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
import ray  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune.search import Searcher  # noqa: E402

from orchestrator.driver import DriverError, check_resources  # noqa: E402
from orchestrator.formatting import number  # noqa: E402
from orchestrator.progress import View  # noqa: E402
from orchestrator.trackers import METRICS as TRACKED_METRICS  # noqa: E402
from orchestrator.results import Collector  # noqa: E402
from orchestrator.grid import Unit  # noqa: E402
from workers.evaluations import run_evaluations  # noqa: E402
from workers.lease import log as _log  # noqa: E402
from workers.group import run_group  # noqa: E402
from workers.methods import get_method, parent_spec  # noqa: E402
from workers.spec import RunOptions, TrialSpec, num_rounds  # noqa: E402
from workers.store import SweepStore  # noqa: E402


# --- what runs inside a Tune trial -----------------------------------------

# The keys of a committed round's metrics sent through Tune: what ResultsCallback shows
# and what the trackers plot.
REPORTED = ("round", "gpu_ids", *TRACKED_METRICS)


def unit_trainable(config: dict) -> None:
    """Tune function trainable: config -> frozen specs -> pure lineage runner
    (one lineage, or a fused group of them), then each lineage's evaluations."""
    unit = config["unit"]
    sweep = SweepStore(unit["storage"], unit["sweep"])
    members = [(TrialSpec.from_dict(m), sweep.lineage(tid)) for tid, m in unit["members"].items()]
    gpu = unit.get("gpu", 0)
    if 0 < gpu < 1:
        # Packed trials: cap this process's share of the GPU so neighbours
        # on the same device cannot starve it (or be starved).
        import torch
        if torch.cuda.is_available():
            torch.cuda.set_per_process_memory_fraction(gpu)
    where = {"node": node_label(), "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}
    for _, store in members:
        store.clear_marker(store.FAILED)

    def report(metrics: dict) -> None:
        # Only what the driver shows and the trackers plot: Tune keeps every
        # trial's last result (and statistics of each of its keys) in the
        # driver's memory, 10,000 times over in a big sweep; the round's full
        # record is in its manifest.
        row = {k: metrics[k] for k in REPORTED if k in metrics}
        row["lth_trial_id"] = metrics["trial_id"]  # Tune owns the `trial_id` key
        tune.report(row)

    def progress(info: dict) -> None:
        tune.report({"lth_trial_id": info["trial_id"], "progress": True, **{k: info[k] for k in
                                                                              ("round", "epoch", "epochs")}})

    opts = RunOptions(**unit["options"])
    # One lineage is a group of one (workers/group.py): it raises its own error.
    run_group(members, opts, where, on_round=report, on_epoch=progress)
    for spec, store in members:
        if run_evaluations(spec, store, opts):
            tune.report({"lth_trial_id": spec.trial_id, "evaluations": True})


def node_label() -> str:
    """Host name plus Ray node id: distinct even for several nodes on one host."""
    try:
        nid = ray.get_runtime_context().get_node_id()
        return f"{socket.gethostname()}:{nid[:8]}"
    except Exception:
        return socket.gethostname()


# --- the driver ---------------------------------------------------------------

def wait_for_nodes(trials: list[Unit], where: str, wait_s: float) -> None:
    """On a cluster, nodes may still be joining or wait for the autoscaler:
    ask it for the largest bundle and wait up to `wait_s` for a node that
    fits every trial, then fail as check_resources does."""
    deadline = time.monotonic() + wait_s
    asked = False
    while True:
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        try:
            return check_resources(trials, nodes, where)
        except DriverError:
            if time.monotonic() >= deadline:
                raise
        if not asked:
            asked = True
            big = max(trials, key=lambda t: (t.resources["gpu"], t.resources["cpu"])).resources
            try:  # a no-op on clusters without an autoscaler
                from ray.autoscaler.sdk import request_resources
                request_resources(bundles=[{"CPU": big["cpu"], "GPU": big["gpu"]}])
            except Exception:
                pass
            _log(f"no node of {where} fits cpu={number(big['cpu'])} gpu={number(big['gpu'])} yet; waiting up to "
                 f"{wait_s:.0f}s for one to join (--wait-for-nodes)")
        time.sleep(2.0)


class UnitSearcher(Searcher):
    """Hands Tune the sweep's units (a lineage, or a fused group), each as soon
    as the lineages it is built from (Method.parent) have finished: one Tune
    run, no barrier between phases, no polling of storage. A unit whose parent
    failed is not started: its lineages get a FAILED marker naming the parent.
    Each call costs O(1) in the number of units (queues, not scans), so a
    10,000-trial sweep pays no quadratic bookkeeping."""

    def __init__(self, sweep: SweepStore, configs: list[dict], deps: dict[int, set[int]]):
        super().__init__(metric=None, mode=None)
        self.sweep, self.configs = sweep, configs
        self.waiting = {i: set(d) for i, d in deps.items() if d}  # unit -> parents not finished yet
        self.children: dict[int, list[int]] = {}
        for i, parents in sorted(self.waiting.items()):
            for p in parents:
                self.children.setdefault(p, []).append(i)
        self.ready = deque(i for i in range(len(configs)) if i not in self.waiting)
        self.released: deque = deque()  # parents just finished: their devices were waiting for these
        self.dropped: list[int] = []
        self.started: dict[str, int] = {}

    def suggest(self, trial_id: str):
        queue = self.released or self.ready
        if not queue:
            return Searcher.FINISHED if not self.waiting else None
        i = queue.popleft()
        self.started[trial_id] = i
        return {"unit": self.configs[i]}

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save: a new run derives what is left from storage."""

    def restore(self, checkpoint_path: str) -> None:
        pass

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        i = self.started.get(trial_id)
        if i is None:
            return
        if error:
            self._drop_dependents(i)
            return
        for c in self.children.get(i, ()):
            parents = self.waiting.get(c)
            if parents is None:
                continue  # dropped already: another parent failed
            parents.discard(i)
            if not parents:
                del self.waiting[c]
                self.released.append(c)
                _log(f"{self.configs[c]['unit_id']} starts: what it is built from has finished")

    def _drop_dependents(self, failed: int) -> None:
        stack = [failed]
        while stack:
            p = stack.pop()
            for c in self.children.get(p, ()):
                if self.waiting.pop(c, None) is not None:
                    self.dropped.append(c)
                    self._mark_dependent_failed(c, p)
                    stack.append(c)

    def _mark_dependent_failed(self, i: int, parent: int) -> None:
        pid = self.configs[parent]["unit_id"]
        marker = self.sweep.lineage(pid).read_marker("FAILED.json") if pid in self.configs[parent]["members"] else None
        cause = (marker or {}).get("error", "see its FAILED.json")
        for tid in self.configs[i]["members"]:
            try:
                self.sweep.lineage(tid).mark_failed(f"not started: built from lineage {pid}, which failed ({cause})",
                                                    parent=pid)
            except OSError:
                pass
        _log(f"{self.configs[i]['unit_id']} FAILED: built from lineage {pid}, which failed ({cause})")


def _dependencies(todo: list[Unit]) -> dict[int, set[int]]:
    """{unit index: indices of the units holding the lineages its lineages are built from}."""
    where = {t.trial_id: i for i, u in enumerate(todo) for t in u.trials}
    deps: dict[int, set[int]] = {}
    for i, u in enumerate(todo):
        for t in u.trials:
            if get_method(t.spec.prune.method).parent:
                pid = parent_spec(t.spec).trial_id
                if pid in where and where[pid] != i:
                    deps.setdefault(i, set()).add(where[pid])
    return deps


def _quiet_ray_init(**kw) -> list[str]:
    """ray.init with Ray's own start-up notices held back; returns them (the
    driver prints one line of its own instead of Ray's multi-line warnings)."""
    import logging
    held: list[str] = []

    class Hold(logging.Handler):
        def emit(self, record):
            held.append(record.getMessage().splitlines()[0])

    ray_log = logging.getLogger("ray")
    hold, old = Hold(level=logging.WARNING), ray_log.propagate
    saved = ray_log.handlers[:]
    ray_log.handlers, ray_log.propagate = [hold], False
    # ray.init replaces the SIGTERM handler with one that exits 15 on the spot;
    # the caller's (the CLI's: stop as gracefully as Ctrl-C) stays in charge.
    main = threading.current_thread() is threading.main_thread()
    term = signal.getsignal(signal.SIGTERM) if main else None
    try:
        ray.init(**kw)
    except SystemExit as e:
        if e.code == signal.SIGTERM and callable(term):
            term(signal.SIGTERM, None)  # default_int_handler: KeyboardInterrupt, the graceful path
        raise
    finally:
        ray_log.handlers, ray_log.propagate = saved, old
        if term is not None:
            signal.signal(signal.SIGTERM, term)
    return held


def connect(address: str) -> float:
    """Join the cluster at `address` (quietly); returns its GPU count now."""
    _quiet_ray_init(address=address, log_to_driver=False, logging_level="WARNING")
    return float(ray.cluster_resources().get("GPU", 0))


def tune_run(sweep, collector, todo: list[Unit], experiment, address, num_cpus, num_gpus, max_concurrent,
             max_failures, done_rounds, total_rounds, wait_s=0.0, timings=None, plain=None,
             trackers=()) -> int:
    """Run the units `todo` as Tune trials; fills `timings` (ray_start_s, tune_s, ray_stop_s);
    returns the exit status."""
    timings = {} if timings is None else timings
    t0 = time.monotonic()
    if address:
        notices = [] if ray.is_initialized() else _quiet_ray_init(address=address, log_to_driver=False,
                                                                  logging_level="WARNING")
        wait_for_nodes(todo, f"the cluster at {address}", wait_s)
    else:
        # The dashboard is not needed and would listen on a port; if someone
        # turns it on it must stay on loopback.
        # address="local": always a fresh Ray of our own, never a cluster that
        # happens to run on this machine (plain ray.init() would join it).
        notices = _quiet_ray_init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
                                  dashboard_host="127.0.0.1", log_to_driver=False, logging_level="WARNING")
    timings["ray_start_s"] = round(timings.get("ray_start_s", 0) + time.monotonic() - t0, 3)
    res = ray.cluster_resources()
    _log(f"Ray up in {timings['ray_start_s']:.1f}s: {res.get('CPU', 0):g} CPU, {res.get('GPU', 0):g} GPU"
         + (f" ({len(notices)} notice(s) from Ray held back: {notices[0][:80]}...)" if notices else ""))
    t_tune = time.monotonic()

    state = ResultsCallback(sweep, collector, done_rounds, total_rounds, plain=plain, trackers=trackers)
    base = {"storage": sweep.fs.uri, "sweep": sweep.sweep}
    configs = [{**base, "unit_id": u.unit_id, "members": {t.trial_id: t.spec.to_dict() for t in u.trials},
                "options": asdict(u.trials[0].options), **u.resources} for u in todo]
    searcher = UnitSearcher(sweep, configs, _dependencies(todo))
    # Tune keeps one trial pending for a custom searcher unless told otherwise, and
    # then starts one trial per scheduling step: too slow to fill a cluster. As
    # many pending as its own generator allows (200), or as there are units.
    os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", str(max(1, min(200, len(configs)))))
    # Tune's own per-trial JSON/CSV/TensorBoard files are a second copy of what the
    # lineage store commits (4 objects and a rewrite per result per trial, on the
    # driver's critical path); trackers the user asks for are explicit (--tracker).
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # ...so Tune's ResultGrid finds no metrics files at the end and says so per
    # trial; the rows are ours (orchestrator/results.py), the warning is noise.
    import logging
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    trainable = tune.with_resources(unit_trainable,
                                    lambda cfg: {"cpu": cfg["unit"]["cpu"], "gpu": cfg["unit"]["gpu"]})
    interrupted, errors = False, []
    # SIGTERM (scheduler preemption, `kill`) takes Ctrl-C's graceful path.
    signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    try:
        state.view.__enter__()
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher, num_samples=-1,
                max_concurrent_trials=max_concurrent, reuse_actors=True,
                trial_name_creator=lambda tr: tr.config["unit"]["unit_id"],
                trial_dirname_creator=lambda tr: tr.config["unit"]["unit_id"]),
            run_config=tune.RunConfig(
                name=f"run-{stamp}", storage_path=sweep.tune_dir, storage_filesystem=sweep.fs.fs,
                failure_config=tune.FailureConfig(max_failures=max_failures),
                callbacks=[state], verbose=0))
        grid = tuner.fit()
        errors += [r for r in grid if r.error is not None]
    except KeyboardInterrupt:
        interrupted = True
    finally:
        # The trials have stopped and every round they reported is committed; a
        # SIGTERM from now on (a scheduler, `kill`, a test) must not turn the
        # last seconds of teardown (results table, Ray shutdown) into exit 15
        # from Ray's own handler.
        signal.signal(signal.SIGTERM, _late_sigterm)
        state.close()
    timings["tune_s"] = round(time.monotonic() - t_tune, 3)
    # Now rather than at exit: Ray's exit hook first sleeps 0.5 s for log
    # lines this driver does not forward (log_to_driver=False).
    t_stop = time.monotonic()
    ray.shutdown()
    timings["ray_stop_s"] = round(time.monotonic() - t_stop, 3)
    collector.rebuild()
    # Tune answers a SIGINT (and so our SIGTERM) inside fit() with its own
    # handler: it stops the trials and returns as if done. Storage says whether
    # it was: a lineage short of its rounds with no trial error was stopped.
    stopped = not errors and not searcher.dropped and any(
        sweep.lineage(t.trial_id).committed_prefix() < t.spec.num_rounds for u in todo for t in u.trials)
    if state.interrupted or interrupted or stopped:
        _log("stopped; committed rounds are safe. Re-run the same command to resume.")
        return 130
    if errors or searcher.dropped:
        causes = sorted({_cause(r.error) for r in errors})
        _log(f"{len(errors)} trial(s) failed after {max_failures} retries, {len(searcher.dropped)} not started "
             f"because what they are built from failed ({'; '.join(causes)[:400]}); see "
             f"trials/<id>/FAILED.json under {sweep.fs.to_uri(sweep.dir)}. Re-running retries them.")
        return 1
    _log(f"sweep finished in {time.monotonic() - t0:.0f}s; rounds committed "
         f"{state.done_rounds}/{total_rounds}")
    return 0


def _late_sigterm(*_) -> None:
    _log("SIGTERM: the trials have stopped already; exiting once the results table is written")


def _cause(err: BaseException) -> str:
    """The innermost message of a trial's error (Tune wraps the worker's)."""
    lines = [l.strip() for l in str(err).splitlines() if l.strip()]
    return lines[-1][:200] if lines else type(err).__name__


def _last_line(path) -> str:
    """The exception line of a Tune error file (its last non-blank line)."""
    try:
        with open(path) as f:
            lines = [l.strip() for l in f if l.strip()]
        return lines[-1][:500] if lines else "unknown error"
    except (OSError, TypeError):
        return "unknown error"


class ResultsCallback(tune.Callback):
    """Driver-side: keeps the results table current, shows progress (orchestrator/progress.py)
    and feeds the experiment trackers (orchestrator/trackers.py)."""

    def __init__(self, sweep: SweepStore, collector, done_rounds: int, total_rounds: int, plain=None,
                 trackers=None):
        self.sweep, self._collector = sweep, collector
        self.view = View(done_rounds, total_rounds, plain=plain)
        self.trackers = trackers  # an orchestrator.trackers.Lineages, set up by the driver
        self.interrupted = False

    @property
    def done_rounds(self) -> int:
        return self.view.done_rounds

    @property
    def collector(self):
        if self._collector is None:
            self._collector = Collector(self.sweep)
        return self._collector

    def __getstate__(self):
        # Tune pickles its callbacks with the experiment state; the collector
        # holds a lock and is rebuilt on demand, the trackers stay with the driver.
        return {**self.__dict__, "_collector": None, "trackers": None}

    def close(self) -> None:
        self.view.__exit__(None, None, None)
        if self.trackers is not None:
            self.trackers.close()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        tid = result.get("lth_trial_id")
        if tid is None:
            return
        if result.get("progress"):
            self.view.epoch(tid, result)
            return
        self._update(tid)
        if result.get("evaluations"):
            _log(f"{tid}: evaluations written")
            return
        self.view.round(tid, result)
        if self.trackers is not None:
            try:
                self.trackers.round(tid, result)
            except Exception as e:  # a tracker must never stop a sweep
                _log(f"warning: tracker failed for {tid} ({type(e).__name__}: {e})")

    def on_trial_error(self, iteration, trials, trial, **info):
        unit = trial.config["unit"]
        err = getattr(trial, "error_file", None)
        cause = _last_line(err)
        for tid, spec in unit["members"].items():
            lin = self.sweep.lineage(tid)
            try:
                # A fused group's member that failed on its own has its own marker already.
                if lin.committed_prefix() < num_rounds(spec) and lin.read_marker(lin.FAILED) is None:
                    lin.mark_failed(cause, error_file=err, tune_trial=str(trial))
            except OSError:
                pass  # storage itself is failing; the line below still tells the user
        for tid in unit["members"]:
            self.view.failed(tid, cause)
        _log(f"{unit['unit_id']} FAILED after retries: {cause} (details: {err})")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._update(*trial.config["unit"]["members"])
        for tid in trial.config["unit"]["members"]:
            self.view.finished(tid)

    def _update(self, *tids: str) -> None:
        # The table is derived and rebuilt at the end of the run: a failed
        # write here (storage full, a flaky S3 call) must not stop the sweep.
        try:
            self.collector.update(list(tids))
        except Exception as e:
            _log(f"warning: results table not updated for {', '.join(tids)} ({type(e).__name__}: {e}); "
                 "it is rebuilt from the manifests at the end of the run")
