"""What tests share: the tiny experiment, running the CLI as a user does, reading a sweep back."""
import io
import json
import os
import subprocess
import sys

import matplotlib.image
import pandas as pd

from workers.store import SweepStore

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Trials of CLI runs train on the CPU even on a GPU host: the bit-exact checks
# are CPU facts, and fake GPUs must not land on real ones (CUDA tests: -m cuda).
CPU_ENV = {"LTH_DEVICE": "cpu"}
# What a CLI run's processes (the driver, and the trials of the Ray it starts,
# or of the tests' shared Ray) see on top of the caller's environment.
RUN_ENV = {"PYTHONPATH": ROOT, "RAY_AIR_NEW_OUTPUT": "0", **CPU_ENV}


# A tiny experiment: real digits, a real (narrow) ResNet-18, seconds per lineage.
TINY_YAML = """
defaults:
  arch: resnet18
  model: {width: 0.125}
  train: {epochs: 3, batch_size: 40, lr: 0.05}
  imp: {rounds: 2, rate: 0.2, rewind_epoch: 1}
  resources: {gpu: 0, cpu: 1}
experiments:
  tiny:
    datasets: [digits]
    fractions: [0.1, 0.2]
    augmentations: [none, basic]
    methods: [imp]
"""


# The verbs that only read storage and the yaml. Each of them run as a process
# of its own pays an interpreter and a torch import (2-4 s) for well under a
# second of work, so cli() runs them through the same `main` in this process;
# so does `run` on a Ray it joins (--address: the tests' shared one), whose
# trials are processes of that Ray's anyway. A `run` that starts its own Ray
# (or is to be killed) is a process, as a user's is.
# What only a process shows (the console script, the imports a verb pulls in,
# exit statuses of `python -m orchestrator`) is checked in
# tests/orchestrator/test_cli.py with processes of their own.
READ_ONLY_VERBS = {"plan", "status", "query", "report", "verify"}


def cli(*args, cwd, timeout=300, env=None, process=False, **kw):
    """Run `lth-sweep ARGS` in `cwd` as a user would (env: its environment,
    default ours): as its own process, or (a read-only verb, or `run --address`;
    unless `process`) through orchestrator.cli.main here. Either way a
    CompletedProcess (in this process, `timeout` does not apply)."""
    env = {**(os.environ if env is None else env), **RUN_ENV}
    if process or kw or not (args[0] in READ_ONLY_VERBS or (args[0] == "run" and "--address" in args)):
        return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=timeout, **kw)
    return _in_process(list(args), cwd, env)


def _in_process(argv, cwd, env):
    import contextlib
    import signal
    import traceback

    from orchestrator.cli import main
    out, err = io.StringIO(), io.StringIO()
    saved_env = dict(os.environ)
    saved_signals = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    os.environ.clear()
    os.environ.update(env)
    try:
        with contextlib.chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(argv)
            except SystemExit as e:  # argparse's --help
                rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except BaseException:  # what a process would print before dying with status 1
                traceback.print_exc()
                rc = 1
    finally:
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():  # a run that died before its own shutdown
            ray.shutdown()
        os.environ.clear()
        os.environ.update(saved_env)
        for sig, handler in saved_signals.items():
            signal.signal(sig, handler)
    return subprocess.CompletedProcess([sys.executable, "-m", "orchestrator", *argv], rc, out.getvalue(),
                                       err.getvalue())


def python(code: str, cwd=ROOT, timeout=300):
    """Run a Python snippet in a process of its own, with the project importable
    (for what is global to a process: signals, imports, a crash)."""
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env={**os.environ, **RUN_ENV},
                          capture_output=True, text=True, timeout=timeout)


def table(storage, sweep="tiny"):
    return pd.read_parquet(os.path.join(storage, sweep, "results"))


def manifests(storage, sweep="tiny"):
    """{(trial, round): manifest digest}: a round trained twice would change it."""
    st = SweepStore(str(storage), sweep)
    return {(t, k): m["manifest_sha256"] for t in st.trial_ids()
            for k, m in st.lineage(t).manifests().items()}


def built_once(tmp_path_factory, name: str, build):
    """`build(folder)` once per pytest run, shared by the xdist workers: a
    sweep several modules read is built by the first worker that asks for it
    (under a file lock), and the others wait on the lock and read the same
    folder instead of building their own (a tiny sweep is 20-40 s of a 2-core
    machine). `build` returns a CompletedProcess (or None); the same comes
    back to every caller. Readers must not change what was built (a report
    written beside it is fine); a build that failed is tried again by the next
    caller, in the same folder."""
    from filelock import FileLock
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the run's root, above each worker's own basetemp
    d = base / "built-once" / name
    done = d / "built.json"
    d.mkdir(parents=True, exist_ok=True)
    with FileLock(str(d) + ".lock"):
        if not done.exists():
            r = build(d / "out")
            saved = None if r is None else {"args": list(map(str, r.args)), "returncode": r.returncode,
                                            "stdout": r.stdout, "stderr": r.stderr}
            done.write_text(json.dumps(saved))
    saved = json.loads(done.read_text())
    return d / "out", None if saved is None else subprocess.CompletedProcess(**saved)


def uninterrupted(d, yaml_text, ray=("--num-cpus", "2")):
    """Run experiment `tiny` of `yaml_text` once, to the end, in folder d (`ray`: the
    run's Ray flags, by default a local Ray of its own)."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "experiments.yaml").write_text(yaml_text)
    r = cli("run", "-e", "tiny", *ray, cwd=d)
    assert r.returncode == 0, r.stdout + r.stderr
    return d, r


def uninterrupted_rows(request, yaml_text) -> list:
    """`query --format json` of an uninterrupted run of `yaml_text` (on the tests'
    shared Ray, built once per pytest run for each yaml): the rows a run that
    was killed, stopped or faulted must end with."""
    import hashlib
    name = "ref-" + hashlib.sha256(yaml_text.encode()).hexdigest()[:12]
    d, _ = built_once(request.getfixturevalue("tmp_path_factory"), name,
                      lambda d: uninterrupted(d, yaml_text, ray=request.getfixturevalue("shared_ray"))[1])
    q = cli("query", "-e", "tiny", "--format", "json", cwd=d)
    assert q.returncode == 0, q.stderr
    return json.loads(q.stdout)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(source):
    """A valid, non-empty PNG that matplotlib reads back as an image."""
    data = open(source, "rb").read() if isinstance(source, str) else source
    assert data[:8] == PNG_SIGNATURE and len(data) > 2000
    img = matplotlib.image.imread(io.BytesIO(data))
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100


def race(fn, n: int) -> list:
    """Call fn() from n threads released at the same instant; its results (an
    exception in any thread fails the caller)."""
    import threading
    barrier = threading.Barrier(n)
    results, errors = [], []

    def worker():
        barrier.wait()
        try:
            results.append(fn())
        except Exception as e:  # re-raised below, in the caller's thread
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results
