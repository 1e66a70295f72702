"""`lth-sweep`: plan, run, status, query, bench. Thin: parse, call, print.

Every user error ends as one line on stderr and exit status 2, before
anything is started or written.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

EXIT_USAGE = 2


class UsageError(Exception):
    pass


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


VERBS = ("plan", "run", "status", "query", "report", "verify", "bench")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="lth-sweep", description="Lottery-ticket (IMP) sweeps on Ray Tune.")
    sub = ap.add_subparsers(dest="cmd", parser_class=_Parser)

    def verb(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        _common(p)
        return p

    p = verb("plan", "expand the grid; start nothing")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--num-gpus", type=float,
                   help="plan the fused groups for a cluster of N GPUs (default: this machine's)")

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

    p = verb("status", "progress of a sweep, from storage (and the yaml: trials it names and storage lacks)")
    p.add_argument("--json", action="store_true")

    p = verb("query", "query the results table")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--sql", help="SQL over the views `results` and `layers`")
    g.add_argument("--winning-tickets", action="store_true", help="best-val round of every trial")
    g.add_argument("--compare", action="store_true", help="dense vs winning ticket per grid cell")
    g.add_argument("--protocols", action="store_true",
                   help="the gain under both selections side by side, with the selection bias")
    _select(p)
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
    p.add_argument("--calibrate", action="store_true",
                   help="measure training images/s per (arch, image size) here; `plan` then costs with it")
    return ap


def main(argv=None) -> int:
    import signal
    # SIGTERM (preemption, `kill`) stops as gracefully as Ctrl-C, from the
    # first instant: the driver swaps in Tune's path while trials run.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    rc = _main(argv)
    if argv is None:
        # This process's own command is done and its exit status decided: a
        # signal now has nothing to stop. Ignored, because while the
        # interpreter shuts down Python resets its handlers to the default,
        # and a SIGTERM in that window would exit 15 (-15) instead of `rc`.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    return rc


def _main(argv) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.cmd is None:
            raise UsageError(f"lth-sweep: choose a command: {', '.join(VERBS)} (see --help)")
        return {"plan": cmd_plan, "run": cmd_run, "status": cmd_status, "query": cmd_query,
                "report": cmd_report, "verify": cmd_verify, "bench": cmd_bench}[args.cmd](args) or 0
    except KeyboardInterrupt:
        print("lth-sweep: stopped; committed rounds are safe. Re-run the same command to resume.",
              file=sys.stderr)
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


# --- commands -------------------------------------------------------------------

DEFAULT_CONFIG = "experiments.yaml"


def _experiment(args) -> dict:
    """The validated experiment `-e` of `-c` (default ./experiments.yaml)."""
    from orchestrator.config import load_config
    path = args.config or DEFAULT_CONFIG
    cfg = load_config(path)
    if args.experiment not in cfg["experiments"]:
        raise UsageError(f"lth-sweep: error: {path}: no experiment {args.experiment!r}; "
                         f"known: {', '.join(cfg['experiments'])}")
    return cfg["experiments"][args.experiment]


def _trials(args):
    from orchestrator.grid import expand
    return expand(_experiment(args))


def _sweep(args, must_exist: bool):
    from workers.store import SweepStore
    sweep = SweepStore(args.storage, args.name or args.experiment)
    if must_exist and not sweep.exists():
        raise UsageError(f"lth-sweep: error: no sweep {sweep.sweep!r} under {args.storage} "
                         "(pick one with -e/--name and --storage)")
    return sweep


def cmd_plan(args) -> int:
    from orchestrator.grid import cost_estimate
    from workers.store import check_name
    check_name("sweep", args.name or args.experiment)
    trials = _trials(args)
    cost = cost_estimate(trials)
    import torch
    from orchestrator.grid import units
    gpus = args.num_gpus if args.num_gpus is not None else torch.cuda.device_count()
    if gpus < 0:
        raise UsageError("lth-sweep plan: --num-gpus must be >= 0")
    groups = [u for u in units(trials, gpus) if len(u.trials) > 1]
    group_of = {t.trial_id: u.unit_id for u in groups for t in u.trials}
    if args.json:
        print(json.dumps({"experiment": args.experiment, "count": len(trials),
                          "trials": [{**t.row(), "fused_group": group_of.get(t.trial_id)} for t in trials],
                          "groups": [{"group": u.unit_id, "trials": [t.trial_id for t in u.trials],
                                      "resources": u.resources} for u in groups],
                          "gpus": gpus, "cost": cost}))
        return 0
    from orchestrator.results import format_frame
    import pandas as pd
    rows = [{**{k: v for k, v in t.row().items() if k != "resources"},
             "cpu": t.resources["cpu"], "gpu": t.resources["gpu"], "rounds": t.spec.num_rounds,
             "epochs": t.spec.train.epochs} for t in trials]
    print(format_frame(pd.DataFrame(rows), "table"))
    for u in groups:
        print(f"fused group {u.unit_id}: {len(u.trials)} lineages on one device ({', '.join(t.trial_id for t in u.trials)})")
    if groups:
        print(f"({len(group_of)} lineages fused in {len(groups)} groups, planned for {gpus:g} GPUs; "
              "--num-gpus plans for another cluster)")
    speeds = ", ".join(f"{k} {v:,.0f}" for k, v in cost["images_per_s"].items())
    print(f"\n{len(trials)} trials, {cost['rounds']} rounds; asks cpu={cost['cpus']:g} gpu={cost['gpus']:g} "
          f"in total; ~{cost['train_images']:.3g} training images (+{cost['eval_images']:.2g} evaluated)")
    hours = cost["device_hours"]
    spent = f"~{hours:.3g} device-hours" if hours >= 0.1 else _minutes(hours)
    print(f"estimate: {spent} on {cost['device']}, at training images/s: {speeds}"
          + ("" if cost["source"] == "calibrated" else "; `lth-sweep bench --calibrate` measures this machine"))
    return 0


def _minutes(hours: float) -> str:
    m = max(1, round(hours * 60))
    return f"~{m} device-minute{'s' if m > 1 else ''}"


def cmd_run(args) -> int:
    from orchestrator.driver import run_sweep
    from orchestrator.request import SweepRequest
    from workers.store import check_name
    name = check_name("sweep", args.name or args.experiment)
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise UsageError("lth-sweep run: --max-concurrent must be >= 1")
    for flag in ("num_cpus", "num_gpus"):
        v = getattr(args, flag)
        if v is not None and v < 0:
            raise UsageError(f"lth-sweep run: --{flag.replace('_', '-')} must be >= 0")
    from orchestrator.grid import expand
    from orchestrator.trackers import check, names_of
    exp = _experiment(args)
    trials = expand(exp)
    trackers = names_of(args.tracker, exp.get("trackers"))
    check(trackers)
    rc = run_sweep(SweepRequest(
        trials=trials, experiment=args.experiment, sweep_name=name, storage=args.storage,
        address=args.address, num_cpus=args.num_cpus, num_gpus=args.num_gpus,
        max_concurrent=args.max_concurrent, max_failures=args.max_failures,
        wait_s=max(0.0, args.wait_for_nodes), plain=True if args.plain else None,
        trackers=tuple(trackers), verify=args.verify))
    sweep = _sweep(args, must_exist=True)
    from orchestrator.results import format_frame, load_results
    from orchestrator.tables import compare, notes, protocol_line
    df = load_results(sweep)
    if len(df):
        table = compare(df, "val")
        print(f"\nDense (round 0) vs winning ticket, test accuracy. {protocol_line('val', df)}")
        print(format_frame(_shown(table), "table"))
        for line in notes(table, "val"):
            print(f"note: {line}")
        flags = f"-e {args.experiment}" + (f" --name {args.name}" if args.name else "") + \
                (f" --storage {args.storage}" if args.storage != "./runs" else "")
        print(f"\nresults: {sweep.fs.to_uri(sweep.results_dir)}  (lth-sweep query {flags} --compare; "
              f"lth-sweep report {flags})")
    return rc


def cmd_status(args) -> int:
    """From storage; the trials of the yaml's experiment too (those storage has
    never seen count as pending), where the yaml is at hand: `-c`, or
    ./experiments.yaml when it names the experiment."""
    from orchestrator.status import format_status, sweep_status
    planned = None
    if args.config or os.path.exists(DEFAULT_CONFIG):
        try:
            planned = {t.trial_id: t.spec.num_rounds for t in _trials(args)}
        except UsageError:
            if args.config:
                raise  # asked for that yaml: it must name the experiment
    sweep = _sweep(args, must_exist=planned is None)
    st = sweep_status(sweep, planned=planned)
    print(json.dumps(st) if args.json else format_status(st))
    return 0


def cmd_verify(args) -> int:
    from orchestrator.verify import format_verify, verify_sweep
    sweep = _sweep(args, must_exist=True)
    out = verify_sweep(sweep)
    print(json.dumps(out) if args.json else format_verify(out))
    return 1 if out["corrupt"] else 0


def _shown(table):
    """A compare() table for the terminal: the cell id is for programs."""
    return table.drop(columns=["cell_id"])


def cmd_query(args) -> int:
    from orchestrator.results import format_frame, load_results, results_dataset, run_sql
    from orchestrator.tables import compare, notes, protocol_line, protocols, winning_tickets
    sweep = _sweep(args, must_exist=True)
    remarks: list[str] = []
    if args.sql:
        df = run_sql(sweep, args.sql)
    elif args.winning_tickets or args.compare or args.protocols:
        rows = results_dataset(sweep)  # duckdb scans the files; no pandas copy
        if args.winning_tickets:
            df = winning_tickets(rows, args.select)
        elif args.compare:
            df = compare(rows, args.select)
            remarks = notes(df, args.select)
        else:
            df = protocols(rows)
        if args.protocols:
            header = ("Gain selected on held-out images (val) and on the test split (test), from the same "
                      "lineages; selection_bias = gain_test - gain_val. " + protocol_line(None, rows))
        else:
            header = protocol_line(args.select, rows)
        # Machine-readable output stays clean: the protocol goes to stderr there.
        if args.format == "table":
            print(header)
            df = _shown(df) if "cell_id" in df else df
        else:
            print(header, file=sys.stderr)
    else:
        df = load_results(sweep)
    print(format_frame(df, args.format))
    for line in remarks:
        print(f"note: {line}", file=sys.stderr if args.format != "table" else sys.stdout)
    return 0


def cmd_report(args) -> int:
    from orchestrator.report import write_report
    if args.sweep:
        args.name = args.sweep
    sweep = _sweep(args, must_exist=True)
    paths = write_report(sweep, args.out or f"report-{sweep.sweep}", select=args.select)
    print("\n".join(paths))
    return 0


def cmd_bench(args) -> int:
    from bench import run_bench
    return run_bench(args)
