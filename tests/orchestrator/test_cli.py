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
