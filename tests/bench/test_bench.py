"""The benchmarks run through the real code paths at toy sizes; timings are never asserted."""
import json

import pytest
import torch

from bench.packed import bench_packed
from tests.helpers import cli

# docs/DESIGN's `bench --json` keys, plus the steady-state orchestrator ratio and the bootstrap's cost.
CONTRACT = {"train_loop_ratio", "epoch_overhead_frac", "eval_train_ratio", "checkpoint_frac",
            "orchestrator_overhead_ratio", "orchestrator_overhead_ratio_steady", "plan_10k_s", "query_1m_s",
            "recipe_speedup", "engine_speedup_equal_work", "storage_per_lineage_x_dense",
            "packed_gpu_speedup", "fused_speedup", "fused_k", "device",
            # and the default interval's cost at CIFAR's test size (issue 33)
            "bootstrap_cell_s", "bootstrap_cell_peak_mb"}
FULL_ONLY = {"orchestrator_overhead_ratio", "orchestrator_overhead_ratio_steady"}


def test_keys_list_the_contract():
    from bench import KEYS
    assert set(KEYS) == CONTRACT - {"device"} and "reference_speedup" not in KEYS


def test_bench_json_has_the_contract_keys(tmp_path):
    r = cli("bench", "--json", "--smoke", "--out", str(tmp_path / "b.json"), cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert CONTRACT <= set(out) and json.loads((tmp_path / "b.json").read_text()) == out
    measured = CONTRACT - {"device", "packed_gpu_speedup"} - FULL_ONLY
    assert all(isinstance(out[k], (int, float)) and out[k] >= 0 for k in measured), out
    assert all(out[k] is None for k in FULL_ONLY)  # only with --full
    assert "reference_speedup" not in out
    if torch.cuda.is_available():
        assert out["device"].startswith("cuda") and out["packed_gpu_speedup"] > 0
    else:
        assert out["packed_gpu_speedup"] is None and out["device"].startswith("cpu")  # needs CUDA
    assert out["fused_k"] == 2 and set(out["_fused"]) == {"quickstart", "cifar"}  # smoke: K=2
    rec = out["_recipe"]  # the same lineage three times: engine, recipe as released, recipe at equal work
    assert rec["densities"] == rec["reference_densities"] == rec["equal_work_densities"]
    assert rec["equal_work_matched"] and rec["engine"]["evaluations"] == 2  # one per round
    assert rec["recipe_released"]["evaluations"] == 3 and rec["recipe_released"]["checkpoints"] == 3  # per epoch
    assert rec["recipe_released"]["images_per_evaluation"] < rec["engine"]["images_per_evaluation"]  # test only


@pytest.mark.ray
def test_orchestrator_benchmark_runs_the_sweep_and_the_plain_processes():
    """--full's step at 2 epochs and one seed: the same 4 lineages through `lth-sweep
    run` and through run_lineage in 2 plain one-thread processes; both ratios and
    what each side's one-time costs were."""
    from bench.orchestrator import bench_orchestrator
    res = bench_orchestrator(epochs=2, seeds=1)
    assert res["orchestrator_overhead_ratio"] > 0 and res["orchestrator_overhead_ratio_steady"] > 0
    d = res["_orchestrator"]
    assert d["lineages"] == 4 and sum(d["plain"]["lineages_per_slot"]) == 4 and d["plain"]["torch_threads"] == 1
    for side in ("sweep", "plain"):
        assert 0 < d[side]["steady_s"] < d[side]["wall_s"]
        assert all(v is None or v >= 0 for v in d[side]["one_time"].values())
    assert d["sweep"]["one_time"]["ray_start_s"] > 0 and d["plain"]["one_time"]["process_start_and_imports_s"] > 0


def test_packed_benchmark_runs_its_processes():
    """The packed-trial benchmark's machinery (spawned processes, barrier,
    per-process memory share) on the CPU: 2 trials. Only that it measures
    something; the speedup itself is a GPU figure."""
    res = bench_packed(device="cpu", trials=2, width=0.0625, epochs=1)
    assert res["packed_gpu_speedup"] > 0 and res["_packed"]["trials"] == 2


def _gpu_check(tmp_path, *args):
    import os
    import subprocess
    import sys
    from tests.helpers import ROOT
    out = tmp_path / "gpu_check.json"
    r = subprocess.run(["bash", os.path.join(ROOT, "bench", "gpu_check.sh"), "--smoke", "--out", str(out), *args],
                       capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHON": sys.executable})
    return r, json.loads(out.read_text())


def test_the_gpu_check_runs_end_to_end(tmp_path):
    """bench/gpu_check.sh at toy sizes: on a machine without CUDA its CUDA tests
    are listed as skipped and its figures are CPU ones; it writes its JSON."""
    r, res = _gpu_check(tmp_path)
    assert res["smoke"] and res["cuda"] == torch.cuda.is_available()
    assert [r["round"] for r in res["lineage"]["rounds"]] == [0, 1, 2]
    assert all(r["epochs"] >= 1 for r in res["lineage"]["rounds"])
    assert {"train_loop_ratio", "fused_speedup"} <= set(res["bench"])
    checks = res["fuse_checks"]["checks"]  # kept, with their figures, whether or not all passed
    from bench.gpu_check import SMOKE_FUSABLE
    assert {(c["method"], c["arch"]) for c in checks} == set(SMOKE_FUSABLE)
    assert all(c["fused_error"] >= 0 and c["solo_error"] >= 0 and "tensor" in c["worst"] for c in checks)
    assert all(c["passed"] for c in checks if c["strategy"] == "loop")  # the solo kernels: solo's own error
    # Whether this CPU's rounding passes the grouped kernels' check is not this test's to assert;
    # that a failed check fails the whole run, and only then, is.
    any_failed = not all(c["passed"] for c in checks)
    assert res["failed"] == (["fuse_checks"] if any_failed else []), res["failed"]
    assert r.returncode == (1 if any_failed else 0), r.stdout[-2000:] + r.stderr[-2000:]
    if not res["cuda"]:
        assert res["cuda_tests"]["rc"] == 0 and any("skipped" in line for line in res["cuda_tests"]["summary"])


def test_the_gpu_check_fails_when_it_checked_nothing(tmp_path, capsys):
    """No CUDA test collected, or a lineage round that trained no epoch, is a
    failure of the check, not a pass. (In this process: the script's own exit
    status is test_the_gpu_check_runs_end_to_end's.)"""
    from bench import gpu_check
    (tmp_path / "empty").mkdir()
    out = tmp_path / "g.json"
    rc = gpu_check.main(["--smoke", "--out", str(out), "--only", "cuda_tests", "--tests", str(tmp_path / "empty")])
    res = json.loads(out.read_text())
    assert rc == 1 and res["failed"] == ["cuda_tests"] and "no CUDA tests" in res["cuda_tests"]["error"]
    rc = gpu_check.main(["--smoke", "--out", str(out), "--only", "lineage", "--lineage-epochs", "1"])
    res = json.loads(out.read_text())
    assert rc == 1 and res["failed"] == ["lineage"] and "trained no epoch" in res["lineage"]["error"]


def test_the_gpu_check_fails_when_a_self_check_fails(tmp_path, monkeypatch, capsys):
    """A fusion self-check that fails makes the whole check fail (exit 1, named),
    not a row with passed=false in a JSON nobody reads."""
    from bench import gpu_check
    from workers import fusecheck
    real = fusecheck.self_check

    def failing(members, strategy):
        out = real(members, strategy)
        return {**out, "passed": out["passed"] and strategy != "grouped"}
    monkeypatch.setattr(fusecheck, "self_check", failing)
    monkeypatch.setattr(gpu_check, "SMOKE_FUSABLE", [("imp", "resnet18")])  # one network shows the exit
    out = tmp_path / "g.json"
    rc = gpu_check.main(["--smoke", "--only", "fuse_checks", "--out", str(out)])
    res = json.loads(out.read_text())
    assert rc == 1 and res["failed"] == ["fuse_checks"]
    assert "fusion self-checks failed" in res["fuse_checks"]["error"] and "grouped" in res["fuse_checks"]["error"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="what a host without CUDA answers")
def test_the_full_gpu_check_refuses_a_host_without_cuda(tmp_path, capsys):
    from bench import gpu_check
    rc = gpu_check.main(["--only", "lineage", "--out", str(tmp_path / "g.json")])
    err = capsys.readouterr().err
    assert rc == 2 and "no CUDA device" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "g.json").exists()


def test_calibrate_writes_the_table_that_plan_then_costs_with(tmp_path):
    import os
    env = {**os.environ, "LTH_THROUGHPUT": str(tmp_path / "throughput.json")}
    r = cli("bench", "--calibrate", "--smoke", "--json", cwd=tmp_path, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    table = json.loads((tmp_path / "throughput.json").read_text())
    from workers.models import ARCHS
    assert set(table["flops_per_s"]) == {f"{a}@8" for a in ARCHS} and all(v > 0 for v in table["flops_per_s"].values())
    assert json.loads(r.stdout)["_calibrate"] == table
    from tests.helpers import ROOT
    plan = cli("plan", "-e", "quickstart", cwd=ROOT, env=env)
    assert plan.returncode == 0, plan.stderr
    assert f"on {table['device']} (measured {table['measured']} by bench --calibrate)" in plan.stdout


@pytest.mark.ray
def test_scale_benchmark_runs_near_zero_lineages_through_the_driver(tmp_path):
    r = cli("bench", "--scale", "3", "--json", cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    (row,) = json.loads(r.stdout)["_scale"]
    assert row["trials"] == 3 and row["storage_objects"] >= 3 * 5  # 5 files per committed round 0
    assert row["peak_driver_rss_mb"] > 0  # memory, not speed: the timings are only reported
    assert {"wall_per_trial_s", "overhead_per_trial_s", "trial_process_start_s"} <= set(row)
    assert cli("bench", "--scale", "0", cwd=tmp_path).returncode == 2
