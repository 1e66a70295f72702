"""The Ray Tune adapter: one Tune trial per unit (orchestrator/grid.py `units`):
a lineage, or a group of same-shape lineages fused into one program.

    trainable.py  what a trial runs: a unit's config -> run_group -> evaluations
                  (workers.* only; handed its report function, so tests run it without Tune)
    trial.py      Tune's entry point for that (the only module a trial process imports)
    searcher.py   UnitSearcher: releases a unit once the lineages it is built from finished
    callback.py   ResultsCallback: the driver's side (results table, progress, trackers)
    ray_start.py  starting or joining Ray quietly, waiting for nodes
    run.py        run(): the Tuner, signals, and the exit status

Only run.py, trial.py and callback.py import Ray Tune; importing this package
imports nothing.
"""
