"""Fixtures every test folder shares (helpers to import live in tests/helpers.py)."""
import pytest

from tests.helpers import TINY_YAML, uninterrupted


@pytest.fixture
def tiny_yaml(tmp_path):
    p = tmp_path / "experiments.yaml"
    p.write_text(TINY_YAML)
    return p


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    """One uninterrupted sweep of TINY_YAML, shared by the tests that compare against it."""
    return uninterrupted(tmp_path_factory.mktemp("ref"), TINY_YAML)


@pytest.fixture(autouse=True)
def _cpu_unless_cuda(request, monkeypatch):
    """Every test but the `cuda` ones runs on the CPU, on any host."""
    if "cuda" not in request.keywords:
        monkeypatch.setenv("LTH_DEVICE", "cpu")


def pytest_collection_modifyitems(config, items):
    import torch
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (run `pytest -m cuda` where there is one)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
