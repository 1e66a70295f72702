"""`lth-sweep verify`: re-check every committed file of a sweep against its manifest.

Resume only re-reads what the next round needs (round 0's rewind state, the
newest round's weights and mask); a flipped byte in a middle round of a
finished lineage (bit rot on NFS, a partial copy between buckets) would wait
for some later evaluation to trip over it. The scrub reads every file of every
committed round, streaming (memory stays flat for a 10,000-trial sweep on S3),
several lineages at a time, and names each corrupt file with its trial and round.

`run --verify` scrubs first and redoes each damaged lineage from its first
corrupt round: the rounds after it were derived from it, so they go too
(their manifests are renamed, not deleted, so what happened stays visible);
the rounds before it are not touched.

What was built on a damaged round is stale too, and the scrub follows it:
- a lineage made from another (a method with a parent: same_layer_sparse,
  small_dense) reads its parent's round k to make its own round k, so it is
  redone from the parent's first damaged round (and so on, for what is built
  on it in turn);
- an evaluation file that read a round that will be redone is stale; once the
  round is redone its recorded manifest digest no longer matches, and the
  next run computes it again (workers/evaluations/).
`verify` lists both as stale; `run --verify` redoes the lineages.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from workers.methods import METHODS, parent_spec
from workers.spec import TrialSpec
from workers.store import SweepStore

WORKERS = 8  # lineages checked at once: enough to hide S3 latency, few enough for NFS
CORRUPT = "corrupt"


def _verify_trial(sweep: SweepStore, tid: str) -> tuple[int, int, list[dict], list[dict]]:
    lin = sweep.lineage(tid)
    rounds = sorted(lin.manifests_any())
    bad, files = [], 0
    for k in rounds:
        checked, problems = lin.verify_round(k)
        files += checked
        bad += [{"trial_id": tid, "round": k, "file": f, "problem": p} for f, p in problems]
    return len(rounds), files, bad, _pointer_stale(lin)


def _pointer_stale(lin) -> list[dict]:
    """The lineage's committed pointer if it disagrees with its intact manifests
    (a restart trusts the pointer; the manifests win)."""
    p = lin.read_pointer()
    want = {k: m["manifest_sha256"] for k, m in lin.manifests().items()}
    if p is None and not want:
        return []
    if p is not None and p["rounds"] == want:
        return []
    said = "none" if p is None else f"rounds {sorted(p['rounds'])}"
    return [{"trial_id": lin.trial_id, "pointer": said,
             "why": f"its committed pointer ({said}) disagrees with its manifests (rounds {sorted(want)}); "
                    "run --verify or the lineage's next resume rewrites it"}]


def verify_sweep(sweep: SweepStore) -> dict:
    """{"trials", "rounds", "files", "corrupt": [{trial_id, round, file, problem}],
    "stale": [{trial_id, round | analysis, why}], "seconds"}."""
    t0 = time.monotonic()
    tids = sorted(sweep.listing())
    rounds = files = 0
    corrupt: list[dict] = []
    pointers: list[dict] = []
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        for r, f, bad, off in pool.map(lambda t: _verify_trial(sweep, t), tids):
            rounds, files, corrupt, pointers = rounds + r, files + f, corrupt + bad, pointers + off
    corrupt.sort(key=lambda c: (c["trial_id"], c["round"], c["file"]))
    return {"sweep": sweep.sweep, "trials": len(tids), "rounds": rounds, "files": files, "corrupt": corrupt,
            # A damaged lineage's pointer is rewritten when it is redone; it is named as corrupt already.
            "stale": _stale(sweep, tids, corrupt) + [p for p in pointers if p["trial_id"] not in
                                                      {c["trial_id"] for c in corrupt}],
            "seconds": round(time.monotonic() - t0, 2)}


def _first_redone(sweep: SweepStore, tids: list[str], corrupt: list[dict]) -> dict[str, tuple[int, str]]:
    """{trial_id: (first round to redo, why)}: damaged lineages from their first
    corrupt round, and what was built from them from the same round on."""
    redo = {}
    for c in corrupt:
        if c["trial_id"] not in redo or c["round"] < redo[c["trial_id"]][0]:
            redo[c["trial_id"]] = (c["round"], CORRUPT)
    if not redo:  # nothing damaged: nothing built on it either (no spec reads on a clean scrub)
        return redo
    parent_of = {}
    for tid in tids:
        stored = sweep.lineage(tid).read_spec()
        try:
            spec = TrialSpec.from_dict(stored) if stored else None
        except (TypeError, ValueError, KeyError):
            spec = None
        method = METHODS.get(spec.prune.method, None) if spec is not None else None
        if method is not None and method.parent:
            parent_of[tid] = parent_spec(spec).trial_id
    changed = True
    while changed:  # what is built on a redone lineage, then what is built on that
        changed = False
        for tid, pid in parent_of.items():
            if pid in redo and redo[pid][0] < redo.get(tid, (1 << 30,))[0]:
                k = redo[pid][0]
                if any(j >= k for j in sweep.lineage(tid).manifests_any()):
                    redo[tid] = (k, f"built from {pid} round {k}, which is redone")
                    changed = True
    return redo


def _current(lin, name: str):
    """The analysis file if it still matches the rounds it read; None if not, or if
    those rounds cannot be read (a damaged manifest is reported as corrupt already)."""
    from workers.evaluations import current
    try:
        return current(lin, name)
    except Exception:
        return None


def _stale(sweep: SweepStore, tids: list[str], corrupt: list[dict]) -> list[dict]:
    redo = _first_redone(sweep, tids, corrupt)
    out = [{"trial_id": tid, "round": k, "why": why} for tid, (k, why) in sorted(redo.items()) if why != CORRUPT]
    for tid in tids:
        lin = sweep.lineage(tid)
        k = redo.get(tid, (None,))[0]
        for name in lin.analyses():
            doc = lin.read_analysis(name) or {}
            read = [int(r) for r in doc.get("rounds", {}) if str(r).isdigit()]
            if k is not None and any(r >= k for r in read):
                out.append({"trial_id": tid, "analysis": name,
                            "why": f"read round {max(read)}, which is redone (from round {k})"})
            elif _current(lin, name) is None:
                out.append({"trial_id": tid, "analysis": name,
                            "why": "the rounds it read were redone since; the next run computes it again"})
    return out


def format_verify(out: dict) -> str:
    lines = [f"{c['trial_id']} round {c['round']}: {c['file']} {c['problem']}" for c in out["corrupt"]]
    lines += [f"{s['trial_id']} " + (f"round {s['round']} on" if "round" in s else f"analysis {s['analysis']}"
                                     if "analysis" in s else "pointer")
              + f": stale, {s['why']}" for s in out.get("stale", [])]
    verdict = (f"{len(out['corrupt'])} corrupt file(s)" if out["corrupt"] else "every file verifies")
    if out.get("stale"):
        verdict += f", {len(out['stale'])} stale (run --verify redoes them)"
    return "\n".join(lines + [f"sweep {out['sweep']}: {out['trials']} trials, {out['rounds']} committed rounds, "
                              f"{out['files']} files checked in {out['seconds']:.1f}s: {verdict}"])


def redo_corrupt(sweep: SweepStore) -> list[tuple[str, int]]:
    """Scrub, then un-commit each damaged lineage from its first corrupt round,
    and each lineage built from one from the same round; returns [(trial_id, round)]."""
    from workers.lease import log
    out = verify_sweep(sweep)
    redo = _first_redone(sweep, sorted(sweep.listing()), out["corrupt"])
    for tid, (k, why) in sorted(redo.items()):
        gone = sweep.lineage(tid).invalidate_from(k)
        log(f"verify: {tid} round {k} is {why}; redoing the lineage from there (rounds {gone} un-committed)")
    for s in out["stale"]:
        if "pointer" in s and s["trial_id"] not in redo:  # invalidate_from rewrote the others'
            sweep.lineage(s["trial_id"]).sync_pointer()
    log(f"verify: {out['files']} files of {out['rounds']} rounds checked in {out['seconds']:.1f}s, "
        f"{len(redo)} lineage(s) to redo")
    return sorted((tid, k) for tid, (k, _) in redo.items())
