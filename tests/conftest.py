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
