"""`analysis: {probe: [cifar100, ...]}`: linear-probe transfer. Freeze the dense
network and each winning ticket, fit a linear classifier on the target
dataset's training split (workers/analysis.py `linear_probe`), record its
test accuracy."""
from __future__ import annotations

from workers import data as D
from workers.analysis import linear_probe

from .base import Evaluation, dense_and_winners, model_at


class Probe(Evaluation):
    name, table = "probe", "probe"
    option = "probe"
    columns = {"round": "int64", "target": "string", "accuracy": "double"}


    def rounds(self, metrics):
        return dense_and_winners(metrics)

    def compute(self, file, spec, store, metrics, opts, device):
        target = file.partition("_")[2]
        info = D.dataset_info(spec.data.dataset)
        t_info, train, test = D.load_dataset(target, opts.data_root)
        rows = []
        for k in self.rounds(metrics):
            model = model_at(spec, store, k, info, device)
            acc = linear_probe(model, train, test, t_info, seed=spec.seed, device=device,
                               num_classes=t_info.num_classes)
            rows.append({"round": k, "target": target, "accuracy": acc})
        return rows

    def preflight(self, trials):
        for name, root in sorted({(p, o.data_root) for _, o in trials for p in o.probe}, key=str):
            D.load_dataset(name, root)

    def check_experiment(self, datasets, value, err):
        for target in value or []:
            for ds in datasets:
                if D.dataset_info(target).channels != D.dataset_info(ds).channels:
                    err(f"{target} has {D.dataset_info(target).channels} channel(s), "
                        f"{ds} models take {D.dataset_info(ds).channels}")


EVALUATION = Probe()
