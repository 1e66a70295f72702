"""Fixtures every test folder shares (helpers to import live in tests/helpers.py)."""
import pytest

from tests.helpers import RUN_ENV, TINY_YAML, built_once, uninterrupted


@pytest.fixture
def tiny_yaml(tmp_path):
    p = tmp_path / "experiments.yaml"
    p.write_text(TINY_YAML)
    return p


@pytest.fixture(scope="session")
def reference(tmp_path_factory, request):
    """One uninterrupted sweep of TINY_YAML, shared by the tests that compare
    against it (built once per pytest run, whichever xdist worker asks first)."""
    return built_once(tmp_path_factory, "reference",
                      lambda d: uninterrupted(d, TINY_YAML, ray=request.getfixturevalue("shared_ray"))[1])


@pytest.fixture(scope="session")
def shared_ray():
    """`lth-sweep run` flags for one local Ray cluster (2 CPUs, 2 fake GPUs) that the
    runs needing only *a* Ray share: starting and stopping a Ray of its own is ~6 s
    of a 2-core machine per run. The runs that test Ray's own start and stop, a
    killed driver, or the missing-dataset preflight keep starting their own."""
    from ray.cluster_utils import Cluster
    mp = pytest.MonkeyPatch()
    # The cluster's worker processes (the trials) import the project and run on
    # the CPU, as those of a Ray the driver starts itself do.
    for k, v in RUN_ENV.items():
        mp.setenv(k, v)
    try:
        c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 2, "include_dashboard": False})
    finally:
        mp.undo()
    try:
        yield ["--address", c.address, "--wait-for-nodes", "0"]
    finally:
        c.shutdown()


@pytest.fixture(autouse=True)
def _cpu_unless_cuda(request, monkeypatch):
    """Every test but the `cuda` ones runs on the CPU, on any host."""
    if "cuda" not in request.keywords:
        monkeypatch.setenv("LTH_DEVICE", "cpu")


def pytest_configure(config):
    # One intra-op thread, as Ray gives each 1-CPU trial process: on a 2-core
    # CI machine that also runs Ray's own processes, torch's default (a thread
    # per core) oversubscribes the cores and a tiny epoch takes 100x longer;
    # and in-process lineages then compute with the threading the trials use.
    import torch
    torch.set_num_threads(1)
    # The same for every process a test starts (gpu_check, bench, a CLI driver,
    # a plain lineage process) and that inherits this environment: with a
    # thread per core each of them spins both cores while the other xdist
    # worker's Ray trials want them (gpu_check's smoke run: 20 s alone, 150 s
    # in the suite). Ray's trial processes get 1 from Ray already.
    import os
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"


# The slowest modules first, slowest first (pytest --durations=0 on the 2-core VM,
# 2026-12-08): xdist then hands the long tests out while the short ones can
# still fill the other worker's gaps, and the two workers end together
# instead of one idling through the last long test (that imbalance cost a
# third of the suite's wall time). `--dist loadfile --no-loadscope-reorder`
# (pyproject.toml) hands out one module at a time in this order.
SLOW_FIRST = ["integration/test_slurm.py", "integration/test_chaos.py", "bench/test_bench.py",
              "integration/test_sweep.py", "integration/test_s3_faults.py", "integration/test_cluster_nodes.py",
              "integration/test_adaptive_sweep.py", "workers/test_fusecheck.py", "workers/test_group.py",
              "integration/test_s3.py", "integration/test_readme.py", "integration/test_verbs.py",
              "integration/test_extending.py", "integration/test_scheduling.py", "workers/test_fused.py",
              "integration/test_scrub.py", "workers/test_lineage.py", "integration/test_trackers.py",
              "integration/test_restart_scale.py", "integration/test_table1_archs.py", "workers/test_memory.py"]


def _slow_rank(item) -> int:
    path = item.nodeid.split("::", 1)[0].removeprefix("tests/")
    return SLOW_FIRST.index(path) if path in SLOW_FIRST else len(SLOW_FIRST)


def pytest_collection_modifyitems(config, items):
    items.sort(key=_slow_rank)  # stable: the order within a module stays
    import torch
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (run `pytest -m cuda` where there is one)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
