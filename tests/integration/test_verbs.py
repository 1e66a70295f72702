"""One command line, every verb: `plan/run/status/query/report/verify` take the
same `-c -e --name --storage`; `status -c` sees trials the yaml gained after
the run; the Python API returns what the CLI prints; `verify` finds a flipped
byte and a truncated mask and `run --verify` repairs them; the live panel on a
terminal, one line per round elsewhere."""
import json
import os
import re
import shutil
import sys

import pandas as pd
import pytest

from tests.helpers import CPU_ENV, ROOT, cli
from tests.integration.conftest import SHARED_ROUNDS, SHARED_YAML, shared_flags
from workers.store import SweepStore

pytestmark = pytest.mark.ray

YAML, ROUNDS = SHARED_YAML, SHARED_ROUNDS
METRICS = ["density", "val_acc", "test_acc", "train_acc"]
flags = shared_flags  # the sweep itself: conftest.py's `swept`


def test_every_verb_takes_the_same_flags(swept):
    d, _ = swept
    assert not (d / "runs").exists() and (d / "store" / "mine" / "results").is_dir()
    for verb, extra in [("plan", ["--json"]), ("status", ["--json"]), ("query", ["--compare"]),
                        ("report", ["--out", str(d / "rep")]), ("verify", [])]:
        r = cli(verb, *flags(d), *extra, cwd=d)
        assert r.returncode == 0, (verb, r.stderr)
    st = json.loads(cli("status", *flags(d), "--json", cwd=d).stdout)
    assert st["trials"]["done"] == 2 and st["rounds"] == {"committed": 2 * ROUNDS, "total": 2 * ROUNDS}
    assert (d / "rep" / "report.md").exists()


def test_non_tty_output_is_one_line_per_round(swept):
    _, r = swept
    lines = [ln for ln in r.stdout.splitlines() if re.search(r" round \d+: density ", ln)]
    assert len(lines) == 2 * ROUNDS
    assert lines[-1].endswith(f"rounds {2 * ROUNDS}/{2 * ROUNDS}")
    assert "\x1b[" not in r.stdout  # no terminal control codes in a log
    # Ray's own start-up notices are not printed among ours.
    assert not re.search(r"^(\(raylet\)|.*WARNING.*(services|worker)\.py)", r.stdout + r.stderr, re.M)
    assert "WARNING" not in r.stdout + r.stderr and "notice(s) from Ray held back" in r.stdout + r.stderr


def test_status_with_an_extended_yaml_shows_new_trials_pending(swept, tmp_path):
    d, _ = swept
    grown = tmp_path / "grown.yaml"
    grown.write_text(YAML.replace("fractions: [0.2]", "fractions: [0.2, 0.3]"))
    args = ["-c", str(grown), "-e", "tiny", "--name", "mine", "--storage", str(d / "store")]
    st = json.loads(cli("status", *args, "--json", cwd=d).stdout)
    assert st["trials"] == {"total": 4, "done": 2, "running": 0, "pending": 2, "failed": 0}
    assert st["rounds"] == {"committed": 2 * ROUNDS, "total": 4 * ROUNDS}
    text = cli("status", *args, cwd=d).stdout
    assert "pending 2" in text


def test_python_api_matches_the_cli(swept):
    from orchestrator import api
    d, _ = swept
    df = api.load_results(str(d / "store"), "mine")
    assert len(df) == 2 * ROUNDS
    wt = api.winning_tickets(df)
    assert len(wt) == 2 and set(wt["trial_id"]) == set(df["trial_id"])
    cmp = api.compare(df, select="val")
    r = cli("query", *flags(d), "--compare", "--format", "json", cwd=d)
    assert r.returncode == 0, r.stderr
    assert cmp["gain"].round(6).tolist() == pd.DataFrame(json.loads(r.stdout))["gain"].round(6).tolist()
    assert "val" in api.protocol(df) and len(api.protocols(df)) == len(cmp)
    paths = api.report(str(d / "store"), "mine", str(d / "api-report"))
    assert any(p.endswith("report.html") for p in paths)
    with pytest.raises(Exception, match="no sweep"):
        api.load_results(str(d / "store"), "nope")


def test_verify_names_corrupt_files_and_run_verify_redoes_from_the_first(swept, tmp_path, shared_ray):
    d, _ = swept
    store = tmp_path / "store"
    shutil.copytree(d / "store", store)
    args = ["-c", str(d / "conf" / "my.yaml"), "-e", "tiny", "--name", "mine", "--storage", str(store)]
    sweep = SweepStore(str(store), "mine")
    tid = sorted(sweep.trial_ids())[0]
    lin = sweep.lineage(tid)
    weights = f"{lin.round_dir(1)}/weights.sparse.safetensors"
    mask = f"{lin.round_dir(2)}/mask.safetensors"
    data = bytearray(open(weights, "rb").read())
    data[len(data) // 2] ^= 0x01
    open(weights, "wb").write(bytes(data))
    with open(mask, "r+b") as f:
        f.truncate(os.path.getsize(mask) // 2)
    untouched = {p: open(p, "rb").read() for p in
                 [f"{lin.round_dir(0)}/{n}" for n in os.listdir(lin.round_dir(0))]}
    other = sweep.lineage(sorted(sweep.trial_ids())[1])
    other_before = {k: m["manifest_sha256"] for k, m in other.manifests().items()}

    r = cli("verify", *args, cwd=d)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"{tid} round 1: weights.sparse.safetensors" in r.stdout
    assert f"{tid} round 2: mask.safetensors" in r.stdout
    assert "2 corrupt file(s)" in r.stdout
    out = json.loads(cli("verify", *args, "--json", cwd=d).stdout)
    assert {(c["trial_id"], c["round"], c["file"]) for c in out["corrupt"]} == \
        {(tid, 1, "weights.sparse.safetensors"), (tid, 2, "mask.safetensors")}

    r = cli("run", *args, *shared_ray, "--verify", cwd=d, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"{tid} round 1 is corrupt" in r.stdout + r.stderr
    assert cli("verify", *args, cwd=d).returncode == 0
    # Round 0 (before the first corrupt round) and the healthy lineage are not rewritten.
    assert all(open(p, "rb").read() == b for p, b in untouched.items())
    assert {k: m["manifest_sha256"] for k, m in other.manifests().items()} == other_before
    # The repaired table equals the uninterrupted one, bit for bit on the CPU.
    got = pd.read_parquet(store / "mine" / "results").sort_values(["trial_id", "round"]).reset_index(drop=True)
    ref = pd.read_parquet(d / "store" / "mine" / "results").sort_values(["trial_id", "round"]).reset_index(drop=True)
    assert got[["trial_id", "round"]].equals(ref[["trial_id", "round"]])
    assert got[METRICS].equals(ref[METRICS])


def test_progress_panel_on_a_terminal(tmp_path, shared_ray):
    import pexpect  # the test extra installs it
    (tmp_path / "experiments.yaml").write_text(YAML.replace("augmentations: [none, basic]", "augmentations: [none]"))
    env = {**os.environ, "PYTHONPATH": ROOT, "RAY_AIR_NEW_OUTPUT": "0", **CPU_ENV, "COLUMNS": "160",
           "TERM": "xterm-256color"}
    child = pexpect.spawn(sys.executable, ["-m", "orchestrator", "run", "-e", "tiny", *shared_ray],
                          cwd=str(tmp_path), env=env, encoding="utf-8", timeout=300, dimensions=(50, 160))
    child.expect(pexpect.EOF)
    child.close()
    out = child.before
    assert child.exitstatus == 0, out[-3000:]
    # The panel redraws itself (cursor movement), with its counters and an ETA ...
    assert "\x1b[" in out
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out)
    assert re.search(rf"rounds {ROUNDS}/{ROUNDS}\s+running \d+\s+failed 0\s+elapsed \S+\s+ETA 0s", plain), plain[-2000:]
    assert re.search(r"rounds [12]/3 .*ETA (\d+s|\d+m\d+s)", plain), plain[-2000:]
    # ... and not the log's one-line-per-round form.
    assert not re.search(r" round \d+: density .*\| rounds", plain)
