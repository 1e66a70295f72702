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
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from workers.store import SweepStore

WORKERS = 8  # lineages checked at once: enough to hide S3 latency, few enough for NFS


def _verify_trial(sweep: SweepStore, tid: str) -> tuple[int, int, list[dict]]:
    lin = sweep.lineage(tid)
    rounds = sorted(lin.manifests_any())
    bad, files = [], 0
    for k in rounds:
        checked, problems = lin.verify_round(k)
        files += checked
        bad += [{"trial_id": tid, "round": k, "file": f, "problem": p} for f, p in problems]
    return len(rounds), files, bad


def verify_sweep(sweep: SweepStore) -> dict:
    """{"trials", "rounds", "files", "corrupt": [{trial_id, round, file, problem}], "seconds"}."""
    t0 = time.monotonic()
    tids = sorted(sweep.listing())
    rounds = files = 0
    corrupt: list[dict] = []
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        for r, f, bad in pool.map(lambda t: _verify_trial(sweep, t), tids):
            rounds, files, corrupt = rounds + r, files + f, corrupt + bad
    corrupt.sort(key=lambda c: (c["trial_id"], c["round"], c["file"]))
    return {"sweep": sweep.sweep, "trials": len(tids), "rounds": rounds, "files": files, "corrupt": corrupt,
            "seconds": round(time.monotonic() - t0, 2)}


def format_verify(out: dict) -> str:
    lines = [f"{c['trial_id']} round {c['round']}: {c['file']} {c['problem']}" for c in out["corrupt"]]
    verdict = (f"{len(out['corrupt'])} corrupt file(s)" if out["corrupt"] else "every file verifies")
    return "\n".join(lines + [f"sweep {out['sweep']}: {out['trials']} trials, {out['rounds']} committed rounds, "
                              f"{out['files']} files checked in {out['seconds']:.1f}s: {verdict}"])


def redo_corrupt(sweep: SweepStore) -> list[tuple[str, int]]:
    """Scrub, then un-commit each damaged lineage from its first corrupt round;
    returns [(trial_id, first corrupt round)]."""
    from workers.lease import log
    out = verify_sweep(sweep)
    first: dict[str, int] = {}
    for c in out["corrupt"]:
        first[c["trial_id"]] = min(first.get(c["trial_id"], c["round"]), c["round"])
    for tid, k in sorted(first.items()):
        gone = sweep.lineage(tid).invalidate_from(k)
        log(f"verify: {tid} round {k} is corrupt; redoing the lineage from there (rounds {gone} un-committed)")
    log(f"verify: {out['files']} files of {out['rounds']} rounds checked in {out['seconds']:.1f}s, "
        f"{len(first)} lineage(s) to redo")
    return sorted(first.items())
