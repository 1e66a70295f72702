"""The README's quickstart output is what a fresh quickstart prints, on any machine.

A lineage's bits are fixed by its seed on one machine, not across machines:
CPU kernels (oneDNN picks them by instruction set) add in other orders on
other CPUs, and 5 epochs of 180 digits compound that into other accuracies
(on a 2-core AMD EPYC the `basic` 0.1 cell gained +0.0518 where the README,
from an Intel Xeon, shows +0.1553). So this test splits the output in two:

- what must not vary with the machine, checked exactly against the README:
  the protocol sentence, the columns, the grid cells (every key column), the
  interval's method, the notes that do not depend on the numbers, the API
  example's form;
- the numbers, checked for what holds on any machine: the CLI's table and
  the Python API print the same numbers from the same storage, accuracies are
  fractions, ticket - dense == gain, the interval holds the gain, a density
  is one of the lineage's rounds (about 0.8^k), and a one-seed cell claims no
  Holm-adjusted p. Bit-for-bit reproducibility on one machine is tested where
  two runs are compared (tests/integration/test_chaos.py and the resume tests).

The quickstart runs from the repository's own experiments.yaml with the
README's command, on the tests' shared Ray (no GPUs: nothing fused)."""
from __future__ import annotations

import math
import os
import shutil

import pytest

from tests.helpers import ROOT, cli

README = os.path.join(ROOT, "README.md")
KEYS = ["dataset", "fraction", "images_per_class", "augmentation", "arch", "method", "selection", "val_per_class",
        "n_seeds", "ci_method"]


def readme_block(first: str, stop: str, after: str = "") -> list[str]:
    """The README's indented code lines from the one starting with `first` (the
    first such line after one starting with `after`) up to (not including) the
    one starting with `stop`, unindented, blank lines dropped."""
    lines = [line[4:] for line in open(README).read().splitlines() if line.startswith("    ")]
    begin = next(i for i, line in enumerate(lines) if line.startswith(after))
    start = next(i for i in range(begin, len(lines)) if lines[i].startswith(first))
    end = next(i for i in range(start, len(lines)) if lines[i].startswith(stop))
    return [line.rstrip() for line in lines[start:end] if line.strip()]


def fixed_width(lines: list[str]) -> tuple[list[str], list[dict[str, str]]]:
    """(columns, rows) of the CLI's table: a header, a line of dashes marking each
    column's span, then rows (empty cells stay '')."""
    header, dashes, *rows = lines
    spans, i = [], 0
    while i < len(dashes):
        if dashes[i] == "-":
            j = i
            while j < len(dashes) and dashes[j] == "-":
                j += 1
            spans.append((i, j))
            i = j
        else:
            i += 1
    names = [header[a:b].strip() for a, b in spans]
    return names, [{n: row[a:b].strip() for n, (a, b) in zip(names, spans)} for row in rows]


def closing_table(text: list[str]) -> tuple[str, list[str], list[dict], list[str]]:
    """The run's closing table: (protocol sentence, columns, rows, notes)."""
    body = [line for line in text if line.strip()]
    sentence, notes = body[0], [line for line in body if line.startswith("note: ")]
    columns, rows = fixed_width([line for line in body[1:] if not line.startswith("note: ")])
    return sentence, columns, rows, notes


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory, shared_ray):
    d = tmp_path_factory.mktemp("quickstart")
    shutil.copy(os.path.join(ROOT, "experiments.yaml"), d / "experiments.yaml")
    # The README's command (`lth-sweep run`: -e quickstart, ./runs), on the shared Ray.
    r = cli("run", *shared_ray, cwd=d, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    printed = r.stdout.splitlines()
    start = next(i for i, line in enumerate(printed) if line.startswith("Dense (round 0) vs winning ticket"))
    end = next(i for i in range(start, len(printed)) if printed[i].startswith("results:"))
    return d, closing_table(printed[start:end])


def test_the_readme_quickstart_table_has_the_form_the_quickstart_prints(quickstart):
    _, (sentence, columns, rows, notes) = quickstart
    want_sentence, want_columns, want_rows, want_notes = closing_table(
        readme_block("Dense (round 0) vs winning ticket", "results:"))
    assert sentence == want_sentence
    assert columns == want_columns
    assert [[r[k] for k in KEYS] for r in rows] == [[r[k] for k in KEYS] for r in want_rows]
    # The notes about the data's shape hold on any machine; one about zero-width
    # intervals depends on which images each network gets right.
    shape_notes = [n for n in want_notes if "zero-width" not in n]
    assert shape_notes and all(n in notes for n in shape_notes), notes


def test_the_quickstart_numbers_hold_what_any_machine_must(quickstart):
    d, (_, _, rows, _) = quickstart
    from orchestrator.api import compare, load_results
    api = compare(load_results(str(d / "runs"), "quickstart"))
    assert len(api) == len(rows)
    for row, (_, cell) in zip(rows, api.iterrows()):
        assert (float(row["fraction"]), row["augmentation"]) == (cell["fraction"], cell["augmentation"])
        num = {k: float(row[k]) for k in ("dense_test_acc", "ticket_test_acc", "ticket_density", "gain",
                                          "gain_ci_low", "gain_ci_high", "p_value", "prob_ticket_better")}
        for k, v in num.items():  # the CLI prints what the API computes, to its 4 decimals
            assert v == pytest.approx(cell[k], abs=5e-5), k
        assert 0 <= num["dense_test_acc"] <= 1 and 0 <= num["ticket_test_acc"] <= 1
        assert num["ticket_test_acc"] - num["dense_test_acc"] == pytest.approx(num["gain"], abs=1.5e-4)
        assert num["gain_ci_low"] <= num["gain"] <= num["gain_ci_high"]
        # A round of the lineage: density 0.8^k (up to whole weights pruned per round).
        k = round(math.log(cell["ticket_density"]) / math.log(0.8))
        assert cell["ticket_density"] == pytest.approx(0.8 ** k, rel=1e-3)
        assert int(row["n_seeds"]) == 1 and row["p_holm"] == "", row  # one seed is no evidence of an effect


def test_the_readme_api_example_has_the_form_the_api_returns(quickstart):
    d, _ = quickstart
    from orchestrator.api import compare, load_results, protocol, protocols
    df = load_results(str(d / "runs"), "quickstart")
    columns = ["fraction", "augmentation", "n_seeds", "dense_test_acc", "ticket_test_acc", "ticket_density", "gain"]
    got = [line.rstrip() for line in compare(df)[columns].to_string(index=False).splitlines()]
    want = readme_block(" fraction augmentation  n_seeds", "protocol(df)")
    assert got[0] == want[0] and len(got) == len(want)
    assert [line.split()[:3] for line in got[1:]] == [line.split()[:3] for line in want[1:]]
    anchor = "compare(df)[["
    assert readme_block("protocol(df)", "protocols(df)", anchor) == ["protocol(df)", *_wrapped(protocol(df))]
    got = protocols(df)[["fraction", "augmentation", "gain_val", "gain_test", "selection_bias"]].to_string(index=False)
    got = [line.rstrip() for line in got.splitlines()]
    want = readme_block(" fraction augmentation  gain_val", "load_layers(")
    assert got[0] == want[0] and [line.split()[:2] for line in got[1:]] == [line.split()[:2] for line in want[1:]]


def _wrapped(text: str) -> list[str]:
    import textwrap
    return ["# " + line for line in textwrap.wrap(text, 74)]
