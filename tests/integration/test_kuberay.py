"""docker/kuberay/rayjob.yaml: valid against KubeRay's published RayJob CRD, and
its entrypoint is an `lth-sweep run` that our own CLI accepts and that fits the pods.

The CRD (docker/kuberay/crd/, source in SOURCE there) is validated the way the
API server would: its v1 openAPIV3Schema through `jsonschema`, with Kubernetes'
extensions translated (x-kubernetes-int-or-string, nullable), plus what JSON
Schema alone does not catch: a key that the API server would prune (a typo in a
typed object: structural schemas never say additionalProperties: false) and
duplicate keys of list-type map/set lists. CEL rules (x-kubernetes-validations)
cannot be evaluated here, so the manifest must not use a field that has them.
"""
from __future__ import annotations

import copy
import functools
import gzip
import hashlib
import io
import json
import os
import re
import shlex
from contextlib import redirect_stdout

import jsonschema
import pytest
import yaml

from tests.helpers import ROOT

KUBERAY = os.path.join(ROOT, "docker", "kuberay")
MANIFEST = os.path.join(KUBERAY, "rayjob.yaml")
CRD = os.path.join(KUBERAY, "crd", "ray.io_rayjobs.yaml.gz")

# What the API server keeps of an object's own metadata (ObjectMeta, writable fields).
OBJECT_META = {"name", "generateName", "namespace", "labels", "annotations", "finalizers", "ownerReferences"}


def crd_text() -> bytes:
    with gzip.open(CRD) as f:
        return f.read()


@functools.lru_cache(maxsize=1)
def v1_schema() -> dict:
    """The CRD's v1 schema (1.4 MB of YAML: parsed once; nothing here changes it)."""
    crd = yaml.load(crd_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    assert crd["kind"] == "CustomResourceDefinition" and crd["spec"]["names"]["kind"] == "RayJob"
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return v1["schema"]["openAPIV3Schema"]


def manifest() -> dict:
    with open(MANIFEST) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    assert len(docs) == 1, "rayjob.yaml: one RayJob"
    return docs[0]


# --- Kubernetes structural schema -> JSON Schema ------------------------------

def to_jsonschema(node):
    """A copy of a CRD schema node that `jsonschema` reads as the API server
    does: int-or-string is an integer or a string, nullable admits null."""
    if isinstance(node, list):
        return [to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: to_jsonschema(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in node:
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def pruned_and_unchecked(obj, schema, path="", root=True):
    """Walk a manifest against a structural schema. Returns (errors, cel_paths):
    the keys the API server would prune (unknown to a typed object: no
    additionalProperties, no x-kubernetes-preserve-unknown-fields), duplicate
    keys of list-type map/set lists; and the paths the manifest sets that carry
    CEL rules (x-kubernetes-validations), which no test here can evaluate."""
    errors, cel = [], []
    if "x-kubernetes-validations" in schema:
        cel.append(path or "/")
    if isinstance(obj, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        preserve = schema.get("x-kubernetes-preserve-unknown-fields") is True
        embedded = root or schema.get("x-kubernetes-embedded-resource") is True
        for key, value in obj.items():
            where = f"{path}.{key}"
            if embedded and key in ("apiVersion", "kind"):
                continue
            if embedded and key == "metadata":
                errors += [f"{where}.{k}: not an ObjectMeta field (pruned)" for k in value if k not in OBJECT_META]
                continue
            if key in props:
                sub = props[key]
            elif isinstance(extra, dict):
                sub = extra
            elif extra is True or preserve:
                continue
            else:
                errors.append(f"{where}: unknown field (the API server prunes it)")
                continue
            e, c = pruned_and_unchecked(value, sub, where, root=False)
            errors, cel = errors + e, cel + c
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        kind = schema.get("x-kubernetes-list-type")
        if kind in ("map", "set"):
            keys = schema.get("x-kubernetes-list-map-keys", [])
            seen = [tuple(i.get(k) for k in keys) if kind == "map" else json.dumps(i, sort_keys=True) for i in obj]
            if len(set(seen)) != len(seen):
                errors.append(f"{path}: duplicate {'keys ' + str(keys) if kind == 'map' else 'items'} "
                              f"in a list-type {kind}")
        for i, item in enumerate(obj):
            e, c = pruned_and_unchecked(item, schema["items"], f"{path}[{i}]", root=False)
            errors, cel = errors + e, cel + c
    return errors, cel


def _where(path) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path) or "/"


@functools.lru_cache(maxsize=1)
def _crd_validator():
    return jsonschema.Draft4Validator(to_jsonschema(v1_schema()))


def problems(obj, schema) -> list[str]:
    """Everything the API server would refuse or silently drop; [] if none."""
    validator = _crd_validator() if schema is v1_schema() else jsonschema.Draft4Validator(to_jsonschema(schema))
    errors = [f"{_where(e.absolute_path)}: {e.message}" for e in validator.iter_errors(obj)]
    pruned, _ = pruned_and_unchecked(obj, schema)
    return errors + pruned


# --- the manifest against the CRD ----------------------------------------------

def test_crd_is_the_published_one_named_in_source():
    source = open(os.path.join(KUBERAY, "crd", "SOURCE")).read()
    (sha,) = re.findall(r"^sha256:\s+([0-9a-f]{64})", source, re.M)
    assert hashlib.sha256(crd_text()).hexdigest() == sha
    assert "ray-project/kuberay" in source and re.search(r"^tag:\s+v\d+\.\d+\.\d+", source, re.M)
    assert re.search(r"^commit:\s+[0-9a-f]{40}$", source, re.M)


def test_rayjob_is_valid_against_kuberays_crd():
    obj, schema = manifest(), v1_schema()
    assert obj["apiVersion"] == "ray.io/v1" and obj["kind"] == "RayJob"
    assert problems(obj, schema) == []
    _, cel = pruned_and_unchecked(obj, schema)
    assert cel == [], f"fields with CEL rules that this test cannot check: {cel}"


def _broken():
    """One mistake each, of the kinds the API server refuses or prunes."""
    def worker(m):
        return m["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]

    def replicas_as_text(m):
        worker(m)["replicas"] = "two"

    def typo_in_worker_group(m):
        worker(m)["minReplica"] = worker(m).pop("minReplicas")

    def typo_in_container(m):
        c = worker(m)["template"]["spec"]["containers"][0]
        c["imgae"] = c.pop("image")

    def typo_in_spec(m):
        m["spec"]["shutdownAfterJobFinish"] = m["spec"].pop("shutdownAfterJobFinishes")

    def typo_in_metadata(m):
        m["metadata"]["lables"] = m["metadata"].pop("labels")

    def ray_start_param_not_a_string(m):
        worker(m)["rayStartParams"]["num-gpus"] = 1

    def no_group_name(m):
        del worker(m)["groupName"]

    def backoff_limit_as_text(m):
        m["spec"]["backoffLimit"] = "3"

    def quantity_not_int_or_string(m):
        worker(m)["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = [8]

    def quantity_bad_string(m):
        worker(m)["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] = "32 gigs"

    def duplicate_container_name(m):
        cs = worker(m)["template"]["spec"]["containers"]
        cs.append(copy.deepcopy(cs[0]))

    # (mistake, what the refusal must say)
    return [(replicas_as_text, ".replicas: 'two' is not of type 'integer'"),
            (typo_in_worker_group, ".minReplica: unknown field"),
            (typo_in_container, ".containers[0].imgae: unknown field"),
            (typo_in_spec, ".spec.shutdownAfterJobFinish: unknown field"),
            (typo_in_metadata, ".metadata.lables: not an ObjectMeta field"),
            (ray_start_param_not_a_string, ".num-gpus: 1 is not of type 'string'"),
            (no_group_name, "'groupName' is a required property"),
            (backoff_limit_as_text, ".spec.backoffLimit: '3' is not of type 'integer'"),
            (quantity_not_int_or_string, ".limits.cpu: [8] is not valid under any of the given schemas"),
            (quantity_bad_string, ".limits.memory: '32 gigs' does not match"),
            (duplicate_container_name, ".containers: duplicate keys ['name']")]


@pytest.mark.parametrize("mutate,expect", _broken(), ids=[f.__name__ for f, _ in _broken()])
def test_broken_rayjob_fails_validation(mutate, expect):
    obj, schema = manifest(), v1_schema()
    assert problems(obj, schema) == []  # the original passes...
    mutate(obj)
    found = problems(obj, schema)       # ...the broken copy does not, for the right reason
    assert any(expect in p for p in found), f"{mutate.__name__}: {found or 'accepted'}"


def test_preserve_unknown_fields_and_int_or_string_handling():
    """The CRD has no preserve-unknown-fields node today: check the walk on a small schema."""
    schema = {"type": "object", "properties": {
        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                 "properties": {"n": {"type": "integer"}}},
        "typed": {"type": "object", "properties": {"n": {"type": "integer"}}},
        "bare": {"type": "object"},
        "q": {"x-kubernetes-int-or-string": True}}}
    assert problems({"free": {"anything": 1, "n": 2}, "q": 3}, schema) == []
    assert problems({"q": "3"}, schema) == []
    assert problems({"free": {"n": "x"}}, schema)          # known fields stay typed under preserve
    assert problems({"typed": {"m": 1}}, schema)           # a typo in a typed object
    assert problems({"bare": {"m": 1}}, schema)            # an object with no fields keeps none
    assert problems({"q": 1.5}, schema) and problems({"q": None}, schema)


# --- what the manifest runs ----------------------------------------------------

def _pods(m):
    rc = m["spec"]["rayClusterSpec"]
    head = rc["headGroupSpec"]
    return head, rc["workerGroupSpecs"]


def _container(group):
    return group["template"]["spec"]["containers"][0]


def _run_args(m):
    """The entrypoint, parsed by `lth-sweep`'s own parser (raises on what it refuses)."""
    from orchestrator.cli import build_parser
    argv = shlex.split(m["spec"]["entrypoint"])
    assert argv[:2] == ["lth-sweep", "run"], argv
    return build_parser().parse_args(argv[1:])


def _plan(config, experiment):
    from orchestrator.cli import main
    out = io.StringIO()
    with redirect_stdout(out):
        rc = main(["plan", "-c", config, "-e", experiment, "--json"])
    assert rc == 0
    return json.loads(out.getvalue())


def test_entrypoint_is_an_lth_sweep_run_our_cli_accepts():
    from tests.integration.test_cluster_configs import parse_dockerfile

    m = manifest()
    args = _run_args(m)
    assert args.cmd == "run"
    assert args.address == "auto", "without --address auto the driver starts its own Ray in the head pod"
    assert args.storage.startswith("s3://") or args.storage.startswith("/mnt/shared/"), args.storage

    # A Ray job starts in a temporary folder: the config is a path in the image.
    # Replay the Dockerfile's WORKDIR/COPY to find where experiments.yaml lands.
    assert os.path.isabs(args.config), args.config
    workdir, in_image = "/", {}
    for instr, arg in parse_dockerfile(os.path.join(ROOT, "docker", "Dockerfile")):
        if instr == "WORKDIR":
            workdir = os.path.join(workdir, arg)
        elif instr == "COPY":
            *srcs, dest = [t for t in shlex.split(arg) if not t.startswith("--")]
            for src in srcs:
                if os.path.isfile(os.path.join(ROOT, src)):
                    in_image[os.path.normpath(os.path.join(workdir, dest, os.path.basename(src)))] = src
    assert args.config in in_image, f"{args.config} is not in the image (it has {sorted(in_image)})"

    # The experiment exists in that file, and every trial fits a worker pod.
    plan = _plan(os.path.join(ROOT, in_image[args.config]), args.experiment)
    assert plan["count"] > 0
    head, workers = _pods(m)
    assert head["rayStartParams"].get("num-cpus") == "0", "trials must not land on the head"
    fits = []
    for g in workers:
        limits = _container(g)["resources"]["limits"]
        gpus = int(limits["nvidia.com/gpu"])
        assert g["rayStartParams"].get("num-gpus") == str(gpus), "num-gpus != the nvidia.com/gpu limit"
        fits.append((gpus, float(g["rayStartParams"].get("num-cpus", limits["cpu"]))))
    for t in plan["trials"]:
        r = t["resources"]
        assert {"gpu", "cpu"} <= set(r), r
        assert any(r.get("gpu", 0) <= g and r.get("cpu", 1) <= c for g, c in fits), f"no worker pod fits {r}"


def test_pods_share_image_storage_settings_and_no_secrets():
    m = manifest()
    head, workers = _pods(m)
    groups = [head, *workers]
    images = {_container(g)["image"] for g in groups}
    assert len(images) == 1, images
    # The same placeholder as docker/cluster.yaml: the image of docker/Dockerfile.
    with open(os.path.join(ROOT, "docker", "cluster.yaml")) as f:
        assert images == {yaml.safe_load(f)["docker"]["image"]}
    text = open(MANIFEST).read()
    for path in re.findall(r"docker/\S+", text):
        assert os.path.exists(os.path.join(ROOT, path.rstrip(".,;:)"))), path
    assert "docker/Dockerfile" in text
    dockerfile = open(os.path.join(ROOT, "docker", "Dockerfile")).read()
    (ray_version,) = re.findall(r"^ARG RAY_VERSION=(\S+)", dockerfile, re.M)
    assert m["spec"]["rayClusterSpec"]["rayVersion"] == ray_version

    # Trials commit from the worker pods: every pod sees the same storage settings.
    envs = [_container(g).get("env", []) for g in groups]
    assert all(e == envs[0] for e in envs)
    names = {e["name"] for e in envs[0]}
    if _run_args(m).storage.startswith("s3://"):
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= names or "serviceAccountName" in text
        for e in envs[0]:
            if e["name"] in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                assert "secretKeyRef" in e["valueFrom"], f"{e['name']} must come from a Secret"
    assert not re.search(r"AKIA[0-9A-Z]{16}|aws_secret_access_key\s*[:=]\s*\S", text)

    # Retries that resume: the driver is re-run by KubeRay, and the cluster goes when done.
    spec = m["spec"]
    assert spec["backoffLimit"] >= 1 and spec["submitterConfig"]["backoffLimit"] >= 1
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec.get("submissionMode", "K8sJobMode") == "K8sJobMode"


def test_kuberays_own_spec_rules():
    """What KubeRay's operator checks beyond the CRD (ray-operator/controllers/ray/utils/validation.go,
    ValidateRayJobMetadata / ValidateRayJobSpec / ValidateRayClusterSpec) for this manifest's shape."""
    m = manifest()
    name = m["metadata"]["name"]
    assert len(name) <= 47 and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name), name  # DNS-1035, 53 - 6
    spec = m["spec"]
    assert not spec.get("suspend") and not spec.get("clusterSelector")
    assert spec.get("ttlSecondsAfterFinished", 0) >= 0
    assert spec.get("ttlSecondsAfterFinished", 0) == 0 or spec["shutdownAfterJobFinishes"]
    head, workers = _pods(m)
    assert head["template"]["spec"]["containers"]
    autoscaling = spec["rayClusterSpec"].get("enableInTreeAutoscaling", False)
    for g in workers:
        assert g["template"]["spec"]["containers"]
        if not autoscaling:
            assert "minReplicas" in g and "maxReplicas" in g
        assert 0 <= g["minReplicas"] <= g.get("replicas", g["minReplicas"]) <= g["maxReplicas"]
