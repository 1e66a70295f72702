"""What each `lth-sweep` verb does once its arguments are parsed (orchestrator/cli.py):
read the yaml or the sweep, call the engine, print. Heavy imports (Ray, pandas,
torch) stay inside the verb that needs them."""
from __future__ import annotations

import dataclasses
import json
import os
import sys

from orchestrator.errors import UsageError

DEFAULT_CONFIG = "experiments.yaml"


def _experiment(args) -> dict:
    """The validated experiment `-e` of `-c` (default ./experiments.yaml)."""
    from orchestrator.config import load_config
    path = args.config or DEFAULT_CONFIG
    cfg = load_config(path)
    if args.experiment not in cfg["experiments"]:
        raise UsageError(f"lth-sweep: error: {path}: no experiment {args.experiment!r}; "
                         f"known: {', '.join(cfg['experiments'])}")
    exp = cfg["experiments"][args.experiment]
    from orchestrator import adaptive
    try:  # --adaptive replaces the experiment's seeds; --budget-gpu-h needs adaptive ones
        exp = adaptive.with_flags(exp, getattr(args, "adaptive", None), getattr(args, "budget_gpu_h", None))
    except ValueError as e:
        raise UsageError(f"lth-sweep {args.cmd}: {e}") from None
    return exp


def _trials(args):
    """The experiment's trials; with adaptive seeds, those its decisions so far
    plan (from storage: orchestrator/adaptive.py)."""
    from orchestrator.grid import expand
    exp = _experiment(args)
    trials = expand(exp)
    from orchestrator import adaptive, adaptive_run
    settings = adaptive.settings_of(exp)
    if settings is None:
        return trials
    from workers.store import SweepStore
    sweep = SweepStore(args.storage, args.name or args.experiment)
    return adaptive_run.plan_from_storage(sweep, trials, settings, getattr(args, "budget_gpu_h", None))[0]


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
    from orchestrator import adaptive, adaptive_run
    from orchestrator.grid import expand, first_batch
    exp = _experiment(args)
    settings = adaptive.settings_of(exp)
    every = expand(exp)
    trials = first_batch(exp, every)
    cost = cost_estimate(trials)
    spread = None
    if settings:
        costs = adaptive_run.cell_costs(every)
        _budget(settings, costs, args)
        spread = adaptive_run.cost_range(settings, costs, args.budget_gpu_h)
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
                          "gpus": gpus, "cost": cost,
                          **({"adaptive": {**dataclasses.asdict(settings), **spread}} if settings else {})}))
        return 0
    from orchestrator.formatting import format_records
    rows = [{**{k: v for k, v in t.row().items() if k != "resources"},
             "cpu": t.resources["cpu"], "gpu": t.resources["gpu"], "rounds": t.spec.num_rounds,
             "epochs": t.spec.train.epochs} for t in trials]
    print(format_records(rows))
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
    if settings:
        from orchestrator.adaptive_views import plan_lines
        print(plan_lines(settings, spread))
    return 0


def _budget(settings, costs: dict, args) -> None:
    from orchestrator import adaptive_run
    try:
        adaptive_run.check_budget(settings, costs, args.budget_gpu_h)
    except ValueError as e:
        raise UsageError(f"lth-sweep {args.cmd}: {e}") from None


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
    from orchestrator import adaptive, adaptive_run
    from orchestrator.grid import expand
    from orchestrator.trackers import check, names_of
    exp = _experiment(args)
    settings = adaptive.settings_of(exp)
    trials = expand(exp)
    if args.allow_precision_change:  # a RunOptions field: not part of any trial's id
        trials = [dataclasses.replace(t, options=dataclasses.replace(t.options, allow_precision_change=True))
                  for t in trials]
    trackers = names_of(args.tracker, exp.get("trackers"))
    check(trackers)
    request = SweepRequest(
        trials=trials, experiment=args.experiment, sweep_name=name, storage=args.storage,
        address=args.address, num_cpus=args.num_cpus, num_gpus=args.num_gpus,
        max_concurrent=args.max_concurrent, max_failures=args.max_failures,
        wait_s=max(0.0, args.wait_for_nodes), plain=True if args.plain else None,
        trackers=tuple(trackers), verify=args.verify)
    if settings:
        _budget(settings, adaptive_run.cell_costs(trials), args)
        # Batch after batch, seeds only where a cell's claim is open (orchestrator/adaptive.py).
        rc, trials = adaptive_run.run(request, settings, args.budget_gpu_h)
    else:
        rc = run_sweep(request)
    sweep = _sweep(args, must_exist=True)
    if not settings:
        adaptive.forget_state(sweep)  # a fixed-seed run: the tables show every seed again
    from orchestrator.results import format_frame, load_results
    from orchestrator.tables import compare, family, notes, protocol_line
    flags = f"-e {args.experiment}" + (f" --name {args.name}" if args.name else "") + \
            (f" --storage {args.storage}" if args.storage != "./runs" else "")
    where = f"results: {sweep.fs.to_uri(sweep.results_dir)}  (lth-sweep query {flags} --compare; " \
            f"lth-sweep report {flags})"
    cells = len({t.spec.cell_id for t in trials})
    if cells > CLOSING_TABLE_CELLS:
        # A study's table is read with query/report, not scrolled past at every restart
        # (reading it whole is the table's every shard: seconds to minutes on S3).
        print(f"\n{cells} grid cells: {where}")
        return rc
    df = load_results(sweep)
    if settings:
        df = df[df["trial_id"].isin({t.trial_id for t in trials})]
    if len(df):
        table = compare(df, "val")
        extra: list[str] = []
        if settings:
            from orchestrator.adaptive_views import with_sequences
            table, extra = with_sequences(table, df, sweep)
        print(f"\nDense (round 0) vs winning ticket, test accuracy. {protocol_line('val', df)} {family(table)}")
        print(format_frame(_shown(table), "table"))
        for line in [*extra, *notes(table, "val")]:
            print(f"note: {line}")
        print(f"\n{where}")
    return rc


# `run` closes with the compare table of a sweep of at most this many grid cells.
CLOSING_TABLE_CELLS = 40


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


DEFAULT_EFFECT = 0.02


def cmd_query(args) -> int:
    from orchestrator.results import format_frame, load_results, results_dataset, run_sql
    from orchestrator.tables import (compare, family, notes, power, power_line, power_notes, protocol_line,
                                     protocols, winning_tickets)
    if args.effect is not None and not args.power:
        raise UsageError("lth-sweep query: --effect goes with --power")
    sweep = _sweep(args, must_exist=True)
    remarks: list[str] = []
    if args.sql:
        df = run_sql(sweep, args.sql)
    elif args.winning_tickets or args.compare or args.protocols or args.power:
        rows = results_dataset(sweep)  # duckdb scans the files; no pandas copy
        header = protocol_line(args.select, rows, args.ci)
        if args.winning_tickets:
            df = winning_tickets(rows, args.select)
        elif args.compare:
            from orchestrator import adaptive, adaptive_views
            state = adaptive.read_state(sweep)
            if state:  # an adaptive sweep: its planned seeds, and the confidence sequences beside
                rows = adaptive_views.planned_rows(rows, state)
            df = compare(rows, args.select, args.ci)
            extra: list[str] = []
            if state:
                df, extra = adaptive_views.with_sequences(df, rows, sweep)
            remarks = [*extra, *notes(df, args.select)]
            header += " " + family(df)
        elif args.power:
            effect = DEFAULT_EFFECT if args.effect is None else args.effect
            df = power(rows, args.select, effect, args.ci)
            header += " " + power_line(effect, args.ci)
            remarks = power_notes(df, effect)
        else:
            df = protocols(rows, args.ci)
            header = ("Gain selected on held-out images (val) and on the test split (test), from the same "
                      "lineages; selection_bias: the mean of gain_test - gain_val over the lineages both pair "
                      "(n_seeds_both). " + protocol_line(None, rows, args.ci))
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
    paths = write_report(sweep, args.out or f"report-{sweep.sweep}", select=args.select, ci=args.ci)
    print("\n".join(paths))
    return 0


def cmd_bench(args) -> int:
    from bench import run_bench
    return run_bench(args)
