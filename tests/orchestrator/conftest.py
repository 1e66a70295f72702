import pytest

from workers.store import SweepStore


@pytest.fixture
def store(tmp_path):
    """An empty sweep folder."""
    return SweepStore(str(tmp_path), "s")
