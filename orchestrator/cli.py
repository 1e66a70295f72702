"""`lth-sweep`: plan, run, status, query, bench. Thin: parse, call, print.

Every user error ends as one line on stderr and exit status 2, before
anything is started or written.
"""
from __future__ import annotations

import argparse
import json
import sys

EXIT_USAGE = 2


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage + message; the contract is one line
        raise UsageError(f"{self.prog}: {message}")


def _common(p: argparse.ArgumentParser, config: bool = True) -> None:
    if config:
        p.add_argument("-c", "--config", default="experiments.yaml", help="experiments file (default: %(default)s)")
    p.add_argument("-e", "--experiment", default="quickstart", help="experiment name (default: %(default)s)")
    p.add_argument("--name", help="sweep name (default: the experiment's name)")
    p.add_argument("--storage", default="./runs", help="local path or s3://bucket/prefix (default: %(default)s)")


def _select(p: argparse.ArgumentParser) -> None:
    p.add_argument("--select", choices=["val", "test"], default="val",
                   help="which split picks each trial's winning ticket: val (held-out images; default) or "
                        "test (the paper's protocol, biased upwards)")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="lth-sweep", description="Lottery-ticket (IMP) sweeps on Ray Tune.")
    sub = ap.add_subparsers(dest="cmd", parser_class=_Parser)

    p = sub.add_parser("plan", help="expand the grid; start nothing")
    _common(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("run", help="run or resume a sweep (the same command does both)")
    _common(p)
    p.add_argument("--address", help="Ray cluster address ('auto' inside a cluster); default: start a local Ray")
    p.add_argument("--num-cpus", type=float, help="CPUs of the local Ray")
    p.add_argument("--num-gpus", type=float, help="GPUs of the local Ray (fake ones on a machine without)")
    p.add_argument("--max-concurrent", type=int, help="at most N trials at once")
    p.add_argument("--max-failures", type=int, default=2, help="retries per trial (default: %(default)s)")
    p.add_argument("--wait-for-nodes", type=float, default=300, metavar="SECONDS",
                   help="with --address: wait this long for nodes (or the autoscaler) to offer the "
                        "resources a trial asks for, then fail (default: %(default)s)")

    p = sub.add_parser("status", help="progress of a sweep, from storage alone")
    _common(p, config=False)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("query", help="query the results table")
    _common(p, config=False)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--sql", help="SQL over the views `results` and `layers`")
    g.add_argument("--winning-tickets", action="store_true", help="best-val round of every trial")
    g.add_argument("--compare", action="store_true", help="dense vs winning ticket per grid cell")
    g.add_argument("--protocols", action="store_true",
                   help="the gain under both selections side by side, with the selection bias")
    _select(p)
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")

    p = sub.add_parser("report", help="write the paper's figures and tables as PNGs, report.md and report.html")
    _common(p, config=False)
    p.add_argument("sweep", nargs="?", help="sweep name (same as --name)")
    p.add_argument("--out", help="output folder (default: ./report-<sweep>)")
    _select(p)

    p = sub.add_parser("bench", help="measure the engine and the orchestrator on this machine")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--out", help="also write the JSON to this file")
    p.add_argument("--full", action="store_true", help="include the slow orchestrator benchmark")
    p.add_argument("--smoke", action="store_true",
                   help="tiny sizes, about a minute: checks the benchmark runs (its numbers mean nothing)")
    return ap


def main(argv=None) -> int:
    import signal
    # SIGTERM (preemption, `kill`) stops as gracefully as Ctrl-C, from the
    # first instant: the driver swaps in Tune's path while trials run.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        args = build_parser().parse_args(argv)
        if args.cmd is None:
            raise UsageError("lth-sweep: choose a command: plan, run, status, query, report, bench (see --help)")
        return {"plan": cmd_plan, "run": cmd_run, "status": cmd_status, "query": cmd_query,
                "report": cmd_report, "bench": cmd_bench}[args.cmd](args) or 0
    except KeyboardInterrupt:
        print("lth-sweep: stopped; committed rounds are safe. Re-run the same command to resume.",
              file=sys.stderr)
        return 130
    except Exception as e:  # user errors: one line, exit 2
        from orchestrator.config import ConfigError
        from orchestrator.driver import DriverError
        from orchestrator.results import ResultsError
        from workers.data import DataError
        from workers.selection import SelectionError
        from workers.store import StorageError
        if isinstance(e, (UsageError, ConfigError, DriverError, ResultsError, StorageError, DataError,
                          SelectionError)):
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

def _trials(args):
    from orchestrator.config import load_config
    from orchestrator.grid import expand
    cfg = load_config(args.config)
    if args.experiment not in cfg["experiments"]:
        raise UsageError(f"lth-sweep: error: {args.config}: no experiment {args.experiment!r}; "
                         f"known: {', '.join(cfg['experiments'])}")
    return expand(cfg["experiments"][args.experiment])


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
    if args.json:
        print(json.dumps({"experiment": args.experiment, "count": len(trials),
                          "trials": [t.row() for t in trials], "cost": cost}))
        return 0
    from orchestrator.results import format_frame
    import pandas as pd
    rows = [{**{k: v for k, v in t.row().items() if k != "resources"},
             "cpu": t.resources["cpu"], "gpu": t.resources["gpu"], "rounds": t.spec.num_rounds,
             "epochs": t.spec.train.epochs} for t in trials]
    print(format_frame(pd.DataFrame(rows), "table"))
    print(f"\n{len(trials)} trials, {cost['rounds']} rounds; asks cpu={cost['cpus']:g} gpu={cost['gpus']:g} "
          f"in total; ~{cost['train_images']:.3g} training images, roughly "
          f"{cost['gpu_hours_estimate']:g} GPU-hours at ~20k images/s")
    return 0


def cmd_run(args) -> int:
    from orchestrator.driver import run_sweep
    from workers.store import check_name
    name = check_name("sweep", args.name or args.experiment)
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise UsageError("lth-sweep run: --max-concurrent must be >= 1")
    for flag in ("num_cpus", "num_gpus"):
        v = getattr(args, flag)
        if v is not None and v < 0:
            raise UsageError(f"lth-sweep run: --{flag.replace('_', '-')} must be >= 0")
    trials = _trials(args)
    rc = run_sweep(trials=trials, experiment=args.experiment, sweep_name=name, storage=args.storage,
                   address=args.address, num_cpus=args.num_cpus, num_gpus=args.num_gpus,
                   max_concurrent=args.max_concurrent, max_failures=args.max_failures,
                   wait_s=max(0.0, args.wait_for_nodes))
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
    from orchestrator.status import format_status, sweep_status
    st = sweep_status(_sweep(args, must_exist=True))
    print(json.dumps(st) if args.json else format_status(st))
    return 0


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
