"""What the driver shows while a sweep runs.

On a terminal: one self-updating panel (rich): rounds committed / total with
a bar, elapsed time and ETA, the running lineages with their round and epoch
and latest accuracies, and failures. Anywhere else (a log file, CI, `--plain`):
one line per committed round, as before. Every other line of the driver
(start, warnings, the end) is printed either way, above the panel.

No Ray here: the Tune callback (orchestrator/tune/callback.py) feeds it.
"""
from __future__ import annotations

import datetime as _dt
import sys
import time
from typing import Optional

from orchestrator.formatting import duration


def _stamp() -> str:
    return _dt.datetime.now().strftime("%H:%M:%S")


class ProgressPanel:
    """Progress of one run: committed rounds, running lineages, failures."""

    def __init__(self, done_rounds: int, total_rounds: int, plain: Optional[bool] = None):
        self.done_rounds, self.total_rounds = done_rounds, total_rounds
        self.start_rounds = done_rounds
        self.t0 = time.monotonic()
        self.running: dict[str, dict] = {}
        self.failures: list[str] = []
        self.plain = (not sys.stdout.isatty()) if plain is None else plain
        self._live = None

    # --- lifecycle ------------------------------------------------------------------
    def __enter__(self) -> "ProgressPanel":
        if not self.plain:
            from rich.live import Live
            # Lines printed while the panel is up (the driver's log) land above it.
            self._live = Live(self._render(), refresh_per_second=4, transient=False, redirect_stdout=True,
                              redirect_stderr=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.update(self._render())
            self._live.__exit__(*exc)
            self._live = None

    def __getstate__(self):  # Tune pickles its callbacks; the live panel stays in the driver
        return {**self.__dict__, "_live": None}

    # --- events ------------------------------------------------------------------
    def round(self, tid: str, result: dict) -> None:
        self.done_rounds += 1
        r = self.running.setdefault(tid, {})
        r.update(round=result.get("round"), epoch=None, val=result.get("val_acc"), test=result.get("test_acc"),
                 density=result.get("density"))
        if self.plain:
            acc = lambda k: f"{result[k]:.3f}" if isinstance(result.get(k), (int, float)) else "-"  # noqa: E731
            print(f"[{_stamp()}] {tid} round {result['round']}: density {result['density']:.3f} val {acc('val_acc')} "
                  f"test {acc('test_acc')} ({result['wall_s']:.1f}s, gpu [{result.get('gpu_ids', '')}]) "
                  f"| rounds {self.done_rounds}/{self.total_rounds}", flush=True)
        self._refresh()

    def epoch(self, tid: str, info: dict) -> None:
        r = self.running.setdefault(tid, {})
        r.update(round=info.get("round"), epoch=info.get("epoch"), epochs=info.get("epochs"))
        self._refresh()

    def finished(self, tid: str) -> None:
        self.running.pop(tid, None)
        self._refresh()

    def failed(self, tid: str, cause: str) -> None:
        self.running.pop(tid, None)
        self.failures.append(f"{tid}: {cause}")
        self._refresh()

    # --- the panel ------------------------------------------------------------------
    def eta_s(self) -> Optional[float]:
        made = self.done_rounds - self.start_rounds
        left = self.total_rounds - self.done_rounds
        if left <= 0:
            return 0.0
        return None if made <= 0 else left * (time.monotonic() - self.t0) / made

    def counters(self) -> str:
        return (f"rounds {self.done_rounds}/{self.total_rounds}  running {len(self.running)}  failed "
                f"{len(self.failures)}  elapsed {duration(time.monotonic() - self.t0)}  ETA {duration(self.eta_s())}")

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._render())

    def _render(self):
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text
        table = Table(box=None, pad_edge=False, show_edge=False)
        for col in ("lineage", "round", "epoch", "density", "val", "test"):
            table.add_column(col, justify="left" if col == "lineage" else "right")
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        for tid, r in sorted(self.running.items())[:20]:
            epoch = "-" if r.get("epoch") is None else f"{r['epoch']}/{r.get('epochs', '?')}"
            table.add_row(tid, str(r.get("round", "-")), epoch, fmt(r.get("density")), fmt(r.get("val")),
                          fmt(r.get("test")))
        parts = [Text(self.counters()),
                 ProgressBar(total=max(1, self.total_rounds), completed=self.done_rounds, width=50), table]
        parts += [Text(f"FAILED {f}", style="red") for f in self.failures[-5:]]
        return Group(*parts)
