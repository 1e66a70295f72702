"""`lth-sweep report` on hand-committed sweeps (known numbers), a partial one,
frames with columns the results schema does not have yet, and a real tiny sweep."""
import os

import pandas as pd
import pytest

from orchestrator import report as REP
from orchestrator.cli import main
from orchestrator.report import accuracy_vs_density, write_report
from orchestrator.report.evaluation_views import figure_letters, robustness_views
from orchestrator.results import Collector, load_layers, load_results
from tests.helpers import assert_png
from workers.spec import TrialSpec, spec_fields
from workers.store import SweepStore


def commit(st, tid, k, val, test, fraction=0.1, seed=0, augmentation="none", method="imp", layers=(), rounds=2):
    spec = {"data": {"dataset": "digits", "fraction": fraction, "images_per_class": None,
                     "augmentation": augmentation},
            "model": {"arch": "resnet18", "width": 1.0, "init": "random"},
            "prune": {"method": method, "rounds": rounds}, "seed": seed, "train": {}}
    m = {"trial_id": tid, "round": k, "density": 0.8 ** k, "val_acc": val, "test_acc": test, "train_acc": 1.0,
         "epochs": 3, "wall_s": 1.0, "images_per_s": 10.0, "node": "n", "gpu_ids": "", "device": "cpu",
         "started_at": "2026-01-01T00:00:00+00:00", "finished_at": "2026-01-01T00:00:01+00:00",
         "checkpoint_uri": "x", "layers": list(layers), "history": []}
    st.lineage(tid).write_spec(spec)
    st.lineage(tid).commit_round(k, {"metrics.json": b"{}"}, m, spec)


def test_report_tables(tmp_path, capsys):
    st = SweepStore(str(tmp_path / "runs"), "s")
    for seed, tid in ((0, "aa00000000000000"), (1, "ab00000000000000")):
        commit(st, tid, 0, 0.5, 0.50 + seed / 10, seed=seed, rounds=1)
        commit(st, tid, 1, 0.7, 0.60 + seed / 10, seed=seed, rounds=1)  # the winning ticket
    commit(st, "ac00000000000000", 0, 0.4, 0.4, fraction=0.2)  # a partial lineage: round 0 only
    Collector(st).rebuild()
    rc = main(["report", "s", "--storage", str(tmp_path / "runs"), "--out", str(tmp_path / "rep")])
    assert rc == 0
    md = (tmp_path / "rep" / "report.md").read_text(encoding="utf-8")
    html = (tmp_path / "rep" / "report.html").read_text(encoding="utf-8")
    assert "2/3 trials done" in md and "5/7 rounds committed" in md  # a partial sweep reports
    # seed-averaged dense 0.55 vs ticket 0.65: gain 0.1
    assert "| 0.5500 |" in md and "| 0.6500 |" in md and "| 0.1000 |" in md
    assert "<table" in html and "0.6500" in html
    df = accuracy_vs_density(load_results(st))
    assert list(df["round"]) == [0, 1]
    col = [c for c in df.columns if "0.2" in c][0]
    assert df[col].isna().tolist() == [False, True]  # missing stays missing, never zero
    # Views without their data are a one-line note, not an error.
    for note in ("no IMP trial has a value of acc_cifar10c yet",
                 "no finished random_prune, same_layer_sparse, small_dense trials",
                 "no cka/ table", "no per-layer densities", "no finished trials on cifar100 or imagenet",
                 "no finished trials on cifar100_lt", "no probe/ table"):
        assert note in md and note in html
    printed = capsys.readouterr().out.split()
    assert sorted(os.path.basename(p) for p in printed if p.endswith(".png")) == [
        "fig1_accuracy_vs_density.png", "fig2_data_efficiency.png", "fig2b_gain.png"]


def test_report_of_a_sweep_without_rounds(tmp_path):
    st = SweepStore(str(tmp_path / "runs"), "s")
    st.lineage("aa00000000000000").write_spec({"seed": 0})
    paths = write_report(st, str(tmp_path / "rep"))
    assert [os.path.basename(p) for p in paths] == ["report.md", "report.html"]
    assert "_Skipped: no IMP rounds yet._" in (tmp_path / "rep" / "report.md").read_text(encoding="utf-8")


def layer_entries(k):
    return [{"layer": "conv1.weight", "density": 0.9 ** k, "numel": 100},
            {"layer": "layer1.0.conv1.weight", "density": 0.7 ** k, "numel": 300}]


# tid: (augmentation, seed, method, fraction, [(val_acc, test_acc) of round 0, 1, ...])
TRIALS = {
    "a000000000000000": ("none", 0, "imp", 0.1, [(0.50, 0.50), (0.70, 0.60), (0.70, 0.62)]),  # val tie: round 2
    "a100000000000000": ("none", 1, "imp", 0.1, [(0.52, 0.54), (0.72, 0.70), (0.60, 0.58)]),
    # basic beats none on validation for the dense round and loses for the ticket; test says the opposite
    "b000000000000000": ("basic", 0, "imp", 0.1, [(0.60, 0.48), (0.65, 0.70), (0.55, 0.60)]),
    "b100000000000000": ("basic", 1, "imp", 0.1, [(0.58, 0.50), (0.67, 0.68), (0.50, 0.55)]),
    "c000000000000000": ("none", 0, "imp", 0.2, [(0.40, 0.45)]),  # partial: round 0 of 3 only
    "e000000000000000": ("none", 1, "imp", 0.2, [(0.40, 0.45), (0.30, 0.35), (0.20, 0.25)]),  # dense wins
    "d000000000000000": ("none", 0, "random_prune", 0.1, [(0.50, 0.51), (0.55, 0.57), (0.40, 0.45)]),
}


@pytest.fixture(scope="module")
def paper(tmp_path_factory):
    """The sweep of TRIALS plus optional cka/ and probe/ tables, and its report."""
    root = tmp_path_factory.mktemp("paper")
    st = SweepStore(str(root / "runs"), "p")
    for tid, (aug, seed, method, fraction, rounds) in TRIALS.items():
        for k, (val, test) in enumerate(rounds):
            commit(st, tid, k, val, test, fraction, seed, aug, method, layer_entries(k) if method == "imp" else (),
                   rounds=2)  # every lineage has 3 rounds; c is still at round 0
    Collector(st).rebuild()
    os.makedirs(st.path("probe"))
    pd.DataFrame({"trial_id": ["a000000000000000"] * 3 + ["a100000000000000"] * 2 + ["b000000000000000"],
                  "round": [0, 1, 2, 0, 1, 0], "target": "cifar10",
                  "accuracy": [0.30, 0.99, 0.40, 0.32, 0.44, 0.50]}).to_parquet(st.path("probe", "part-0.parquet"))
    os.makedirs(st.path("cka"))
    pd.DataFrame({"trial_a": ["a000000000000000"] * 2 + ["a100000000000000"] * 2, "round_a": 0,
                  "trial_b": ["a000000000000000"] * 2 + ["a100000000000000"] * 2, "round_b": [2, 2, 1, 1],
                  "layer": ["conv1.weight", "layer1.0.conv1.weight"] * 2,
                  "cka": [0.9, 0.5, 0.7, 0.3]}).to_parquet(st.path("cka", "part-0.parquet"))
    paths = write_report(st, str(root / "rep"))
    return st, load_results(st), paths, (root / "rep" / "report.md").read_text(encoding="utf-8"), \
        (root / "rep" / "report.html").read_text(encoding="utf-8")


def test_winning_ticket_is_best_val_and_ties_go_to_the_sparser(paper):
    _, df, *_ = paper
    t = REP.trial_summary(df).set_index("trial_id")
    assert t.loc["a000000000000000", ["ticket_round", "ticket_test_acc"]].tolist() == [2, 0.62]
    assert t.loc["a100000000000000", ["ticket_round", "ticket_test_acc"]].tolist() == [1, 0.70]
    assert t.loc["c000000000000000", "ticket_round"] == 0  # only round 0 so far: the best is the dense one
    curves = REP.density_curves(df[df["trial_id"] == "a000000000000000"])
    assert curves.loc[curves["star"], "round"].tolist() == [2]  # the starred point follows the same rule


def test_table1_picks_aug_star_by_mean_val_and_averages_seeds(paper):
    _, df, _, md, html = paper
    t = REP.methods_table(REP.trial_summary(df)).set_index(["method", "size"])
    imp = t.loc[("imp", "10%")]
    # dense: basic's mean val 0.59 beats none's 0.51; ticket: none's 0.71 beats basic's 0.66
    assert (imp["dense_aug"], imp["ticket_aug"]) == ("basic", "none")
    assert imp["dense_test_acc_mean"] == pytest.approx(0.49)
    assert imp["dense_test_acc_std"] == pytest.approx(0.014142, abs=1e-6)
    assert imp["ticket_test_acc_mean"] == pytest.approx(0.66)
    assert imp["ticket_test_acc_std"] == pytest.approx(0.056569, abs=1e-6)
    assert imp["ticket_density_mean"] == pytest.approx((0.64 + 0.8) / 2) and imp["gain"] == pytest.approx(0.17)
    assert t.loc[("random_prune", "10%"), "gain"] == pytest.approx(0.06)
    row = "| imp | digits | resnet18 | 10% | 0.4900 ± 0.0141 | basic | 0.6600 ± 0.0566 | none | 0.7200 | 0.1700 |"
    assert row in md
    # one seed: no std shown (not ± 0)
    assert "| imp | digits | resnet18 | 20% | 0.4500 | none | 0.4500 | none | 1.0000 | 0.0000 |" in md
    assert "0.4900 ± 0.0141" in html


def test_missing_cells_are_shown_missing_not_zero():
    # A method whose lineage has no round 0 (no dense network) and a trial with no val_acc at all.
    df = frame([dict(trial_id="s0", method="small_dense", round=1, density=0.5, val_acc=0.6, test_acc=0.55),
                dict(trial_id="n0", method="imp", round=0, density=1.0, val_acc=None, test_acc=0.4)])
    t = REP.methods_table(REP.trial_summary(df)).set_index("method")
    assert t.loc["small_dense", "ticket_test_acc_mean"] == pytest.approx(0.55)
    assert t.loc["small_dense", ["dense_test_acc_mean", "gain"]].isna().all()
    assert t.loc["imp", ["dense_test_acc_mean", "ticket_test_acc_mean", "gain"]].isna().all()
    md = "\n".join(REP.render_md("t", REP.table_methods(REP.trial_summary(df))))
    assert "| small_dense | digits | resnet18 | 10% | – | – | 0.5500 | none | 0.5000 | – |" in md
    assert "| imp | digits | resnet18 | 10% | – | – | – | – | – | – |" in md and "0.0000" not in md


def test_figure_data(paper):
    _, df, *_ = paper
    trials = REP.trial_summary(df)
    p = REP.size_points(trials, "test_acc").set_index(["series", "xtick"])
    assert p.loc[("dense, no augmentation", "10%"), ["mean", "std"]].tolist() == pytest.approx([52.0, 2.828427])
    assert p.loc[("dense, aug*", "10%"), ["mean", "note"]].tolist() == [pytest.approx(49.0), "basic"]
    assert p.loc[("winning ticket, aug*", "10%"), ["mean", "note"]].tolist() == [pytest.approx(66.0), "none"]
    assert p.loc[("winning ticket, no augmentation", "20%"), "mean"] == pytest.approx(45.0)
    assert pd.isna(p.loc[("winning ticket, no augmentation", "20%"), "std"])
    bars = REP.capacity_bars(trials).set_index(["group", "series"])["mean"]
    assert bars.to_dict() == pytest.approx({("none", "dense"): 52.0, ("none", "winning ticket"): 66.0,
                                            ("none", "random_prune"): 57.0, ("basic", "dense"): 49.0,
                                            ("basic", "winning ticket"): 69.0})  # no random_prune bar for basic
    lines = REP.layer_density_lines(df, load_layers(paper[0])).set_index(["series", "layer"])["density"]
    # sparsest rounds: 2 in every finished lineage: conv1 0.9**2, layer1 0.7**2
    assert lines.to_dict() == pytest.approx({
        ("train 10% (overall 64%)", "conv1"): 81.0, ("train 10% (overall 64%)", "layer1.0.conv1"): 49.0,
        # c (unfinished) at round 0, e at round 2
        ("train 20% (overall 82%)", "conv1"): 90.5, ("train 20% (overall 82%)", "layer1.0.conv1"): 74.5})


def test_optional_probe_and_cka_tables(paper):
    st, df, _, md, _ = paper
    trials = REP.trial_summary(df)
    probe = REP.probe_numbers(REP.load_optional(st, "probe"), trials).set_index("augmentation")
    # dense = round 0, ticket = the winning round (a0's tie -> round 2, not round 1's 0.99)
    assert probe.loc["none", ["dense_mean", "ticket_mean", "gain"]].tolist() == pytest.approx([0.31, 0.42, 0.11])
    assert "| digits | resnet18 | 10% | basic | imp | cifar10 | 0.5000 | – | – |" in md
    cells = REP.cka_cells(REP.load_optional(st, "cka"), trials).set_index(["row", "layer"])["value"]
    assert cells.to_dict() == pytest.approx({("digits 10% none imp: dense vs ticket", "conv1"): 0.8,
                                             ("digits 10% none imp: dense vs ticket", "layer1.0.conv1"): 0.4})
    assert REP.load_optional(st, "absent").empty


def test_figures_are_pngs_linked_and_embedded(paper):
    _, _, paths, md, html = paper
    pngs = [p for p in paths if p.endswith(".png")]
    assert sorted(os.path.basename(p) for p in pngs) == [
        "fig1_accuracy_vs_density.png", "fig2_data_efficiency.png", "fig2b_gain.png", "fig4_capacity.png",
        "fig5_layer_density.png", "fig6_cka.png"]
    for p in pngs:
        assert_png(p)
        assert f"]({os.path.basename(p)})" in md
    assert html.count('src="data:image/png;base64,') == len(pngs)
    assert "_Skipped: no IMP trial has a value of acc_cifar10c yet._" in md


def frame(rows):
    """A results-like frame: every row a digits/resnet18/10%/none/imp/seed 0 trial unless it says otherwise,
    with the cell columns as the collector writes them: the cell of the trial's full spec (the spec fields
    among its columns, defaults for the rest); every lineage here is finished at the rounds it has."""
    base = dict(dataset="digits", fraction=0.1, images_per_class=None, augmentation="none", method="imp",
                arch="resnet18", seed=0)
    df = pd.DataFrame([{**base, **r} for r in rows])
    df["images_per_class"] = df["images_per_class"].astype("Int64")
    cells = {}
    for tid, g in df.groupby("trial_id"):
        spec: dict = {}
        for part, f in spec_fields():
            v = g[f.name].iloc[0] if f.name in g else None
            if v is not None and not pd.isna(v):
                (spec.setdefault(part, {}) if part else spec)[f.name] = v.item() if hasattr(v, "item") else v
        ts = TrialSpec.from_dict(spec)
        cells[tid] = (ts.cell_json(), ts.cell_id, len(g))
    for i, col in enumerate(("cell", "cell_id", "lineage_rounds")):
        df[col] = [cells[t][i] for t in df["trial_id"]]
    return df


def test_robustness_long_tail_and_many_class_from_extra_columns():
    df = frame([
        dict(trial_id="r0", dataset="cifar10", round=0, density=1.0, val_acc=0.5, test_acc=0.5, acc_cifar10c=0.30),
        dict(trial_id="r0", dataset="cifar10", round=1, density=0.8, val_acc=0.6, test_acc=0.6, acc_cifar10c=0.40),
        dict(trial_id="l1", dataset="cifar100_lt", imbalance=10, round=0, density=1.0, val_acc=0.3, test_acc=0.3),
        dict(trial_id="l1", dataset="cifar100_lt", imbalance=10, round=1, density=0.8, val_acc=0.35, test_acc=0.33),
        dict(trial_id="l2", dataset="cifar100_lt", imbalance=100, round=0, density=1.0, val_acc=0.2, test_acc=0.2),
        dict(trial_id="m0", dataset="cifar100", fraction=None, images_per_class=10, round=0, density=1.0,
             val_acc=0.25, test_acc=0.24),
    ])
    df["acc_cifar10_2"] = None  # present but empty: skipped, never plotted as zero
    trials = REP.trial_summary(df)
    p = REP.size_points(trials, "acc_cifar10c").set_index("series")["mean"]
    assert p.to_dict() == pytest.approx({"dense, no augmentation": 30.0, "winning ticket, no augmentation": 40.0})
    assert_png(REP.fig_robustness(trials, "acc_cifar10c").png)
    with pytest.raises(REP.Skip, match="no IMP trial has a value of acc_cifar10_2"):
        REP.fig_robustness(trials, "acc_cifar10_2")
    lt = REP.table_long_tail(trials).frame
    # (rows in the order of their cells' JSON, where imbalance 100 sorts before 10)
    assert sorted(lt[["imbalance", "winning ticket + aug*", "ticket density", "gain"]].values.tolist()) == [
        ["10", "0.3300", "0.8000", "0.0300"], ["100", "0.2000", "1.0000", "0.0000"]]
    many = REP.table_many_class(trials).frame
    assert many[["dataset", "data size", "dense + aug*"]].values.tolist() == [["cifar100", "10 img/class", "0.2400"]]
    assert_png(REP.fig_data_efficiency(trials).png)  # a fraction panel and an images-per-class panel


def test_every_caption_states_protocol_and_budget(paper, tmp_path):
    st, _, _, md, html = paper
    sections = [s for s in md.split("\n## ")[1:] if "_Skipped:" not in s]
    assert len(sections) >= 10
    for s in sections:
        title, body = s.split("\n", 1)
        assert "Validation budget:" in body and "BatchNorm statistics" in body, title
        assert "Winning ticket: selection on held-out validation images" in body or "(val) and on the test" in body
    assert "selection bias" in md and html.count("Validation budget:") >= len(sections)
    write_report(st, str(tmp_path / "t"), select="test")
    test_md = (tmp_path / "t" / "report.md").read_text(encoding="utf-8")
    assert "selection on the test split (the paper's protocol" in test_md


def test_cells_differing_only_in_width_get_their_own_rows():
    rows = []
    for width, acc in ((0.25, 0.5), (0.5, 0.6)):
        for seed in (0, 1):
            rows += [dict(trial_id=f"w{width}{seed}", width=width, seed=seed, round=0, density=1.0, val_acc=acc,
                          test_acc=acc), dict(trial_id=f"w{width}{seed}", width=width, seed=seed, round=1,
                                              density=0.8, val_acc=acc + 0.1, test_acc=acc + 0.05)]
    trials = REP.trial_summary(frame(rows))
    t = REP.table_methods(trials).frame
    assert t["width"].tolist() == ["0.25", "0.5"]
    assert t["dense + aug*"].tolist() == ["0.5000 ± 0.0000", "0.6000 ± 0.0000"]
    c = REP.table_compare(frame(rows), "val").frame
    assert c["width"].tolist() == ["0.25", "0.5"] and (c["seeds"] == 2).all()
    curves = REP.density_curves(frame(rows))
    assert curves["panel"].nunique() == 2


def test_the_compare_table_marks_what_survives_holm_and_the_power_section_plans_seeds():
    rows = []
    # 5% images: three seeds with nearly the same large gain; 10%: gains of either sign.
    for fraction, gains in ((0.05, (0.20, 0.21, 0.19)), (0.1, (0.05, -0.04, 0.01))):
        for seed, g in enumerate(gains):
            rows += [dict(trial_id=f"f{fraction}s{seed}", fraction=fraction, seed=seed, round=0, density=1.0,
                          val_acc=0.5, test_acc=0.5),
                     dict(trial_id=f"f{fraction}s{seed}", fraction=fraction, seed=seed, round=1, density=0.8,
                          val_acc=0.6, test_acc=0.5 + g)]
    t = REP.table_compare(frame(rows), "val")
    shown = t.frame.set_index("data size")
    assert shown["survives Holm (p < 0.05)"].to_dict() == {"5%": "yes", "10%": "no"}
    assert shown.loc["5%", "interval"] == "t over seeds (no per-image predictions)"
    assert "Holm-adjusted over the 2 row(s)" in t.caption and "'survives Holm' marks" in t.caption
    from orchestrator import power as PW
    shown = REP.table_power(frame(rows), "val").frame.set_index("data size")
    sd = pd.Series([0.05, -0.04, 0.01]).std()
    # these rows carry no per-image predictions: the seed-level t-test's answer, labelled so
    assert shown.loc["10%", "seeds for a gain of 0.02"] == str(PW.seeds_needed(0.02, sd))
    assert shown.loc["10%", "test"] == "t over seeds"


def test_report_order_and_titles_with_the_evaluations_views_in_place(paper):
    _, _, _, md, _ = paper
    titles = [s.split("\n", 1)[0] for s in md.split("\n## ")[1:]]
    assert titles == [
        "Figure 1: test accuracy against density",
        "Figure 2: dense vs winning ticket against training-data size",
        "Figure 2b: paired gain of the winning ticket, with 95% intervals",
        "Figure 3a: robustness on CIFAR-10-C", "Figure 3b: robustness on CIFAR-10.2",
        "Figure 4: capacity and connectivity controls",
        "Figure 5: layer-wise density of the sparsest ticket",
        "Figure 6: CKA heatmaps",
        "Dense vs winning ticket per grid cell, paired over seeds",
        "Adaptive seeds: which claims resolved, and at how many seeds",
        "How many seeds: the gains each cell can detect",
        "Both selection protocols side by side",
        "Table 1: methods x datasets, dense + aug* vs winning ticket + aug*",
        "Table 2: many-class subsets",
        "Table 3: long-tail (cifar100_lt)",
        "Table 4: linear probe, dense vs winning ticket",
        "Test accuracy against round/density (mean over seeds)",
        "Winning ticket of every trial"]


def test_every_robustness_column_gets_its_own_figure_letter():
    assert figure_letters(3) == ["a", "b", "c"] and figure_letters(28)[-2:] == ["aa", "ab"]
    df = frame([dict(trial_id="r0", dataset="cifar10", round=k, density=0.8 ** k, val_acc=0.5 + k / 10,
                     test_acc=0.5 + k / 10) for k in (0, 1)])
    # A registry with three suites: their columns as the trial summary would carry them.
    trials = REP.trial_summary(df).assign(**{f"{role}_{c}": 0.5 for role in ("dense", "ticket")
                                             for c in ("acc_x", "acc_y", "acc_z")})
    report = REP.ReportInputs(sweep=None, results=df, select="val", trials=trials)
    views = robustness_views(report, {"acc_x": "X", "acc_y": "Y", "acc_z": "Z"})
    assert [title for title, _ in views] == ["Figure 3a: robustness on X", "Figure 3b: robustness on Y",
                                             "Figure 3c: robustness on Z"]
    assert views[2][1]().filename == "fig3_robustness_acc_z.png"  # the third suite is drawn, not dropped


def test_trait_tables_take_their_datasets_from_the_registry():
    assert REP.datasets_with("many_class") == ["cifar100", "imagenet"]
    assert REP.datasets_with("long_tail") == ["cifar100_lt"]
    df = frame([dict(trial_id="m0", dataset="imagenet", round=0, density=1.0, val_acc=0.25, test_acc=0.24)])
    many = REP.table_many_class(REP.trial_summary(df))
    assert many.frame["dataset"].tolist() == ["imagenet"] and "cifar100, imagenet" in many.caption


def _figures_drawn(monkeypatch, build) -> list:
    """The matplotlib figures `build()` draws, laid out as saved, still open."""
    from orchestrator.report import figures as FIG
    drawn = []

    def keep(fig, title):
        fig.suptitle(title)
        fig.canvas.draw()  # constrained layout and legends placed as in the PNG
        drawn.append(fig)
        return b""
    monkeypatch.setattr(FIG, "_png", keep)
    build()
    return drawn


def test_panels_go_by_data_size_in_numeric_order_and_legends_leave_the_data_alone(monkeypatch):
    """Figure 1 of a study at 5, 10 and 50 images per class (cell ids order them
    otherwise): its panels read 5, 10, 50, and no panel's legend overlaps the
    panel's data area or any plotted point."""
    import matplotlib.pyplot as plt
    from orchestrator.report.views import fig_accuracy_density
    rows = []
    for per_class in (50, 10, 5):
        for aug in ("none", "basic"):
            tid = f"t{per_class}{aug}"
            for k in range(3):
                rows.append(dict(trial_id=tid, fraction=None, images_per_class=per_class, augmentation=aug,
                                 round=k, density=0.8 ** k, val_acc=0.5 + 0.01 * k + per_class / 1000,
                                 test_acc=0.5 + 0.02 * k))
    df = frame(rows)
    figs = _figures_drawn(monkeypatch, lambda: fig_accuracy_density(df, "val"))
    assert len(figs) == 1
    axes = [ax for ax in figs[0].axes if ax.get_visible() and ax.get_title()]
    sizes = [int(t.split("train ")[1].split(" ")[0]) for t in (ax.get_title() for ax in axes)]
    assert sizes == [5, 10, 50], [ax.get_title() for ax in axes]
    renderer = figs[0].canvas.get_renderer()
    for ax in axes:
        legend = ax.get_legend().get_window_extent(renderer)
        assert not legend.overlaps(ax.get_window_extent(renderer)), ax.get_title()
        for line in ax.get_lines():
            xy = ax.transData.transform(line.get_xydata())
            assert not any(legend.contains(x, y) for x, y in xy), (ax.get_title(), line.get_label())
    plt.close("all")
