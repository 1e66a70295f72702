"""The benchmarks run through the real code paths at toy sizes; timings are never asserted."""
import json

from bench.packed import bench_packed
from tests.helpers import cli

CONTRACT = {"train_loop_ratio", "epoch_overhead_frac", "eval_train_ratio", "checkpoint_frac",
            "orchestrator_overhead_ratio", "plan_10k_s", "query_1m_s", "reference_speedup",
            "packed_gpu_speedup", "device"}


def test_bench_json_has_the_contract_keys(tmp_path):
    r = cli("bench", "--json", "--smoke", "--out", str(tmp_path / "b.json"), cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert CONTRACT <= set(out) and json.loads((tmp_path / "b.json").read_text()) == out
    measured = CONTRACT - {"device", "orchestrator_overhead_ratio", "packed_gpu_speedup"}
    assert all(isinstance(out[k], (int, float)) and out[k] >= 0 for k in measured), out
    assert out["orchestrator_overhead_ratio"] is None  # only with --full
    assert out["packed_gpu_speedup"] is None and out["device"].startswith("cpu")  # needs CUDA
    assert out["_reference"]["densities"] == out["_reference"]["reference_densities"]


def test_packed_benchmark_runs_its_processes():
    """The packed-trial benchmark's machinery (spawned processes, barrier,
    per-process memory share) on the CPU: 2 trials. Only that it measures
    something; the speedup itself is a GPU figure."""
    res = bench_packed(device="cpu", trials=2, width=0.0625, epochs=1)
    assert res["packed_gpu_speedup"] > 0 and res["_packed"]["trials"] == 2
