"""The driver's side of a Tune run: one callback keeps the results table
current, shows progress (orchestrator/progress.py) and feeds the trackers."""
from __future__ import annotations

from ray import tune

from orchestrator.progress import ProgressPanel
from orchestrator.results import Collector
from workers.lease import log
from workers.spec import num_rounds
from workers.store import StorageError, SweepStore


def last_line(path) -> str:
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
                 trackers=None, summary=None):
        self.sweep, self._collector = sweep, collector
        self.summary = summary  # orchestrator/summary.py: what `status` reads
        self.panel = ProgressPanel(done_rounds, total_rounds, plain=plain)
        self.trackers = trackers  # an orchestrator.trackers.Lineages, set up by the driver
        self.interrupted = False

    @property
    def done_rounds(self) -> int:
        return self.panel.done_rounds

    @property
    def collector(self):
        if self._collector is None:
            self._collector = Collector(self.sweep)
        return self._collector

    def __getstate__(self):
        # Tune pickles its callbacks with the experiment state; the collector
        # holds a lock and is rebuilt on demand, the trackers stay with the driver.
        return {**self.__dict__, "_collector": None, "trackers": None, "summary": None}

    def close(self) -> None:
        self.panel.__exit__(None, None, None)
        if self.trackers is not None:
            self.trackers.close()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        tid = result.get("lth_trial_id")
        if tid is None:
            return
        if result.get("progress"):
            self.panel.epoch(tid, result)
            return
        if result.get("evaluations"):
            self._append(tid, None)
            log(f"{tid}: evaluations written")
            return
        self._append(tid, result.get("round"))
        if self.summary is not None and result.get("round") is not None:
            self.summary.round(tid, int(result["round"]), result.get("wall_s"))
        self.panel.round(tid, result)
        if self.trackers is not None:
            try:
                self.trackers.round(tid, result)
            except Exception as e:  # a tracker must never stop a sweep
                log(f"warning: tracker failed for {tid} ({type(e).__name__}: {e})")

    def on_trial_start(self, iteration, trials, trial, **info):
        if self.summary is not None:
            self.summary.started(trial.config["unit"]["members"])

    def on_step(self, iteration, trials, **info):
        if self.summary is not None:
            try:
                self.summary.write_if_due()
            except Exception as e:  # a summary is derived: status falls back to a listing
                log(f"warning: sweep summary not written ({type(e).__name__}: {e})")

    def on_trial_error(self, iteration, trials, trial, **info):
        unit = trial.config["unit"]
        if self.summary is not None:
            self.summary.ended(unit["members"], failed=True)
        err = getattr(trial, "error_file", None)
        cause = last_line(err)
        for tid, spec in unit["members"].items():
            lin = self.sweep.lineage(tid)
            try:
                # A fused group's member that failed on its own has its own marker already.
                if lin.committed_prefix() < num_rounds(spec) and lin.read_marker(lin.FAILED) is None:
                    lin.mark_failed(cause, error_file=err, tune_trial=str(trial))
            except (OSError, StorageError):  # StorageError: workers/retry.py's StorageUnavailable
                pass  # storage itself is failing; the line below still tells the user
        for tid in unit["members"]:
            self.panel.failed(tid, cause)
        log(f"{unit['unit_id']} FAILED after retries: {cause} (details: {err})")

    def on_trial_complete(self, iteration, trials, trial, **info):
        # Every committed round was appended as it was reported; the run's end compacts.
        for tid in trial.config["unit"]["members"]:
            self.panel.finished(tid)
        if self.summary is not None:
            self.summary.ended(trial.config["unit"]["members"])

    @property
    def rounds_committed(self) -> int:
        """Rounds appended to the results table during this run (RUN.json)."""
        return 0 if self._collector is None else self._collector.appended

    def _append(self, tid: str, k) -> None:
        """The reported round's rows (from its one manifest), or the whole trial's
        once its evaluations are written, as row files (orchestrator/results/rowfiles.py):
        a constant cost per round at any sweep size. The table is derived and
        rebuilt at the end of the run: a failed write here (storage full, a flaky
        S3 call) must not stop the sweep."""
        try:
            if k is None:
                self.collector.append_trial(tid)
            else:
                self.collector.append_round(tid, int(k))
            # Fold row files into the shards as the run goes (in a thread of its own), so
            # reading the table mid-run never means one read per round since the start.
            self.collector.compact_if_due()
        except Exception as e:
            log(f"warning: results table not updated for {tid} ({type(e).__name__}: {e}); "
                "it is rebuilt from the manifests at the end of the run")
