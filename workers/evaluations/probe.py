"""`analysis: {probe: [cifar100, ...]}`: linear-probe transfer. Freeze the dense
network and each winning ticket, fit a linear classifier on the target
dataset's training split (workers/analysis.py `linear_probe`), record its
test accuracy; the report's Table 4 compares them."""
from __future__ import annotations

from workers import data
from workers.analysis import HeadRecipe, linear_probe
from workers.spec import Rule

from .base import Evaluation, dense_and_winners, model_at, register


class Probe(Evaluation):
    name, table = "probe", "probe"
    option = "probe"
    rule, default = Rule(str, choices="workers.data:DATASETS", many=True), ()
    help = "A linear probe of the frozen dense network and winning tickets, fitted on each of these datasets."
    columns = {"round": "int64", "target": "string", "accuracy": "double"}
    sort_keys = ("trial_id", "round")
    report_after = "table3"

    def rounds(self, metrics):
        return dense_and_winners(metrics)

    def compute(self, file, spec, store, metrics, opts, device):
        target = file.partition("_")[2]
        info = data.dataset_info(spec.data.dataset)
        t_info, train, test = data.load_dataset(target, opts.data_root)
        rows = []
        for k in self.rounds(metrics):
            model = model_at(spec, store, k, info, device)
            acc = linear_probe(model, train, test, t_info, recipe=HeadRecipe(seed=spec.seed), device=device,
                               num_classes=t_info.num_classes)
            rows.append({"round": k, "target": target, "accuracy": acc})
        return rows

    def preflight(self, trials):
        for name, root in sorted({(p, o.data_root) for _, o in trials for p in self.value(o)}, key=str):
            data.load_dataset(name, root)

    def check_experiment(self, datasets, value, err):
        for target in value or []:
            for ds in datasets:
                if data.dataset_info(target).channels != data.dataset_info(ds).channels:
                    err(f"{target} has {data.dataset_info(target).channels} channel(s), "
                        f"{ds} models take {data.dataset_info(ds).channels}")



EVALUATION = register(Probe())
