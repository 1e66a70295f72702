"""The Ray Tune adapter: one Tune trial per IMP lineage.

Tune schedules, pins GPUs (CUDA_VISIBLE_DEVICES per trial) and retries
failed trials; it is *not* the record of what is done. Storage manifests
are: every `run` reads them, skips finished lineages, and starts a fresh
Tune experiment for the rest, whose trainables continue each lineage from
its last committed round. A driver killed at any moment therefore costs
at most the rounds in flight (or less, with mid-round checkpoints), and
re-running the same command is the whole resume procedure.
"""
from __future__ import annotations

import datetime as _dt
import os
import signal
import socket
import sys
import time
from dataclasses import asdict
from typing import Optional

from orchestrator.grid import Trial
from workers.evaluation import pending
from workers.methods import get_method
from workers.spec import RunOptions, TrialSpec
from workers.store import SweepStore


class DriverError(Exception):
    """A user-facing problem detected before any trial starts."""


def _log(msg: str) -> None:
    stamp = _dt.datetime.now().strftime("%H:%M:%S")
    print(f"[{stamp}] {msg}", flush=True)


# --- what runs inside a Tune trial -----------------------------------------

def lineage_trainable(config: dict) -> None:
    """Tune function trainable: config -> frozen spec -> pure lineage runner."""
    import ray
    from ray import tune

    from workers.lineage import run_lineage

    config = config["trial"]
    spec = TrialSpec.from_dict(config["spec"])
    store = SweepStore(config["storage"], config["sweep"]).lineage(spec.trial_id)
    gpu_ids = [str(g) for g in ray.get_gpu_ids()]
    gpu = config.get("gpu", 0)
    if 0 < gpu < 1:
        # Packed trials: cap this process's share of the GPU so neighbours
        # on the same device cannot starve it (or be starved).
        import torch
        if torch.cuda.is_available():
            torch.cuda.set_per_process_memory_fraction(gpu)
    ctx = {"node": node_label(), "gpu_ids": gpu_ids}
    store.clear_marker("FAILED.json")

    def report(metrics: dict) -> None:
        row = {k: v for k, v in metrics.items() if k not in ("layers", "history", "trial_id")}
        row["lth_trial_id"] = metrics["trial_id"]  # Tune owns the `trial_id` key
        tune.report(row)

    opts = RunOptions(**config["options"])
    run_lineage(spec, store, opts, ctx, on_round=report)
    from workers.evaluation import run_evaluations
    if run_evaluations(spec, store, opts):
        tune.report({"lth_trial_id": spec.trial_id, "evaluations": True})


def node_label() -> str:
    """Host name plus Ray node id: distinct even for several nodes on one host."""
    try:
        import ray
        nid = ray.get_runtime_context().get_node_id()
        return f"{socket.gethostname()}:{nid[:8]}"
    except Exception:
        return socket.gethostname()


# --- the driver ---------------------------------------------------------------

def check_resources(trials: list[Trial], nodes: list[dict], where: str) -> None:
    """A trial that no node can ever hold is an error now, not a sweep that
    stays pending forever."""
    for t in trials:
        need_cpu, need_gpu = t.resources["cpu"], t.resources["gpu"]
        if not any(n.get("CPU", 0) >= need_cpu and n.get("GPU", 0) >= need_gpu for n in nodes):
            best_cpu = max((n.get("CPU", 0) for n in nodes), default=0)
            best_gpu = max((n.get("GPU", 0) for n in nodes), default=0)
            raise DriverError(
                f"trial {t.trial_id} asks for cpu={_n(need_cpu)} gpu={_n(need_gpu)} but the largest node "
                f"of {where} has cpu={_n(best_cpu)} gpu={_n(best_gpu)}; change `resources:` in the "
                f"experiment or pass --num-cpus/--num-gpus")


def wait_for_nodes(trials: list[Trial], where: str, wait_s: float) -> None:
    """On a cluster, nodes may still be joining or wait for the autoscaler:
    ask it for the largest bundle and wait up to `wait_s` for a node that
    fits every trial, then fail as check_resources does."""
    import ray
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
            _log(f"no node of {where} fits cpu={_n(big['cpu'])} gpu={_n(big['gpu'])} yet; waiting up to "
                 f"{wait_s:.0f}s for one to join (--wait-for-nodes)")
        time.sleep(2.0)


def _n(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def preflight_data(trials: list[Trial]) -> None:
    """On a single machine, fetch/verify every dataset once before any trial
    starts: a missing dataset is one clear error now, not N failed trials."""
    from workers import data as D
    for name, root in sorted({(t.spec.data.dataset, t.options.data_root) for t in trials},
                             key=str):
        D.load_dataset(name, root)
    # Subset sizes that the data cannot give (images_per_class above a class's
    # count) fail here too. The seed changes which images, never whether they
    # exist, so one split per size suffices. No held-out images (fraction 1.0)
    # is not an error: those trials record no val_acc, and `--select val` says so.
    sizes = {(t.spec.data.dataset, t.options.data_root, t.spec.data.fraction, t.spec.data.images_per_class,
              t.spec.eval.val_per_class) for t in trials}
    for name, root, fraction, ipc, val_per_class in sorted(sizes, key=str):
        _, train, _ = D.load_dataset(name, root)
        try:
            D.stratified_split(train.y, fraction=fraction, images_per_class=ipc, val_per_class=val_per_class,
                               seed=0)
        except D.DataError as e:
            raise D.DataError(f"{name}: {e}") from None
    # Evaluation data and init weights too: a trial must not train for hours
    # and then find its CIFAR-10-C or its ImageNet weights missing.
    from workers.data import robustness as RB
    for root in sorted({t.options.data_root or "" for t in trials if "cifar10c" in t.options.robustness}):
        RB.load_cifar10c(root or D.default_root())
    for root in sorted({t.options.data_root or "" for t in trials if "cifar10_2" in t.options.robustness}):
        RB.load_cifar102(root or D.default_root())
    for name, root in sorted({(p, t.options.data_root) for t in trials for p in t.options.probe}, key=str):
        D.load_dataset(name, root)
    from workers.models.inits import imagenet_path
    for t in trials:
        init, path = t.spec.model.init, t.options.init_path
        where = imagenet_path(t.spec.model.arch, path) if init == "imagenet" else path
        if init != "random" and not (where and os.path.isfile(where)):
            raise D.DataError(f"model.init {init}: weights file not found at {where or '(runtime.init_path unset)'}"
                              + ("; put torchvision's file there or set runtime.init_path" if init == "imagenet"
                                 else "; set runtime.init_path to the SimCLR state dict"))


class SweepLock:
    """One driver per sweep: a second one is refused instead of racing.

    On a local/NFS path this is an OS file lock, released by the kernel when
    the driver dies. Object stores have no locks, so there the driver holds a
    lease object (DRIVER_LEASE.json) whose heartbeat it renews every
    LEASE_BEAT_S. A newcomer that finds a fresh lease watches it: if the
    heartbeat moves, a live driver holds the sweep and the newcomer is
    refused; if it stays still for LEASE_S, the holder is dead (a SIGKILLed
    driver, a lost head node) and the newcomer takes over. Re-running after a
    crash therefore waits at most LEASE_S, and never races a live driver.
    """

    LEASE = "DRIVER_LEASE.json"
    LEASE_S = 20.0
    LEASE_BEAT_S = 5.0

    def __init__(self, sweep: SweepStore):
        self.sweep = sweep
        self.lock = None
        self._stop = None
        if sweep.fs.local:
            from filelock import FileLock
            os.makedirs(sweep.dir, exist_ok=True)
            self.path = os.path.join(sweep.dir, ".driver.lock")
            self.lock = FileLock(self.path)

    def __enter__(self):
        if self.lock is not None:
            from filelock import Timeout
            try:
                self.lock.acquire(timeout=0)
            except Timeout:
                raise DriverError(f"another driver is already running this sweep (lock {self.path}); "
                                  "wait for it or stop it first") from None
            return self
        self._acquire_lease()
        return self

    def __exit__(self, *exc):
        if self.lock is not None:
            self.lock.release()
            return
        self._stop.set()
        self.sweep.fs.delete_file(self.sweep.path(self.LEASE))

    # --- the lease, for object stores -----------------------------------------
    def _read_lease(self):
        try:
            lease = self.sweep.read_json(self.LEASE)
        except (ValueError, OSError):  # torn or unreadable: treat as no lease
            return None
        return lease if isinstance(lease, dict) else None

    def _acquire_lease(self) -> None:
        import threading
        import uuid
        lease = self._read_lease()
        if lease and time.time() - float(lease.get("beat", 0)) < self.LEASE_S:
            first = lease.get("beat")
            _log(f"a driver lease exists (host {lease.get('host')}); checking whether it is alive "
                 f"(at most {self.LEASE_S:.0f}s)")
            deadline = time.time() + self.LEASE_S
            while time.time() < deadline:
                time.sleep(1.0)
                now_lease = self._read_lease()
                if now_lease is None:
                    break
                if now_lease.get("beat") != first:
                    raise DriverError(
                        f"another driver is already running this sweep (host {now_lease.get('host')}, "
                        f"pid {now_lease.get('pid')}; lease {self.sweep.fs.to_uri(self.sweep.path(self.LEASE))})"
                        "; wait for it or stop it first")
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._beat()

        def renew():
            while not self._stop.wait(self.LEASE_BEAT_S):
                try:
                    self._beat()
                except Exception:
                    pass  # a missed beat is retried; LEASE_S covers several

        threading.Thread(target=renew, name="lth-lease", daemon=True).start()

    def _beat(self) -> None:
        self.sweep.write_json(self.LEASE, {"token": self.token, "host": socket.gethostname(),
                                           "pid": os.getpid(), "beat": time.time()})


def run_sweep(*, trials: list[Trial], experiment: str, sweep_name: str, storage: str,
              address: Optional[str] = None, num_cpus: Optional[float] = None,
              num_gpus: Optional[float] = None, max_concurrent: Optional[int] = None,
              max_failures: int = 2, wait_s: float = 0.0) -> int:
    """Run (or resume) a sweep. Returns the process exit status."""
    from orchestrator.results import Collector

    sweep = SweepStore(storage, sweep_name)
    if address is None:
        import torch
        cpus = num_cpus if num_cpus is not None else os.cpu_count() or 1
        gpus = num_gpus if num_gpus is not None else torch.cuda.device_count()
        check_resources(trials, [{"CPU": cpus, "GPU": gpus}], "the local Ray")
        preflight_data(trials)

    with SweepLock(sweep):
        sweep.write_json("sweep.json", {
            "sweep": sweep_name, "experiment": experiment,
            "trials": {t.trial_id: {"rounds": t.spec.num_rounds, **t.row()} for t in trials}})
        collector = Collector(sweep)
        collector.rebuild()
        todo, done_rounds = [], 0
        for t in trials:
            k = sweep.lineage(t.trial_id).committed_prefix()
            done_rounds += min(k, t.spec.num_rounds)
            if k < t.spec.num_rounds or pending(t.spec, sweep.lineage(t.trial_id), t.options):
                todo.append(t)
        total_rounds = sum(t.spec.num_rounds for t in trials)
        _log(f"sweep {sweep_name!r} ({experiment}) at {sweep.fs.to_uri(sweep.dir)}: {len(trials)} trials, "
             f"{len(trials) - len(todo)} already done; rounds committed {done_rounds}/{total_rounds}")
        if not todo:
            _log("nothing to do")
            return 0
        return _tune_run(sweep, collector, todo, experiment, address, num_cpus, num_gpus,
                         max_concurrent, max_failures, done_rounds, total_rounds, wait_s)


def _tune_run(sweep, collector, todo, experiment, address, num_cpus, num_gpus, max_concurrent,
              max_failures, done_rounds, total_rounds, wait_s=0.0) -> int:
    # Tune's own progress tables would interleave with ours; one line per
    # committed round is printed by _Progress instead.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import ray
    from ray import tune

    t0 = time.monotonic()
    if address:
        ray.init(address=address, log_to_driver=False, logging_level="WARNING")
        wait_for_nodes(todo, f"the cluster at {address}", wait_s)
    else:
        # The dashboard is not needed and would listen on a port; if someone
        # turns it on it must stay on loopback.
        # address="local": always a fresh Ray of our own, never a cluster that
        # happens to run on this machine (plain ray.init() would join it).
        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
                 dashboard_host="127.0.0.1", log_to_driver=False, logging_level="WARNING")
    _log(f"Ray up in {time.monotonic() - t0:.1f}s: {ray.cluster_resources()}")

    state = _Progress(sweep, collector, done_rounds, total_rounds)
    base = {"storage": sweep.fs.uri, "sweep": sweep.sweep}
    trainable = tune.with_resources(lineage_trainable,
                                    lambda cfg: {"cpu": cfg["trial"]["cpu"], "gpu": cfg["trial"]["gpu"]})
    # Methods built from an imp lineage (same_layer_sparse, small_dense) run
    # after every lineage they could depend on has committed.
    phases = [[t for t in todo if not get_method(t.spec.prune.method).parent],
              [t for t in todo if get_method(t.spec.prune.method).parent]]
    interrupted, errors = False, []
    old_term = signal.getsignal(signal.SIGTERM)
    # SIGTERM (scheduler preemption, `kill`) takes Ctrl-C's graceful path.
    signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    try:
        for n, phase in enumerate(p for p in phases if p):
            if n:
                _log(f"{len(phase)} trial(s) built from finished imp lineages start now")
            space = [{**base, "trial_id": t.trial_id, "spec": t.spec.to_dict(), "options": asdict(t.options),
                      "cpu": t.resources["cpu"], "gpu": t.resources["gpu"]} for t in phase]
            stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
            tuner = tune.Tuner(
                trainable,
                param_space={"trial": tune.grid_search(space)},
                tune_config=tune.TuneConfig(
                    max_concurrent_trials=max_concurrent, reuse_actors=True,
                    trial_name_creator=lambda tr: tr.config["trial"]["trial_id"],
                    trial_dirname_creator=lambda tr: tr.config["trial"]["trial_id"]),
                run_config=tune.RunConfig(
                    name=f"run-{stamp}-{n}", storage_path=sweep.path("_tune"),
                    storage_filesystem=sweep.fs.fs,
                    failure_config=tune.FailureConfig(max_failures=max_failures),
                    callbacks=[state], verbose=0))
            grid = tuner.fit()
            errors += [r for r in grid if r.error is not None]
            if state.interrupted:
                break
    except KeyboardInterrupt:
        interrupted = True
    finally:
        signal.signal(signal.SIGTERM, old_term)
    collector.rebuild()
    if state.interrupted or interrupted:
        _log("stopped; committed rounds are safe. Re-run the same command to resume.")
        return 130
    if errors:
        causes = sorted({_cause(r.error) for r in errors})
        _log(f"{len(errors)} trial(s) failed after {max_failures} retries ({'; '.join(causes)[:400]}); see "
             f"trials/<id>/FAILED.json under {sweep.fs.to_uri(sweep.dir)}. Re-running retries them.")
        return 1
    _log(f"sweep finished in {time.monotonic() - t0:.0f}s; rounds committed "
         f"{state.done_rounds}/{total_rounds}")
    return 0


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


def _make_callback_base():
    from ray import tune
    return tune.Callback


class _Progress(_make_callback_base()):
    """Driver-side: keeps the results table current and prints progress."""

    def __init__(self, sweep: SweepStore, collector, done_rounds: int, total_rounds: int):
        self.sweep, self._collector = sweep, collector
        self.done_rounds, self.total_rounds = done_rounds, total_rounds
        self.interrupted = False

    @property
    def collector(self):
        if self._collector is None:
            from orchestrator.results import Collector
            self._collector = Collector(self.sweep)
        return self._collector

    def __getstate__(self):
        # Tune pickles its callbacks with the experiment state; the collector
        # holds a lock and is rebuilt on demand.
        return {**self.__dict__, "_collector": None}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        tid = result.get("lth_trial_id")
        if tid is None:
            return
        self._update(tid)
        if result.get("evaluations"):
            _log(f"{tid}: evaluations written")
            return
        self.done_rounds += 1
        acc = lambda k: f"{result[k]:.3f}" if isinstance(result.get(k), (int, float)) else "-"
        _log(f"{tid} round {result['round']}: density {result['density']:.3f} val {acc('val_acc')} "
             f"test {acc('test_acc')} ({result['wall_s']:.1f}s, gpu [{result.get('gpu_ids', '')}]) "
             f"| rounds {self.done_rounds}/{self.total_rounds}")

    def on_trial_error(self, iteration, trials, trial, **info):
        tid = trial.config["trial"]["trial_id"]
        err = getattr(trial, "error_file", None)
        cause = _last_line(err)
        try:
            self.sweep.lineage(tid).write_marker("FAILED.json", {
                "time": time.time(), "error": cause, "error_file": err, "tune_trial": str(trial)})
        except OSError:
            pass  # storage itself is failing; the line below still tells the user
        _log(f"{tid} FAILED after retries: {cause} (details: {err})")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._update(trial.config["trial"]["trial_id"])

    def _update(self, tid: str) -> None:
        # The table is derived and rebuilt at the end of the run: a failed
        # write here (storage full, a flaky S3 call) must not stop the sweep.
        try:
            self.collector.update([tid])
        except Exception as e:
            _log(f"warning: results table not updated for {tid} ({type(e).__name__}: {e}); "
                 "it is rebuilt from the manifests at the end of the run")
