"""The CLI's bad-input contract: one line on stderr, exit status 2, nothing started, nothing written."""
from __future__ import annotations

import pytest

from orchestrator import results as R
from orchestrator.cli import main
from tests.helpers import TINY_YAML, cli, python
from tests.orchestrator.helpers import commit

BASE = "experiments:\n  x:\n    datasets: [digits]\n    fractions: [0.1]\n    augmentations: [none]\n"


def run_main(capsys, argv):
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("argv", [
    ["run", "--max-concurrent", "0"], ["run", "--num-gpus", "-1"], ["frobnicate"], [],
    ["plan", "--name", "../escape"], ["run", "--name", "/abs"], ["status", "-e", "nosuch"],
    ["query", "--sql", "select 1", "--compare"], ["run", "--num-cpus", "lots"],
])
def test_bad_arguments(tmp_path, capsys, tiny_yaml, monkeypatch, argv):
    monkeypatch.chdir(tmp_path)
    common = ["-c", str(tiny_yaml), "-e", "tiny"] if argv[:1] in (["run"], ["plan"]) else []
    rc, _, err = run_main(capsys, argv + common)
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_console_script_bad_fraction(tmp_path):
    """The same contract through a real process (the hook's spot check)."""
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(BASE.replace("[0.1]", "[2.0]"))
    r = cli("plan", "-c", str(cfg), "-e", "x", cwd=tmp_path, timeout=120, process=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_missing_init_weights_fail_before_anything_starts(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cfg = tmp_path / "e.yaml"
    cfg.write_text(BASE + "    model: {init: imagenet}\n    resources: {gpu: 0, cpu: 1}\n")
    storage = tmp_path / "store"
    rc, _, err = run_main(capsys, ["run", "-c", str(cfg), "-e", "x", "--storage", str(storage)])
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "resnet18-f37072fd.pth" in err and "runtime.init_path" in err
    assert not storage.exists()


@pytest.mark.parametrize("content", [b"", b"PAR1 junk"])
def test_cli_query_on_bad_results_is_one_line(store, capsys, content):
    from orchestrator.cli import main
    commit(store, "ab00000000000001", 0)
    R.Collector(store).rebuild()
    open(store.path("results", "zz.parquet"), "wb").write(content)
    root = store.fs.root
    for argv in (["query", "--compare"], ["query"], ["query", "--sql", "select 1 from results"]):
        rc = main(argv + ["--storage", root, "--name", store.sweep])
        err = capsys.readouterr().err
        assert rc == 2 and len(err.strip().splitlines()) == 1 and "zz.parquet" in err, (argv, err)


def _predicted_sweep(store):
    """Two seeds of one cell, each round with its per-image results (40 test images)."""
    import base64

    import numpy as np
    from tests.orchestrator.helpers import spec_dict
    for seed, rights in enumerate([(20, 26), (22, 25)]):
        tid = f"ab0000000000000{seed}"
        for k, right in enumerate(rights):
            bits = np.zeros(40, dtype=bool)
            bits[seed * 3:seed * 3 + right] = True
            commit(store, tid, k, spec=spec_dict(seed=seed, rounds=1), val=0.5 + k / 10, test=right / 40,
                   test_images=40, test_correct=base64.b64encode(np.packbits(bits, bitorder="little")).decode())
    R.Collector(store).rebuild()
    return ["--storage", store.fs.root, "--name", store.sweep]


def test_query_compare_carries_the_contract_columns_and_reproduces_its_intervals(store, capsys):
    import json
    where = _predicted_sweep(store)
    runs = [run_main(capsys, ["query", "--compare", "--format", "json", *where]) for _ in range(2)]
    assert runs[0] == runs[1] and runs[0][0] == 0  # seeded: the same intervals every time
    row = json.loads(runs[0][1])[0]
    for col in ("n_seeds", "dense_test_acc", "ticket_test_acc", "ticket_density", "gain", "gain_ci_low",
                "gain_ci_high", "p_value", "p_holm", "prob_ticket_better", "ci_method", "n_no_ticket"):
        assert col in row, col
    assert row["ci_method"] == "bootstrap seeds+images" and row["gain"] == pytest.approx((6 + 3) / 2 / 40)
    assert row["gain_ci_low"] < row["gain"] < row["gain_ci_high"] and row["prob_ticket_better"] == 1.0
    assert "B=20000" in runs[0][2] and "Holm-adjusted over the 1 row(s)" in runs[0][2]
    from orchestrator import api  # the API's frame and the CLI's dataset: the same draws
    same = api.compare(api.load_results(store.fs.root, store.sweep)).iloc[0]
    assert (same.gain_ci_low, same.gain_ci_high, same.p_value) == (row["gain_ci_low"], row["gain_ci_high"],
                                                                   row["p_value"])
    rc, out, err = run_main(capsys, ["query", "--compare", "--ci", "t", "--format", "csv", *where])
    assert rc == 0 and "t over seeds" in out and "t interval over seeds" in err
    rc, out, _ = run_main(capsys, ["query", "--compare", *where])
    assert rc == 0 and "bootstrap seeds+images" in out and "p_holm" in out


def test_query_power(store, capsys):
    import json

    from orchestrator import power
    where = _predicted_sweep(store)
    rc, out, err = run_main(capsys, ["query", "--power", "--effect", "0.05", "--ci", "t", "--format", "json", *where])
    row = json.loads(out)[0]
    sd = abs(6 / 40 - 3 / 40) / 2 ** 0.5  # two seeds: the sd of their gains
    assert rc == 0 and row["n_seeds"] == 2 and row["gain_sd"] == pytest.approx(sd) and row["effect"] == 0.05
    assert row["min_detectable_gain"] == pytest.approx(power.min_detectable(sd, 2))
    assert row["seeds_for_effect"] == power.seeds_needed(0.05, sd) and "80% power" in err
    assert row["power_test"] == "t over seeds" and "paired t-test" in err
    # The default: the test of the default interval, seeds and the split's images.
    rc, out, err = run_main(capsys, ["query", "--power", "--effect", "0.05", "--format", "json", *where])
    row = json.loads(out)[0]
    assert rc == 0 and row["power_test"] == "seeds+images (simulated)" and row["split_sd"] > 0
    assert "split_sd" in err and "--ci t" in err
    # 40 shared test images move the mean gain by about 0.02 on their own: no seed count gives the
    # default interval 80% power against 0.02 (power.split_limit), so it is not reachable
    from orchestrator.power import Components, split_limit
    rc, out, err = run_main(capsys, ["query", "--power", "--effect", "0.02", "--format", "json", *where])
    row = json.loads(out)[0]
    assert split_limit(0.02, Components(1.0, row["split_sd"], 40)) < power.POWER
    assert rc == 0 and row["reachable"] is False and row["seeds_for_effect"] is None
    assert "a gain of 0.02 is not reachable with this test split" in err
    rc, out, _ = run_main(capsys, ["query", "--power", *where])
    assert rc == 0 and "seeds_for_effect" in out


@pytest.mark.parametrize("argv", [["query", "--compare", "--effect", "0.02"], ["query", "--compare", "--ci", "z"],
                                  ["query", "--power", "--effect", "0"], ["query", "--power", "--effect", "x"],
                                  ["report", "--ci", "z"]])
def test_bad_interval_and_power_flags_are_one_line(store, capsys, argv):
    where = _predicted_sweep(store)
    rc, _, err = run_main(capsys, argv + where)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_report_of_unknown_sweep_is_one_line(tmp_path, capsys):
    rc = main(["report", "nope", "--storage", str(tmp_path)])
    assert rc == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1


def test_the_cli_and_user_errors_do_not_import_ray(tmp_path):
    """Only `run` with work to do pays for Ray's import: the CLI module, `plan`, a bad
    yaml and the read-only verbs never load it."""
    (tmp_path / "bad.yaml").write_text("experiments:\n  x:\n    datasets: [mnist]\n    fractions: [0.1]\n")
    (tmp_path / "experiments.yaml").write_text(TINY_YAML)
    code = (
        "import sys\n"
        "import orchestrator.cli as cli\n"
        "assert 'ray' not in sys.modules, 'import orchestrator.cli'\n"
        "for argv in (['plan', '-c', 'bad.yaml', '-e', 'x'], ['run', '-c', 'bad.yaml', '-e', 'x'],\n"
        "             ['plan', '-e', 'tiny', '--json'], ['status', '-e', 'tiny'], ['query', '-e', 'tiny']):\n"
        "    cli.main(argv)\n"
        "    assert 'ray' not in sys.modules, argv\n"
        "print('ok')\n")
    r = python(code, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout[-2000:] + r.stderr[-2000:]


def test_a_finished_command_outlives_a_late_signal(tmp_path):
    """Once a command's exit status is decided, a SIGTERM or Ctrl-C has nothing
    to stop: the process ignores both for its last moments (the interpreter's
    shutdown would otherwise reset the handlers and exit 15 on a SIGTERM that
    lands there, after every round was committed). In-process calls (argv
    given) leave the caller's handlers alone."""
    (tmp_path / "experiments.yaml").write_text(TINY_YAML)
    code = (
        "import os, signal, sys\n"
        "import orchestrator.cli as cli\n"
        "cli.main(['plan', '-e', 'tiny', '--json'])\n"
        "assert signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN\n"
        "sys.argv = ['lth-sweep', 'plan', '-e', 'tiny', '--json']\n"
        "rc = cli.main()\n"
        "assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN and signal.getsignal(signal.SIGINT) is signal.SIG_IGN\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "sys.exit(rc)\n")
    r = python(code, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]


def test_allow_precision_change_reaches_every_trial_and_no_trial_id(tmp_path, capsys, tiny_yaml, monkeypatch):
    """`run --allow-precision-change` is a run option (workers/context.py stops a
    lineage that would change precision without it), not part of what a trial is."""
    import orchestrator.driver
    seen = []

    def fake_run(request):
        seen.append(request)
        (tmp_path / "runs" / request.sweep_name).mkdir(parents=True)  # an empty sweep: nothing to print
        return 0
    monkeypatch.setattr(orchestrator.driver, "run_sweep", fake_run)
    monkeypatch.chdir(tmp_path)
    for flag in ([], ["--allow-precision-change"]):
        assert run_main(capsys, ["run", "-c", str(tiny_yaml), "-e", "tiny", "--name", f"t{len(seen)}", *flag])[0] == 0
    ids = [[t.trial_id for t in r.trials] for r in seen]
    assert len(ids) == 2 and ids[0] == ids[1] and len(ids[0]) == 4
    assert [{t.options.allow_precision_change for t in r.trials} for r in seen] == [{False}, {True}]
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "--allow-precision-change" in capsys.readouterr().out


# A Ctrl-C while the driver plans and checks (before it holds the sweep): in
# the chaos test's run it landed inside numpy's import and left a half-built
# module, and the run died of an AttributeError with a traceback instead of
# stopping. Until the lock nothing is written, so the stop is immediate.
_EARLY_STOP = """
import os, signal, sys, time
import workers.preflight as preflight
def interrupted(*a, **k):  # as an import that turns the interrupt into a broken module
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(30)
    except KeyboardInterrupt:
        pass
    raise AttributeError("module 'numpy' has no attribute 'nonzero'")
preflight.check = interrupted
sys.argv = ["lth-sweep", "run", "-e", "tiny", "--num-cpus", "2"]
from orchestrator.cli import main
sys.exit(main())
"""


def test_a_stop_before_the_driver_holds_the_sweep_is_immediate_and_clean(tmp_path):
    from tests.helpers import TINY_YAML, python
    (tmp_path / "experiments.yaml").write_text(TINY_YAML)
    r = python(_EARLY_STOP, cwd=tmp_path, timeout=120)
    assert r.returncode == 130, (r.returncode, r.stderr[-2000:])
    assert r.stderr.strip().endswith("Re-run the same command to resume.") and "Traceback" not in r.stderr
    assert not (tmp_path / "runs" / "tiny" / "trials").exists()
