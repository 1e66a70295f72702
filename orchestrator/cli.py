"""`lth-sweep`: plan, run, status, query, report, verify, bench. The arguments
and the exit statuses; what each verb does is in orchestrator/verbs.py.

Every user error ends as one line on stderr and exit status 2, before
anything is started or written.
"""
from __future__ import annotations

import argparse
import sys

from orchestrator import verbs
from orchestrator.errors import UsageError

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage + message; the contract is one line
        raise UsageError(f"{self.prog}: {message}")


def _common(p: argparse.ArgumentParser) -> None:
    """The flags every verb that names a sweep shares, so a command line can switch verbs unchanged."""
    p.add_argument("-c", "--config", help="experiments file (default: ./experiments.yaml)")
    p.add_argument("-e", "--experiment", default="quickstart", help="experiment name (default: %(default)s)")
    p.add_argument("--name", help="sweep name (default: the experiment's name)")
    p.add_argument("--storage", default="./runs", help="local path or s3://bucket/prefix (default: %(default)s)")


def _select(p: argparse.ArgumentParser) -> None:
    p.add_argument("--select", choices=["val", "test"], default="val",
                   help="which split picks each trial's winning ticket: val (held-out images; default) or "
                        "test (the paper's protocol, biased upwards)")
    p.add_argument("--ci", choices=["bootstrap", "t"], default="bootstrap",
                   help="the gain's 95%% interval and p-value: bootstrap (paired, over seeds and test images, "
                        "seeded; default) or t (over seeds only)")


VERBS = ("plan", "run", "status", "query", "report", "verify", "bench")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="lth-sweep", description="Lottery-ticket (IMP) sweeps on Ray Tune.")
    sub = ap.add_subparsers(dest="cmd", parser_class=_Parser)

    def verb(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        _common(p)
        return p

    def adaptive_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--adaptive", metavar="start=N,step=N,max=N,effect=X",
                       help="adaptive seeds instead of the experiment's seeds: add seeds only to cells whose "
                            "claim is open (as seeds: {adaptive: ...} in the yaml)")
        p.add_argument("--budget-gpu-h", type=float, metavar="H",
                       help="with adaptive seeds: at most H estimated device-hours in all (as plan estimates "
                            "them); extra seeds go to the cells closest to resolving")

    p = verb("plan", "expand the grid; start nothing")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--num-gpus", type=float,
                   help="plan the fused groups for a cluster of N GPUs (default: this machine's)")
    adaptive_flags(p)

    p = verb("run", "run or resume a sweep (the same command does both)")
    p.add_argument("--address", help="Ray cluster address ('auto' inside a cluster); default: start a local Ray")
    p.add_argument("--num-cpus", type=float, help="CPUs of the local Ray")
    p.add_argument("--num-gpus", type=float, help="GPUs of the local Ray (fake ones on a machine without)")
    p.add_argument("--max-concurrent", type=int, help="at most N trials at once")
    p.add_argument("--max-failures", type=int, default=2, help="retries per trial (default: %(default)s)")
    p.add_argument("--wait-for-nodes", type=float, default=300, metavar="SECONDS",
                   help="with --address: wait this long for nodes (or the autoscaler) to offer the "
                        "resources a trial asks for, then fail (default: %(default)s)")
    from orchestrator.trackers import TRACKERS
    p.add_argument("--tracker", action="append", choices=TRACKERS,
                   help="send each lineage's rounds to this tracker (repeatable; also `trackers:` in the yaml)")
    p.add_argument("--plain", action="store_true",
                   help="one line per committed round, also on a terminal (no live panel)")
    p.add_argument("--verify", action="store_true",
                   help="first re-check every committed file, and redo each lineage from its first corrupt round")
    p.add_argument("--allow-precision-change", action="store_true",
                   help="continue a lineage whose committed rounds ran in another precision than this run would "
                        "(e.g. bf16 on a GPU, now fp32 on a CPU); without it such a lineage stops with one line. "
                        "Its results cell then names both (e.g. precision bf16+fp32)")
    adaptive_flags(p)

    p = verb("status", "progress of a sweep, from storage (and the yaml: trials it names and storage lacks)")
    p.add_argument("--json", action="store_true")
    adaptive_flags(p)

    p = verb("query", "query the results table")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--sql", help="SQL over the views `results` and `layers`")
    g.add_argument("--winning-tickets", action="store_true", help="best-val round of every trial")
    g.add_argument("--compare", action="store_true", help="dense vs winning ticket per grid cell")
    g.add_argument("--protocols", action="store_true",
                   help="the gain under both selections side by side, with the selection bias")
    g.add_argument("--power", action="store_true",
                   help="per cell: the smallest gain its seeds detect at 80%% power, and the seeds --effect needs")
    _select(p)
    p.add_argument("--effect", type=float,
                   help="with --power: the gain in accuracy to plan seeds for (default: 0.02)")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")

    p = verb("report", "write the paper's figures and tables as PNGs, report.md and report.html")
    p.add_argument("sweep", nargs="?", help="sweep name (same as --name)")
    p.add_argument("--out", help="output folder (default: ./report-<sweep>)")
    _select(p)

    p = verb("verify", "re-check every committed file of a sweep against its manifest (exit 1 if any is corrupt)")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("bench", help="measure the engine and the orchestrator on this machine")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--out", help="also write the JSON to this file")
    p.add_argument("--full", action="store_true", help="include the slow orchestrator benchmark")
    p.add_argument("--smoke", action="store_true",
                   help="tiny sizes, about a minute: checks the benchmark runs (its numbers mean nothing)")
    p.add_argument("--scale", type=int, nargs="+", metavar="N",
                   help="the driver's cost with N near-zero lineages (e.g. 100 1000 10000) on a local Ray")
    p.add_argument("--scale-storage", choices=("local", "s3"), default="local",
                   help="with --scale: the sweep's storage, a local folder or a loopback moto S3 server "
                        "(needs the test extra)")
    p.add_argument("--restart-scale", type=int, nargs="+", metavar="N",
                   help="a restart, a stop, status and query --compare on a finished sweep of N lineages "
                        "(e.g. 300 3000) on a loopback moto S3 server behind a latency-adding, "
                        "request-counting proxy (needs the test extra)")
    p.add_argument("--rounds", type=int, default=17, help="with --restart-scale: rounds per lineage (default 17)")
    p.add_argument("--latency-ms", type=float, default=20.0,
                   help="with --restart-scale: latency added to every S3 request (default 20)")
    p.add_argument("--calibrate", action="store_true",
                   help="measure training images/s per (arch, image size) here; `plan` then costs with it")
    return ap


def main(argv=None) -> int:
    import signal

    from orchestrator import signals
    if argv is None:
        signals.stop_at_once()  # the driver turns graceful once it holds the sweep (orchestrator/signals.py)
    else:
        signals.graceful()  # in-process: SIGTERM as Ctrl-C, the caller's SIGINT kept
    rc = _main(argv)
    if argv is None:
        # This process's own command is done and its exit status decided: a
        # signal now has nothing to stop. Ignored, because while the
        # interpreter shuts down Python resets its handlers to the default,
        # and a SIGTERM in that window would exit 15 (-15) instead of `rc`.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            # Not left to Ray's exit hook: its shutdown resets SIGTERM to the default in C.
            with signals.sigterm_ignored():
                ray.shutdown()
    return rc


def _main(argv) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.cmd is None:
            raise UsageError(f"lth-sweep: choose a command: {', '.join(VERBS)} (see --help)")
        return getattr(verbs, f"cmd_{args.cmd}")(args) or 0
    except KeyboardInterrupt:
        from orchestrator.signals import STOPPED
        print(STOPPED, file=sys.stderr)
        return 130
    except Exception as e:  # user errors: one line, exit 2
        from orchestrator.config import ConfigError
        from orchestrator.resources import DriverError
        from orchestrator.results import ResultsError
        from workers.data import DataError
        from orchestrator.trackers import TrackerError
        from workers.selection import SelectionError
        from workers.store import StorageError
        if isinstance(e, (UsageError, ConfigError, DriverError, ResultsError, StorageError, DataError,
                          SelectionError, TrackerError)):
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            print(f"lth-sweep: error: {msg}" if not msg.startswith("lth-sweep") else msg, file=sys.stderr)
            return EXIT_USAGE
        if isinstance(e, OSError):
            # Storage full, read-only, gone: an environment problem, not a bug.
            where = f": {e.filename}" if getattr(e, "filename", None) else ""
            print(f"lth-sweep: error: storage: {e.strerror or e}{where}; committed rounds are intact",
                  file=sys.stderr)
            return EXIT_USAGE
        raise
