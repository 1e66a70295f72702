"""The README's quickstart numbers are what a fresh quickstart prints.

The quickstart runs on the CPU, where a lineage's bits are fixed by its seed,
so the README's table (`lth-sweep run`'s closing table) and the Python API
example under it can be compared character for character with a run made
now, from the repository's own experiments.yaml, on a Ray of its own (no
GPUs: nothing fused), exactly as the README's first command runs it."""
from __future__ import annotations

import os
import shutil

import pytest

from tests.helpers import ROOT, cli

README = os.path.join(ROOT, "README.md")


def readme_block(first: str, stop: str, after: str = "") -> list[str]:
    """The README's indented code lines from the one starting with `first` (the
    first such line after one starting with `after`) up to (not including) the
    one starting with `stop`, unindented, blank lines dropped."""
    lines = [line[4:] for line in open(README).read().splitlines() if line.startswith("    ")]
    begin = next(i for i, line in enumerate(lines) if line.startswith(after))
    start = next(i for i in range(begin, len(lines)) if lines[i].startswith(first))
    end = next(i for i in range(start, len(lines)) if lines[i].startswith(stop))
    return [line.rstrip() for line in lines[start:end] if line.strip()]


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    d = tmp_path_factory.mktemp("quickstart")
    shutil.copy(os.path.join(ROOT, "experiments.yaml"), d / "experiments.yaml")
    r = cli("run", "--num-cpus", "2", cwd=d, timeout=900)  # the README's command: -e quickstart, ./runs
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return d, r


def test_the_readme_quickstart_table_is_what_the_quickstart_prints(quickstart):
    _, r = quickstart
    printed = r.stdout.splitlines()
    start = next(i for i, line in enumerate(printed) if line.startswith("Dense (round 0) vs winning ticket"))
    end = next(i for i in range(start, len(printed)) if printed[i].startswith("results:"))
    got = [line.rstrip() for line in printed[start:end] if line.strip()]
    assert got == readme_block("Dense (round 0) vs winning ticket", "results:"), "\n".join(got)


def test_the_readme_api_example_is_what_the_api_returns(quickstart):
    d, _ = quickstart
    from orchestrator.api import compare, load_results, protocol, protocols
    df = load_results(str(d / "runs"), "quickstart")
    columns = ["fraction", "augmentation", "n_seeds", "dense_test_acc", "ticket_test_acc", "ticket_density", "gain"]
    got = compare(df)[columns].to_string(index=False).splitlines()
    assert [line.rstrip() for line in got] == readme_block(" fraction augmentation  n_seeds", "protocol(df)")
    anchor = "compare(df)[["
    assert readme_block("protocol(df)", "protocols(df)", anchor) == ["protocol(df)", *_wrapped(protocol(df))]
    got = protocols(df)[["fraction", "augmentation", "gain_val", "gain_test", "selection_bias"]].to_string(index=False)
    assert [line.rstrip() for line in got.splitlines()] == readme_block(" fraction augmentation  gain_val",
                                                                        "load_layers(")


def _wrapped(text: str) -> list[str]:
    import textwrap
    return ["# " + line for line in textwrap.wrap(text, 74)]
