"""`lth-sweep report` on a real (tiny, hand-committed) sweep and on a partial one."""
import pytest

from orchestrator import results as R
from orchestrator.cli import main
from orchestrator.report import accuracy_vs_density
from workers.store import SweepStore


def commit(st, tid, k, val, test, fraction=0.1, seed=0):
    spec = {"data": {"dataset": "digits", "fraction": fraction, "images_per_class": None, "augmentation": "none"},
            "model": {"arch": "resnet18", "width": 1.0, "init": "random"}, "prune": {"method": "imp", "rounds": 2},
            "selection": {"selection": "val"}, "seed": seed, "train": {}}
    m = {"trial_id": tid, "round": k, "density": 0.8 ** k, "val_acc": val, "test_acc": test, "train_acc": 1.0,
         "epochs": 3, "wall_s": 1.0, "images_per_s": 10.0, "node": "n", "gpu_ids": "", "device": "cpu",
         "started_at": "2026-01-01T00:00:00+00:00", "finished_at": "2026-01-01T00:00:01+00:00",
         "checkpoint_uri": "x", "layers": [], "history": []}
    st.lineage(tid).write_spec(spec)
    st.lineage(tid).commit_round(k, {"metrics.json": b"{}"}, m, spec)


def test_report_tables(tmp_path, capsys):
    st = SweepStore(str(tmp_path / "runs"), "s")
    for seed, tid in ((0, "aa00000000000000"), (1, "ab00000000000000")):
        commit(st, tid, 0, 0.5, 0.50 + seed / 10, seed=seed)
        commit(st, tid, 1, 0.7, 0.60 + seed / 10, seed=seed)  # the winning ticket
    commit(st, "ac00000000000000", 0, 0.4, 0.4, fraction=0.2)  # a partial lineage: round 0 only
    R.Collector(st).rebuild()
    rc = main(["report", "s", "--storage", str(tmp_path / "runs"), "--out", str(tmp_path / "rep")])
    assert rc == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "0/3 trials done" in md and "5/9 rounds committed" in md  # a partial sweep reports
    # seed-averaged dense 0.55 vs ticket 0.65: gain 0.1
    assert "| 0.5500 |" in md and "| 0.6500 |" in md and "| 0.1000 |" in md
    assert "<table" in html and "0.6500" in html
    df = accuracy_vs_density(R.load_results(st))
    assert list(df["round"]) == [0, 1]
    col = [c for c in df.columns if "0.2" in c][0]
    assert df[col].isna().tolist() == [False, True]  # missing stays missing, never zero


def test_report_of_unknown_sweep_is_one_line(tmp_path, capsys):
    rc = main(["report", "nope", "--storage", str(tmp_path)])
    assert rc == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1
