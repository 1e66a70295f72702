"""The README's effect sentences read back from the output of the scripts that
produced them. A block of README.md (or of a page under docs/) between
`<!-- claims: PATH -->` and `<!-- /claims -->` quotes PATH, a study's committed
output (bench/results/, written by `python -m bench.digits_study` and
`python -m bench.init_study`, `python -m bench.adaptive_study`): each of its table rows must be a line of PATH,
and each decimal number in its prose must be one of PATH's numbers as printed
or rounded to the README's digits, as is or in points (x 100), with its sign
where the README writes one. Integers (seeds, rows, images, dates) are not
checked: they name the design, not its outcome."""
import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK = re.compile(r"<!-- claims: (\S+) -->\n(.*?)<!-- /claims -->", re.S)
DECIMAL = re.compile(r"(?<![\w.])([+-]?)(\d+\.\d+)")
# every study whose numbers the README or a docs page states; a block that disappears fails here
STUDIES = {"bench/results/digits_study.md", "bench/results/init_study.md", "bench/results/adaptive_study.md"}


def _pages():
    return [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "**", "*.md"),
                                                               recursive=True))


def claim_blocks():
    out = []
    for page in _pages():
        with open(page) as f:
            out += [(os.path.relpath(page, ROOT), src, text) for src, text in BLOCK.findall(f.read())]
    return out


def unsupported(block: str, output: str) -> list[str]:
    """What `block` states that `output` does not: table rows that are not
    lines of it, and prose numbers that are none of its numbers."""
    lines = {line.strip() for line in output.splitlines()}
    numbers = [(sign, float(v)) for sign, v in DECIMAL.findall(output)]
    missing = []
    prose = []
    for line in block.splitlines():
        stripped = line.strip()
        if stripped.startswith("|"):
            if not set(stripped) <= set("|-") and stripped not in lines:
                missing.append(stripped)
        else:
            prose.append(line)
    for sign, text in DECIMAL.findall(" ".join(prose)):
        x = float(text)
        digits = len(text.split(".")[1])

        def matches(s, y):
            value = -y if s == "-" else y
            return any(round(abs(v), digits) == x and (not sign or (v < 0) == (sign == "-"))
                       for v in (value, 100 * value))
        if not any(matches(s, y) for s, y in numbers):
            missing.append(sign + text)
    return missing


def test_every_study_the_readme_quotes_has_its_block():
    assert {src for _, src, _ in claim_blocks()} >= STUDIES


@pytest.mark.parametrize("page,src,text", claim_blocks(), ids=lambda v: str(v)[:40])
def test_each_claim_is_in_its_scripts_output(page, src, text):
    path = os.path.join(ROOT, src)
    assert os.path.exists(path), f"{page} quotes {src}, which is not in the repository"
    with open(path) as f:
        assert unsupported(text, f.read()) == [], f"{page}: not in {src}"


def test_a_number_the_output_does_not_hold_is_caught():
    output = "| 5 | basic | +0.109 | 0.041 |\nselection bias: +0.004 to +0.014\n"
    assert unsupported("| 5 | basic | +0.109 | 0.041 |\nbeats it by 10.9 points (Holm p 0.041); "
                       "bias 0.4-1.4 points\n", output) == []
    assert unsupported("beats it by 11.9 points", output) == ["11.9"]
    assert unsupported("a loss of -10.9 points", output) == ["-10.9"]  # the sign is part of the claim
    assert unsupported("| 5 | basic | +0.119 | 0.041 |", output) == ["| 5 | basic | +0.119 | 0.041 |"]
