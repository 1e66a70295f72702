"""The documentation site builds, and what it and the README name exists.

`mkdocs build --strict` fails on a broken link, a missing page or a missing
anchor (mkdocs.yml's `validation:` makes each a warning); the rest is
checked here: every repository path named in code, every `lth-sweep` verb,
every `python -m` module, every README link, and an experiments.yaml
reference that covers every key the loader accepts, each with its help.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.helpers import ROOT

PREFIXES = ("orchestrator/", "workers/", "bench/", "tests/", "docker/", "docs/", ".ci/")
TOP_FILES = ("experiments.yaml", "pyproject.toml", "mkdocs.yml", "README.md")
EXTENSIONS = (".py", ".yaml", ".yml", ".md", ".toml", ".sh")
PROJECT_PACKAGES = ("orchestrator", "workers", "bench", "tests")


def _pages() -> list[str]:
    return [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "**", "*.md"),
                                                               recursive=True))


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def mkdocs_build(config: str, out: str) -> subprocess.CompletedProcess:
    # The mkdocs of this interpreter's environment; the checkout importable
    # for the hook that writes the experiments.yaml reference.
    env = {**os.environ, "PYTHONPATH": ROOT, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", config, "-d", out],
                          capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    r = mkdocs_build(os.path.join(ROOT, "mkdocs.yml"), str(out))
    assert r.returncode == 0, "mkdocs build --strict failed:\n" + r.stdout + r.stderr
    return out


def test_the_site_builds_strictly_with_the_generated_reference(site):
    page = (site / "experiments-yaml" / "index.html").read_text(encoding="utf-8")
    from orchestrator import config
    for key in [*config.AXES, *config.SCALARS, *(k for s in config.SECTIONS.values() for k in s)]:
        assert f"<code>{key}</code>" in page, key
    assert "experiments-yaml-reference" not in page  # the marker was replaced
    # The README's sections the pages include (docs/hooks.py) arrived, pipes unescaped.
    started = (site / "getting-started" / "index.html").read_text(encoding="utf-8")
    assert "Dense (round 0) vs winning ticket" in started and "--select val|test" in started
    assert "from orchestrator.api import" in (site / "results" / "index.html").read_text(encoding="utf-8")


def test_the_readmes_links_reach_pages_and_anchors_that_exist(site):
    links = re.findall(r"\]\(([^)\s]+)\)", _read(os.path.join(ROOT, "README.md")))
    assert links
    for link in links:
        if re.match(r"[a-z]+://", link):
            continue
        path, _, anchor = link.partition("#")
        assert os.path.exists(os.path.join(ROOT, path)), link
        if anchor:
            assert path.startswith("docs/") and path.endswith(".md"), link
            page = path[len("docs/"):-len(".md")]
            html = (site / ("" if page == "index" else page) / "index.html").read_text(encoding="utf-8")
            assert f'id="{anchor}"' in html, link


@pytest.mark.parametrize("broken", ["[a page](no-such-page.md)", "[an anchor](imp.md#no-such-anchor)"])
def test_a_broken_link_fails_the_strict_build(tmp_path, broken):
    shutil.copytree(os.path.join(ROOT, "docs"), tmp_path / "docs", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(os.path.join(ROOT, "mkdocs.yml"), tmp_path / "mkdocs.yml")
    shutil.copy(os.path.join(ROOT, "README.md"), tmp_path / "README.md")
    with open(tmp_path / "docs" / "index.md", "a") as f:
        f.write(f"\nSee {broken}.\n")
    r = mkdocs_build(str(tmp_path / "mkdocs.yml"), str(tmp_path / "site"))
    assert r.returncode != 0, r.stdout + r.stderr
    assert "no-such" in r.stdout + r.stderr


# --- what the pages name ----------------------------------------------------------

def code_of(text: str) -> list[str]:
    """The code a markdown text holds: fenced blocks, indented lines, inline spans."""
    fenced = re.findall(r"^\s*```[^\n]*\n(.*?)^\s*```", text, re.S | re.M)
    rest = re.sub(r"^\s*```[^\n]*\n.*?^\s*```", "", text, flags=re.S | re.M)
    indented = [line for line in rest.splitlines() if line.startswith("    ")]
    spans = re.findall(r"`([^`]+)`", rest)
    return fenced + indented + spans


def named_paths(text: str) -> set[str]:
    """Repository paths named in the text's code (without `::test` suffixes)."""
    out = set()
    for code in code_of(text):
        for token in re.split(r"[\s,;()\[\]'\"=`|]+", code):
            token = token.split("::")[0].split("#")[0].rstrip(".:")
            if not token or any(c in token for c in "<>{}$"):
                continue  # a placeholder (workers/methods/<name>.py), not a path
            if token in TOP_FILES or (token.startswith(PREFIXES) and ("/" in token or token.endswith(EXTENSIONS))):
                out.add(token)
    return out


def missing_paths(text: str, root: str = ROOT) -> list[str]:
    """The paths the text names that the repository lacks (a glob must match something)."""
    def exists(p):
        full = os.path.join(root, p)
        return bool(glob.glob(full)) if any(c in p for c in "*?") else os.path.exists(full)
    return sorted(p for p in named_paths(text) if not exists(p))


def named_verbs(text: str) -> set[str]:
    return {m for code in code_of(text) for m in re.findall(r"\blth-sweep\s+([a-z][\w-]*)", code)}


def named_modules(text: str) -> set[str]:
    return {m for code in code_of(text) for m in re.findall(r"\bpython3?\s+-m\s+([A-Za-z_][\w.]*)", code)}


def module_exists(module: str) -> bool:
    """A project module is a file of the checkout; another must be importable here."""
    parts = module.split(".")
    if parts[0] in PROJECT_PACKAGES:
        base = os.path.join(ROOT, *parts)
        return os.path.isfile(base + ".py") or os.path.isfile(os.path.join(base, "__main__.py"))
    return importlib.util.find_spec(parts[0]) is not None


@pytest.mark.parametrize("page", _pages(), ids=lambda p: os.path.relpath(p, ROOT))
def test_every_path_a_page_names_exists(page):
    assert missing_paths(_read(page)) == []


@pytest.mark.parametrize("page", _pages(), ids=lambda p: os.path.relpath(p, ROOT))
def test_every_command_a_page_names_exists(page):
    from orchestrator.cli import VERBS
    text = _read(page)
    assert named_verbs(text) <= set(VERBS), named_verbs(text) - set(VERBS)
    assert [m for m in sorted(named_modules(text)) if not module_exists(m)] == []


def test_the_checkers_catch_what_does_not_exist():
    text = ("Run `python -m bench.digits_study`, then `lth-sweep run` and `lth-sweep frobnicate`; "
            "see `tests/test_docs.py::test_a`, `workers/nope.py`, `bench/results/*.md`, `docker/none*.yaml`,\n"
            "`workers/methods/<name>.py`, and\n\n    bash bench/missing.sh --smoke\n    python -m bench.nope\n")
    assert missing_paths(text) == ["bench/missing.sh", "docker/none*.yaml", "workers/nope.py"]
    assert named_verbs(text) == {"run", "frobnicate"}
    assert named_modules(text) == {"bench.digits_study", "bench.nope"}
    assert module_exists("bench.digits_study") and module_exists("bench") and module_exists("pytest")
    assert not module_exists("bench.nope") and not module_exists("no_such_module_anywhere")


# --- the experiments.yaml reference ---------------------------------------------

def test_the_reference_covers_every_key_of_the_schema_with_help():
    from orchestrator import config, schema_doc
    entries = schema_doc.keys()
    paths = {k.path for k in entries}
    want = set(config.AXES) | set(config.SCALARS) | {f"{s}.{k}" for s, keys in config.SECTIONS.items() for k in keys}
    assert paths == want
    assert schema_doc.undocumented(entries) == [], "give these keys a help sentence (spec_field(help=...), " \
                                                   "Evaluation.help or config.KEY_HELP)"
    text = schema_doc.reference(entries)
    for section in config.SECTIONS:
        assert f"### `{section}:`" in text
    for k in entries:
        row = next(line for line in text.splitlines() if line.startswith(f"| `{k.key}` |") and k.help in line)
        assert k.allowed in row and k.default in row
    assert _read(os.path.join(ROOT, "docs", "experiments-yaml.md")).count("<!-- experiments-yaml-reference -->") == 1


def test_the_readmes_smallest_experiments_file_is_valid():
    import yaml

    from orchestrator.config import validate
    (block,) = re.findall(r"^```yaml\n(.*?)^```", _read(os.path.join(ROOT, "README.md")), re.S | re.M)
    assert list(validate(yaml.safe_load(block))["experiments"]) == ["tiny"]


def test_a_key_without_help_is_named():
    from orchestrator.schema_doc import Key, undocumented
    assert undocumented([Key("train", "epochs", "an integer", "200", "Epochs."),
                         Key("runtime", "new_knob", "true or false", "false", " "),
                         Key("", "new_axis", "a list", "unset", "")]) == ["runtime.new_knob", "new_axis"]


def test_help_is_metadata_and_never_part_of_a_trial_id():
    import dataclasses

    from workers.spec import DataSpec, TrialSpec
    spec = TrialSpec(DataSpec("digits", fraction=0.1))
    assert "help" not in spec.canonical_json()
    assert all(f.metadata.get("help") for f in dataclasses.fields(DataSpec))
