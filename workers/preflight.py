"""Before a sweep starts: everything its trials will read exists and fits.

A missing dataset, a subset size the data cannot give, missing CIFAR-10-C or
ImageNet weights: one clear error now, not N trials failing after hours of
training. Each registry checks its own part (datasets and subsets here,
evaluations their data, inits their weight files).

    check([(spec, opts), ...])
"""
from __future__ import annotations

from workers import data
from workers.evaluations import preflight as evaluations_preflight
from workers.models.inits import check_init_file
from workers.spec import RunOptions, TrialSpec


def check(trials: list[tuple[TrialSpec, RunOptions]]) -> None:
    """Raise the first problem (a DataError or InitError-like one-line error)."""
    datasets = {(s.data.dataset, o.data_root, tuple(sorted(s.data.params().items()))) for s, o in trials}
    for name, root, params in sorted(datasets, key=str):
        data.load_dataset(name, root, **dict(params))
    # The seed changes which images, never whether they exist: one split per size
    # suffices. No held-out images (fraction 1.0) is not an error: those trials
    # record no val_acc, and `--select val` says so.
    sizes = {(s.data.dataset, o.data_root, tuple(sorted(s.data.params().items())), s.data.fraction,
              s.data.images_per_class, s.eval.val_per_class) for s, o in trials}
    for name, root, params, fraction, ipc, val_per_class in sorted(sizes, key=str):
        _, train, _ = data.load_dataset(name, root, **dict(params))
        try:
            data.stratified_split(train.y, fraction=fraction, images_per_class=ipc, val_per_class=val_per_class,
                               seed=0)
        except data.DataError as e:
            raise data.DataError(f"{name}: {e}") from None
    evaluations_preflight(trials)
    for spec, opts in trials:
        check_init_file(spec.model.arch, spec.model.init, opts.init_path)
