"""`analysis: {cka: true}`: linear CKA between the dense network and each
winning ticket, layer by layer, on the first 1,000 test images; the report
draws them as Figure 6's heatmaps."""
from __future__ import annotations

from workers import data
from workers.analysis import cka_between
from workers.selection import winning_rounds

from .base import Evaluation, dense_and_winners, model_at, register

IMAGES = 1000


class CKA(Evaluation):
    name, table = "cka", "cka"
    option = "cka"  # rule and default: Evaluation's, true/false
    help = "Linear CKA between the dense network and each winning ticket, layer by layer, on 1,000 test images."
    columns = {"trial_a": "string", "round_a": "int64", "trial_b": "string", "round_b": "int64",
               "layer": "string", "cka": "double"}
    sort_keys = ("trial_id", "round_b")
    report_after = "fig5"

    def rounds(self, metrics):
        return dense_and_winners(metrics)

    def compute(self, file, spec, store, metrics, opts, device):
        info = data.dataset_info(spec.data.dataset)
        _, _, test = data.load_dataset(spec.data.dataset, opts.data_root, **spec.data.params())
        x = test.x[:IMAGES]
        dense = model_at(spec, store, 0, info, device)
        rows = []
        for win in winning_rounds(metrics):
            ticket = model_at(spec, store, win, info, device)
            rows += [{"round_a": 0, "round_b": win, **r} for r in cka_between(dense, ticket, x, info)]
        return rows

    def rows(self, trial_id, doc):
        # Both networks are this trial's: the table can also hold pairs across trials.
        return [{"trial_a": trial_id, "round_a": r.get("round_a"), "trial_b": trial_id,
                 "round_b": r.get("round_b"), "layer": r.get("layer"), "cka": r.get("cka")}
                for r in doc.get("rows", [])]



EVALUATION = register(CKA())
