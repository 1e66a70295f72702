"""The scrub follows what was built on a damaged round, through the CLI.

A sweep with an imp parent and the two methods built from its rounds
(same_layer_sparse, small_dense) and an evaluation (cka) runs uninterrupted.
A copy of it has one parent round damaged: `verify` names the corrupt file
and lists the dependents' rounds and the evaluation files as stale;
`run --verify` redoes them all and ends with the table of the uninterrupted
sweep (bit for bit on the CPU), every table and evaluation included."""
import json
import shutil

import pandas as pd
import pytest

from orchestrator import results as R
from tests.helpers import TINY_YAML, cli
from workers.store import SweepStore

pytestmark = pytest.mark.ray

YAML = (TINY_YAML.replace("fractions: [0.1, 0.2]", "fractions: [0.1]")
        .replace("augmentations: [none, basic]", "augmentations: [none]")
        .replace("methods: [imp]", "methods: [imp, same_layer_sparse, small_dense]")
        .replace("epochs: 3", "epochs: 2")
        + "    analysis: {cka: true}\n")
METRICS = ["density", "val_acc", "test_acc", "train_acc"]


def _sorted(df: pd.DataFrame, keys) -> pd.DataFrame:
    return df.sort_values(keys).reset_index(drop=True)


def test_run_verify_redoes_the_dependents_and_evaluations_of_a_damaged_round(tmp_path, shared_ray):
    ref = tmp_path / "ref"
    ref.mkdir()
    (ref / "experiments.yaml").write_text(YAML)
    r = cli("run", "-e", "tiny", *shared_ray, cwd=ref, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    d = tmp_path / "damaged"
    shutil.copytree(ref, d)
    sweep = SweepStore(str(d / "runs"), "tiny")
    df = R.load_results(sweep)
    method = df.groupby("trial_id")["method"].first()
    parent = method[method == "imp"].index[0]
    children = sorted(method[method != "imp"].index)
    lin = sweep.lineage(parent)
    before = {t: {k: m["manifest_sha256"] for k, m in sweep.lineage(t).manifests().items()} for t in method.index}
    mask = f"{lin.round_dir(1)}/mask.safetensors"
    raw = bytearray(open(mask, "rb").read())
    raw[-1] ^= 0xFF
    open(mask, "wb").write(bytes(raw))

    r = cli("verify", "-e", "tiny", cwd=d)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"{parent} round 1: mask.safetensors" in r.stdout
    out = json.loads(cli("verify", "-e", "tiny", "--json", cwd=d).stdout)
    assert [(c["trial_id"], c["round"]) for c in out["corrupt"]] == [(parent, 1)]
    stale_rounds = {(s["trial_id"], s["round"]) for s in out["stale"] if "round" in s}
    assert stale_rounds == {(c, 1) for c in children}, out["stale"]
    # cka is stale where it read a round that is redone (round 1 on of these three
    # lineages); one that read only round 0 stays, and the run recomputes it only if
    # the redone rounds move its winning round (workers/evaluations: current_doc).
    read = {t: {int(k) for k in sweep.lineage(t).read_analysis("cka")["rounds"]} for t in method.index}
    stale_cka = {s["trial_id"] for s in out["stale"] if s.get("analysis") == "cka"}
    assert parent in stale_cka and stale_cka == {t for t in (parent, *children) if max(read[t]) >= 1}, out["stale"]

    r = cli("run", "-e", "tiny", *shared_ray, "--verify", cwd=d, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    after = json.loads(cli("verify", "-e", "tiny", "--json", cwd=d).stdout)
    assert after["corrupt"] == [] and after["stale"] == [], after
    # Round 0 of every lineage is untouched; round 1 on of the parent and both children is new.
    for t in method.index:
        now = {k: m["manifest_sha256"] for k, m in sweep.lineage(t).manifests().items()}
        assert now[0] == before[t][0] and sorted(now) == sorted(before[t])
        assert (now[1] != before[t][1]) == (t in (parent, *children))
    # ... and the tables are those of the uninterrupted sweep, bit for bit on the CPU.
    ref_sweep = SweepStore(str(ref / "runs"), "tiny")
    got, want = _sorted(R.load_results(sweep), ["trial_id", "round"]), _sorted(R.load_results(ref_sweep),
                                                                              ["trial_id", "round"])
    assert got[["trial_id", "round"]].equals(want[["trial_id", "round"]])
    assert got[METRICS].equals(want[METRICS])
    assert (pd.read_parquet(d / "runs" / "tiny" / "results").shape[0] == len(want))
    cka_got, cka_want = (R.to_pandas(R.load_table(s, "cka")) for s in (sweep, ref_sweep))
    keys = [c for c in cka_want.columns if cka_want[c].dtype == object and c != "sweep"]
    value_cols = [c for c in cka_want.columns if pd.api.types.is_float_dtype(cka_want[c])]
    assert len(cka_got) == len(cka_want) > 0
    assert _sorted(cka_got, keys)[value_cols].equals(_sorted(cka_want, keys)[value_cols])
