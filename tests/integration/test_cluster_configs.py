"""The cluster configs and image: Ray's own validation, the Dockerfile installs like the docs say (docs/clusters.md)."""
import copy
import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile

import pytest
import yaml

from tests.helpers import ROOT

pytestmark = pytest.mark.ray


DOCKER = os.path.join(ROOT, "docker")


CONFIGS = ["cluster.yaml", "cluster-local.yaml"]


def ray_up_validate(config: dict) -> dict:
    """What `ray up` does to a config before it talks to any machine or cloud:
    merge the provider's defaults, check docker settings, validate against
    Ray's cluster-config JSON schema (ray/autoscaler/ray-schema.json) and its
    cross-field rules. Raises on an invalid config."""
    from ray.autoscaler._private.providers import _get_node_provider_cls
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    if prepared["provider"]["type"] == "local":
        # The on-premise provider's bootstrap is local (no cloud API): run it too.
        prepared = _get_node_provider_cls(prepared["provider"]).bootstrap_config(prepared)
    return prepared


def load(name: str) -> dict:
    with open(os.path.join(DOCKER, name)) as f:
        return yaml.safe_load(f)


def _setup_installs_mount(cfg: dict) -> None:
    """setup_commands install the project (`pip install .`) from the folder the
    checkout is synced to, and that folder is the checkout."""
    installs = [c for c in cfg["setup_commands"] if "pip install" in c]
    assert installs, cfg["setup_commands"]
    m = re.search(r"cd (\S+) && pip install(?: -q)? \.$", installs[0])
    assert m, installs[0]
    assert cfg["file_mounts"].get(m.group(1)) == ".", cfg["file_mounts"]


@pytest.mark.parametrize("name", CONFIGS)
def test_cluster_configs_pass_ray_validation(name):
    cfg = load(name)
    prepared = ray_up_validate(cfg)
    assert cfg["docker"]["image"] and cfg["docker"]["container_name"]
    _setup_installs_mount(cfg)
    head = " ".join(prepared["head_start_ray_commands"])
    assert "ray start --head" in head and "--dashboard-host=127.0.0.1" in head
    assert "ray start --address=$RAY_HEAD_IP:6379" in " ".join(prepared["worker_start_ray_commands"])
    text = open(os.path.join(DOCKER, name)).read()
    assert not re.search(r"AWS_SECRET_ACCESS_KEY|aws_secret_access_key|AKIA[0-9A-Z]{16}", text)
    if cfg["provider"]["type"] == "local":
        assert cfg["provider"]["head_ip"] and cfg["provider"]["worker_ips"]
        nt = prepared["available_node_types"]["local.cluster.node"]
        assert nt["min_workers"] == nt["max_workers"] == len(cfg["provider"]["worker_ips"])
    else:
        types = prepared["available_node_types"]
        workers = [t for n, t in types.items() if n != prepared["head_node_type"]]
        assert any(t["resources"].get("GPU", 0) >= 1 for t in workers), "no GPU worker node type"
        assert types[prepared["head_node_type"]]["resources"].get("GPU", 0) == 0


def _broken(name):
    """Copies of the configs with one mistake each: Ray's validation must refuse them."""
    def drop_resources(c):
        del c["available_node_types"]["gpu.1x"]["resources"]

    def bad_head_type(c):
        c["head_node_type"] = "ray.head.typo"

    def typo_top_key(c):
        c["setup_comands"] = c.pop("setup_commands")

    def typo_docker_key(c):
        c["docker"]["imgae"] = c["docker"].pop("image")

    def min_over_max(c):
        c["available_node_types"]["gpu.1x"]["min_workers"] = c["max_workers"] + 1

    def no_worker_ips(c):
        c["provider"]["workers_ips"] = c["provider"].pop("worker_ips")

    def node_types_on_local(c):
        c["available_node_types"] = {"x": {"resources": {}, "node_config": {}}}

    if name == "cluster.yaml":
        return [drop_resources, bad_head_type, typo_top_key, typo_docker_key, min_over_max]
    return [typo_top_key, typo_docker_key, no_worker_ips, node_types_on_local]


@pytest.mark.parametrize("name,mutate", [(n, m) for n in CONFIGS for m in _broken(n)],
                         ids=lambda v: v if isinstance(v, str) else v.__name__)
def test_broken_cluster_config_fails_validation(name, mutate):
    import click
    import jsonschema

    cfg = load(name)
    ray_up_validate(cfg)  # the original passes...
    mutate(cfg)
    # Ray refuses it with a schema error, a ValueError, the launcher's abort,
    # or (docker section without an image) an assertion of its docker check.
    with pytest.raises((jsonschema.ValidationError, ValueError, click.ClickException, AssertionError)):
        ray_up_validate(cfg)  # ...the broken copy does not


def parse_dockerfile(path):
    """[(INSTRUCTION, args)], with line continuations joined and ARGs substituted."""
    text = open(path).read()
    lines, cur = [], ""
    for raw in text.splitlines():
        s = raw.strip()
        if not cur and (not s or s.startswith("#")):
            continue
        if s.startswith("#"):
            continue  # a comment inside a continued instruction
        if s.endswith("\\"):
            cur += s[:-1] + " "
            continue
        lines.append(cur + s)
        cur = ""
    out, args = [], {}
    for line in lines:
        instr, _, rest = line.partition(" ")
        instr = instr.upper()
        rest = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), rest.strip())
        if instr == "ARG" and "=" in rest:
            k, v = rest.split("=", 1)
            args[k] = v
        out.append((instr, rest))
    return out


def _pip_install_targets(cmd: str):
    """Targets of each `pip install` in a shell command line: ['.'] for
    `pip install -q .`, ['-e', '.'] for `pip install -e .`."""
    lex = shlex.shlex(cmd, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    found, toks = [], list(lex) + [";"]
    simple = []
    for t in toks:
        if t in ("&&", "||", ";", "|", "&", ">", "<"):
            for i in range(len(simple) - 1):  # pip / .venv/bin/pip / python -m pip
                if os.path.basename(simple[i]) in ("pip", "pip3") and simple[i + 1] == "install":
                    # Options that only tune pip (-q, --no-cache-dir) are dropped;
                    # -e stays: an editable install is not the cluster install.
                    found.append(["-e" if a in ("-e", "--editable") else a
                                  for a in simple[i + 2:] if a in ("-e", "--editable") or not a.startswith("-")])
                    break
            simple = []
        else:
            simple.append(t)
    return found


def _wheel(src_dir, out_dir):
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "-q", "-w", str(out_dir), str(src_dir)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    (whl,) = glob.glob(os.path.join(out_dir, "*.whl"))
    with zipfile.ZipFile(whl) as z:
        names = sorted(n for n in z.namelist() if ".dist-info/" not in n)
        entry = [z.read(n).decode() for n in z.namelist() if n.endswith("entry_points.txt")]
    return names, "".join(entry)


def test_dockerfile_installs_the_project_like_the_docs(tmp_path):
    steps = parse_dockerfile(os.path.join(DOCKER, "Dockerfile"))
    (base,) = [a for i, a in steps if i == "FROM"]
    assert re.search(r"(-gpu|cuda)", base), f"not a CUDA base image: {base}"
    assert steps[-1][0] in ("CMD", "ENTRYPOINT")

    # Replay the filesystem part of the build: COPY from the build context
    # (the repository root) into an image root, RUN's `pip install` target
    # resolved against WORKDIR.
    image, workdir, installs = tmp_path / "image", "/", []
    for instr, arg in steps:
        if instr == "WORKDIR":
            workdir = os.path.join(workdir, arg)
        elif instr == "COPY":
            toks = [t for t in shlex.split(arg) if not t.startswith("--")]
            *srcs, dest = toks
            dest = os.path.join(workdir, dest)
            for src in srcs:
                s = os.path.join(ROOT, src)
                assert os.path.exists(s), f"COPY {src}: not in the build context"
                target = image / (os.path.join(dest, os.path.basename(src.rstrip("/")))
                                  if os.path.isfile(s) else dest).lstrip("/")
                if os.path.isdir(s):
                    shutil.copytree(s, target, dirs_exist_ok=True,
                                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(s, target)
        elif instr == "RUN":
            for targets in _pip_install_targets(arg):
                installs.append([os.path.join(workdir, t) for t in targets])
    assert installs, "the Dockerfile never runs `pip install`"
    (project,) = installs[0]
    project_dir = image / project.lstrip("/")
    assert (project_dir / "pyproject.toml").exists(), f"`pip install {project}` but no project copied there"
    # Commands the launcher runs in the container (`ray submit`, `ray exec`)
    # start in the final WORKDIR: `-c experiments.yaml`, the default, is there.
    assert (image / workdir.lstrip("/") / "experiments.yaml").exists()

    # Build the wheel from what the image holds and from the whole checkout:
    # the same modules, the same console script.
    checkout = tmp_path / "checkout"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if os.path.isfile(os.path.join(ROOT, f)):
            (checkout / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(os.path.join(ROOT, f), checkout / f)
    in_image, entry_image = _wheel(project_dir, tmp_path / "w1")
    in_checkout, _ = _wheel(checkout, tmp_path / "w2")
    assert in_image == in_checkout
    assert "orchestrator/submit.py" in in_image and "workers/lineage.py" in in_image
    assert re.search(r"lth-sweep\s*=\s*orchestrator\.cli:main", entry_image)

    # The documented cluster install command is the same: `pip install .`.
    page = open(os.path.join(ROOT, "docs", "clusters.md")).read()
    page_targets = [t for line in page.splitlines() if "pip install" in line
                    for t in _pip_install_targets(line.strip().strip("`"))]
    assert ["."] in page_targets, "docs/clusters.md does not show `pip install .` (the cluster install)"


def test_submit_entry_joins_the_cluster_unless_told_otherwise():
    from orchestrator.submit import _argv
    assert _argv(["-e", "x"]) == ["run", "--address", "auto", "-e", "x"]
    assert _argv(["--address", "10.0.0.1:6379", "-e", "x"]) == ["run", "--address", "10.0.0.1:6379", "-e", "x"]
    assert _argv(["--address=ray://h:10001"]) == ["run", "--address=ray://h:10001"]


def test_ci_runs_the_readmes_test_command():
    """`.ci/run` is the README's second command, character for character."""
    readme = open(os.path.join(ROOT, "README.md")).read()
    section = readme.split("Run the tests", 1)[1].split("`.ci/run`", 1)[0]
    (command,) = [line.strip() for line in section.splitlines() if line.startswith("    ")]
    ci = [line.strip() for line in open(os.path.join(ROOT, ".ci", "run")) if line.strip().startswith("python3")]
    assert ci == [command]
