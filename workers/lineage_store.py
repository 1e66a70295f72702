"""One lineage's part of the store (workers/store.py has the layout): its
spec and markers, the atomic round commit and its manifests, the committed
pointer, verification and the rolling mid-round checkpoint."""
from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from typing import TYPE_CHECKING, Iterable, Optional

from workers.errors import CorruptRound, TakenOver
from workers.fs import check_name
from workers.migrate import predates_predictions, rounds_without_pointer

if TYPE_CHECKING:
    from workers.store import SweepStore

MANIFEST = "MANIFEST.json"
_ROUND_MANIFEST = re.compile(r"round_(\d+)/" + re.escape(MANIFEST))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _manifest_digest(body: dict) -> str:
    return sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def _parse_manifest(raw: bytes) -> Optional[dict]:
    try:
        man = json.loads(raw)
        digest = man.pop("manifest_sha256")
    except (ValueError, KeyError, AttributeError, TypeError):
        return None
    if _manifest_digest(man) != digest:
        return None
    man["manifest_sha256"] = digest
    return man


def _dumps(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, indent=1, default=str).encode()


def _sealed(body: dict, files: dict[str, bytes]) -> dict:
    """A manifest: `body`, every file's sha256 and size, and its own sha256."""
    body = {**body, "files": {n: {"sha256": sha256(b), "bytes": len(b)} for n, b in files.items()}}
    return {**body, "manifest_sha256": _manifest_digest(body)}


def prefix(rounds) -> int:
    """How many of `rounds` (round numbers) run contiguously from round 0."""
    k = 0
    while k in rounds:
        k += 1
    return k


class LineageStore:
    """The storage of one trial's IMP lineage."""

    def __init__(self, sweep: SweepStore, trial_id: str):
        self.sweep = sweep
        self.fs = sweep.fs
        self.trial_id = check_name("trial", trial_id)
        self.dir = sweep.path("trials", trial_id)

    # --- paths -----------------------------------------------------------
    def round_dir(self, k: int) -> str:
        return f"{self.dir}/round_{k}"

    def round_uri(self, k: int) -> str:
        return self.fs.to_uri(self.round_dir(k))

    def partial_dir(self, k: int) -> str:
        return f"{self.dir}/partial/round_{k}"

    # --- evaluations after the lineage (workers/evaluations/) ----------
    def write_analysis(self, name: str, doc: dict) -> None:
        self.write_marker(f"analysis/{check_name('analysis', name)}.json", doc)

    def read_analysis(self, name: str) -> Optional[dict]:
        return self.read_marker(f"analysis/{check_name('analysis', name)}.json")  # absent or torn: computed again

    def analyses(self) -> list[str]:
        names = self.fs.listdir(f"{self.dir}/analysis")
        return sorted(n[:-5] for n in names if n.endswith(".json") and ".tmp-" not in n and not n.startswith("."))

    # --- spec / markers -------------------------------------------------
    def write_spec(self, spec_dict: dict, replace: bool = False) -> None:
        if replace or not self.fs.exists(f"{self.dir}/spec.json"):
            self.write_marker("spec.json", spec_dict)

    def read_spec(self) -> Optional[dict]:
        return self.read_marker("spec.json")

    def claim(self, info: dict) -> str:
        """Make this attempt the lineage's owner; returns its token. A trial Tune restarts elsewhere (a
        lost node, a retried actor) may leave the old attempt alive for a moment: every commit checks the
        token first (`check_owner`), so the stale attempt stops instead of committing a round twice."""
        token = uuid.uuid4().hex
        self.write_marker("OWNER.json", {**info, "token": token, "time": time.time()})
        return token

    def check_owner(self, token: Optional[str]) -> None:
        if token is None:
            return
        owner = self.read_marker("OWNER.json")
        if owner is not None and owner.get("token") != token:
            raise TakenOver(f"trial {self.trial_id} was taken over by a newer attempt "
                            f"(node {owner.get('node')}); this attempt stops without committing")

    def heartbeat(self, info: dict) -> None:
        self.write_marker("HEARTBEAT.json", {**info, "time": time.time()})

    def read_marker(self, name: str) -> Optional[dict]:
        """A JSON object the lineage keeps (its spec, a marker, an analysis); None if absent, torn or not one."""
        try:
            doc = json.loads(self.fs.read(f"{self.dir}/{name}"))
        except (FileNotFoundError, OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None

    def write_marker(self, name: str, info: dict) -> None:
        self.fs.write(f"{self.dir}/{name}", _dumps(info))

    FAILED = "FAILED.json"

    def mark_failed(self, error: str, **context) -> None:
        """The lineage's FAILED marker (what `status` counts as failed): the one-line
        cause and where it came from; a new attempt clears it."""
        self.write_marker(self.FAILED, {"time": time.time(), "error": error, **context})

    def clear_marker(self, name: str) -> None:
        self.fs.delete_file(f"{self.dir}/{name}")

    # --- rounds ----------------------------------------------------------
    def commit_round(self, k: int, files: dict[str, bytes], metrics: dict, spec: dict) -> dict:
        """Write the round's files, then its manifest last. Returns the manifest."""
        d = self.round_dir(k)
        # A stale manifest from an invalidated attempt must not vouch for new files.
        self.fs.delete_file(f"{d}/{MANIFEST}")
        for name, data in files.items():
            self.fs.write(f"{d}/{name}", data)
        manifest = _sealed({"trial_id": self.trial_id, "round": k, "metrics": metrics, "spec": spec,
                            "committed_at": time.time()}, files)
        self.fs.write(f"{d}/{MANIFEST}", _dumps(manifest))
        self._point(k, manifest["manifest_sha256"])
        return manifest

    # --- the committed pointer (derived from the manifests) --------------
    # A restart needs each lineage's committed prefix: reading every manifest is rounds x lineages
    # sequential requests (about 220,000 at the paper's whole grid on S3), the pointer one small object
    # per lineage, written after each manifest. A manifest always wins: a resuming lineage rewrites a
    # pointer that disagrees (sync_pointer), `verify` checks both, and a kill between manifest and
    # pointer leaves the pointer one round behind (the resumed lineage finds the round and moves on).
    POINTER = "COMMITTED.json"

    def read_pointer(self) -> Optional[dict]:
        """{"prefix": k, "rounds": {round: manifest_sha256}}, or None (absent or torn)."""
        doc = self.read_marker(self.POINTER)
        if doc is None or not isinstance(doc.get("prefix"), int) or not isinstance(doc.get("rounds"), dict):
            return None
        try:
            doc["rounds"] = {int(j): str(d) for j, d in doc["rounds"].items()}
        except (TypeError, ValueError):
            return None
        return doc

    def pointer(self) -> dict:
        """The committed pointer; a lineage without one is read from its manifests (and given one)."""
        p = self.read_pointer()
        if p is None:
            rounds = rounds_without_pointer(self)
            p = {"prefix": prefix(rounds), "rounds": rounds}
        return p

    def _write_pointer(self, rounds: dict[int, str]) -> None:
        self.write_marker(self.POINTER, {"prefix": prefix(rounds),
                                         "rounds": {str(j): d for j, d in sorted(rounds.items())}})

    def _point(self, k: int, digest: str) -> None:
        """Round k was just committed: the pointer keeps the rounds before it, adds k."""
        p = self.read_pointer()
        rounds = {j: d for j, d in (p["rounds"] if p else {}).items() if j < k}
        if set(range(k)) - rounds.keys():  # no pointer yet (an older sweep), or one left behind by a kill
            rounds = {j: m["manifest_sha256"] for j, m in self.manifests().items() if j < k}
        self._write_pointer({**rounds, k: digest})

    def sync_pointer(self, manifests: Optional[dict[int, dict]] = None) -> None:
        """Make the pointer say what the manifests say (written only if it does not)."""
        manifests = self.manifests() if manifests is None else manifests
        rounds = {j: m["manifest_sha256"] for j, m in manifests.items()}
        p = self.read_pointer()
        if p is None or p["rounds"] != rounds:
            self._write_pointer(rounds)

    def read_manifest(self, k: int) -> Optional[dict]:
        """The round's manifest if it is present and intact, else None."""
        try:
            raw = self.fs.read(f"{self.round_dir(k)}/{MANIFEST}")
        except (FileNotFoundError, OSError):
            return None
        return _parse_manifest(raw)

    def _listed_rounds(self, folder: str) -> list[int]:
        """The k of every round_<k> entry of `folder`."""
        return [int(m.group(1)) for m in (re.fullmatch(r"round_(\d+)", n) for n in self.fs.listdir(folder)) if m]

    def manifests(self) -> dict[int, dict]:
        """Every intact committed round of this trial: {round: manifest}."""
        return self.read_manifests(self._listed_rounds(self.dir))

    READ_THREADS = 16  # an object store answers each read in tens of ms: a lineage's rounds at once

    def read_manifests(self, rounds: Iterable[int]) -> dict[int, dict]:
        """{round: manifest} of the given rounds that are committed and intact, read concurrently on an
        object store (17 sequential reads cost a resumed lineage a second or more behind 20 ms)."""
        rounds = sorted(set(rounds))
        if self.fs.local or len(rounds) < 2:
            got = [self.read_manifest(k) for k in rounds]
        else:
            from concurrent.futures import ThreadPoolExecutor
            with ThreadPoolExecutor(min(self.READ_THREADS, len(rounds))) as pool:
                got = list(pool.map(self.read_manifest, rounds))
        return {k: man for k, man in zip(rounds, got) if man is not None and man.get("round") == k}

    def committed_prefix(self) -> int:
        """Number of rounds committed contiguously from round 0."""
        return prefix(self.manifests())

    def load_round(self, k: int, names: Iterable[str]) -> dict[str, bytes]:
        """Read files of a committed round, verifying each against the manifest."""
        man = self.read_manifest(k)
        if man is None:
            raise CorruptRound(f"round {k} of trial {self.trial_id} has no intact manifest")
        return self._verified(self.round_dir(k), man["files"], names, f"round {k} of trial {self.trial_id}")

    def _verified(self, folder: str, listed: dict, names: Iterable[str], what: str) -> dict[str, bytes]:
        """The files `names` of `folder`, each checked against its entry in a manifest's `listed` files."""
        out = {}
        for name in names:
            want = listed.get(name)
            if want is None:
                raise CorruptRound(f"{what}: {name} is not in its manifest")
            try:
                data = self.fs.read(f"{folder}/{name}")
            except (FileNotFoundError, OSError):
                raise CorruptRound(f"{what}: {name} is missing") from None
            if sha256(data) != want["sha256"]:
                raise CorruptRound(f"{what}: {name} fails its sha256 check")
            out[name] = data
        return out

    def read_predictions(self, k: int) -> Optional[dict]:
        """Committed round k's per-image predictions ({val,test}_{pred,label}: numpy arrays), verified
        (CorruptRound like load_round); None for a round committed before rounds recorded them."""
        from workers import predictions
        man = self.read_manifest(k)
        if man is not None and predates_predictions(man["files"], predictions.FILE):
            return None
        return predictions.decode(self.load_round(k, [predictions.FILE])[predictions.FILE])

    def verify_round(self, k: int) -> tuple[int, list[tuple[str, str]]]:
        """Committed round k re-checked against its manifest, streaming each file: (files checked, the
        manifest included; [(file, problem)], empty when everything verifies)."""
        try:
            raw = self.fs.read(f"{self.round_dir(k)}/{MANIFEST}")
        except (FileNotFoundError, OSError):
            return 1, [(MANIFEST, "missing")]
        man = _parse_manifest(raw)
        if man is None or man.get("round") != k:
            return 1, [(MANIFEST, "fails its own sha256 check (torn or edited)")]
        problems = []
        for name, want in sorted(man["files"].items()):
            try:
                digest, size = self.fs.sha256_of(f"{self.round_dir(k)}/{name}")
            except (FileNotFoundError, OSError):
                problems.append((name, "missing"))
                continue
            if size != want.get("bytes", size):
                problems.append((name, f"{size} bytes, the manifest says {want['bytes']}"))
            elif digest != want["sha256"]:
                problems.append((name, "fails its sha256 check"))
        return 1 + len(man["files"]), problems

    def invalidate_from(self, k: int) -> list[int]:
        """Un-commit round k and every later round (derived from it): their manifests are renamed, not
        deleted, so what happened stays visible."""
        gone = [j for j in sorted(self.manifests_any()) if j >= k]
        for j in gone:
            d = self.round_dir(j)
            self.fs.move(f"{d}/{MANIFEST}", f"{d}/MANIFEST.invalid-{int(time.time())}.json")
        self.sync_pointer()
        return gone

    def manifests_any(self) -> list[int]:
        """Rounds that have a manifest file at all (intact or not)."""
        return [j for j in self._listed_rounds(self.dir) if self.fs.exists(f"{self.round_dir(j)}/{MANIFEST}")]

    # --- rolling mid-round checkpoint -------------------------------------
    def save_partial(self, k: int, epoch: int, files: dict[str, bytes], meta: dict) -> None:
        d = f"{self.partial_dir(k)}/epoch_{epoch}"
        for name, data in files.items():
            self.fs.write(f"{d}/{name}", data)
        self.fs.write(f"{d}/{MANIFEST}", _dumps(_sealed({"round": k, "epoch": epoch, "meta": meta}, files)))
        # Only the newest checkpoint is kept: older ones are now redundant.
        for name in self.fs.listdir(self.partial_dir(k)):
            if name != f"epoch_{epoch}":
                self.fs.delete_dir(f"{self.partial_dir(k)}/{name}")

    def load_partial(self, k: int) -> Optional[tuple[int, dict[str, bytes], dict]]:
        """Newest intact mid-round checkpoint of round k: (epoch, files, meta)."""
        names = self.fs.listdir(self.partial_dir(k))
        epochs = sorted((int(n.split("_")[1]) for n in names if re.fullmatch(r"epoch_\d+", n)), reverse=True)
        for e in epochs:
            d = f"{self.partial_dir(k)}/epoch_{e}"
            try:
                man = _parse_manifest(self.fs.read(f"{d}/{MANIFEST}"))
                if man is None:
                    continue
                return e, self._verified(d, man["files"], man["files"], d), man["meta"]
            except (FileNotFoundError, OSError, CorruptRound, KeyError):
                continue
        return None

    def clear_partial(self, k: int) -> None:
        self.fs.delete_dir(self.partial_dir(k))

    def clear_partials_before(self, k: int) -> None:
        """Drop committed rounds' mid-round checkpoints (a kill between a commit and their removal leaves one)."""
        for j in self._listed_rounds(f"{self.dir}/partial"):
            if j < k:
                self.clear_partial(j)
