"""`lth-sweep status`: where a sweep stands, read from storage alone.

No driver state is consulted, so status works from any machine that can see
the storage, while a sweep runs, after it crashed, or after it finished.
One recursive listing of `trials/` gives every manifest, heartbeat and
failure marker with its mtime: on S3 that is a few paged LIST calls instead
of several requests per trial.
"""
from __future__ import annotations

import time
from typing import Optional

from orchestrator.formatting import duration
from orchestrator.results import ResultsError, load_table
from workers.spec import num_rounds
from workers.store import SweepStore

# A trial counts as running if it showed life this recently (heartbeats come
# every 30 s while training; a round commit is also a sign of life).
LIVE_S = 300.0


def _planned(sweep_store: SweepStore, listing: dict[str, dict]) -> dict[str, int]:
    """{trial_id: rounds in a finished lineage}: from sweep.json, else from spec.json files."""
    sweep = sweep_store.read_json(sweep_store.PLAN)
    if sweep and isinstance(sweep.get("trials"), dict):
        return {tid: int(t.get("rounds", 0)) for tid, t in sweep["trials"].items()}
    planned = {}
    for tid, entry in listing.items():
        if not entry.get("spec"):
            continue
        try:
            planned[tid] = num_rounds(sweep_store.lineage(tid).read_spec())
        except (ValueError, KeyError, TypeError):
            continue  # a trial whose spec cannot be read is not part of any plan we know
    return planned


def _mean_round_s(sweep_store: SweepStore) -> Optional[float]:
    try:
        walls = load_table(sweep_store, "results", columns=["wall_s"])["wall_s"].drop_null()
    except ResultsError:
        return None  # status must still answer when the table is damaged
    return sum(walls.to_pylist()) / len(walls) if len(walls) else None


def _from_summary(sweep_store: SweepStore, summary: dict, now: float) -> dict[str, dict]:
    """What `listing()` would say, from the driver's summary (orchestrator/summary.py)
    and the names of the row files appended since it was written: {trial_id:
    {"rounds": {k: time}, "heartbeat": time, "failed": bool}}. A trial counts as
    running only while the summary is young enough to say so."""
    from orchestrator.results import rowfiles
    t = float(summary.get("time") or 0)
    out: dict[str, dict] = {}

    def entry(tid: str) -> dict:
        return out.setdefault(tid, {"rounds": {}, "heartbeat": None, "failed": False, "spec": True})
    for tid, k in summary["committed"].items():
        entry(tid)["rounds"].update({j: None for j in range(int(k))})
    # A round committed after the summary was written is a row file not yet compacted.
    for tid, k in rowfiles.pending(rowfiles.listing(sweep_store, "results")).values():
        if k is not None:
            entry(tid)["rounds"].update({j: None for j in range(k + 1)})
    live = summary.get("state") == "running" and now - t <= LIVE_S
    for tid in summary.get("running", []) if live else []:
        entry(tid)["heartbeat"] = t
    for tid in summary.get("failed", []):
        entry(tid)["failed"] = True
    return out


def _summary(sweep_store: SweepStore) -> Optional[dict]:
    """The driver's summary where it is complete: on an object store (a local
    folder is listed in a moment), written by a driver that ended, or by one
    whose lease is alive. A killed driver's summary can miss rounds its trials
    committed after its last write: then the sweep is listed."""
    from orchestrator.summary import read_summary
    from workers.lease import lease_alive
    if sweep_store.fs.local:
        return None
    summary = read_summary(sweep_store)
    if summary is not None and summary.get("state") != "ended" and not lease_alive(sweep_store):
        return None
    return summary


def sweep_status(sweep_store: SweepStore, now: Optional[float] = None,
                 planned: Optional[dict[str, int]] = None) -> dict:
    """Counts read from storage: the driver's summary where there is one (a few
    requests at any sweep size), else a listing of the sweep. `planned`
    ({trial_id: rounds}, e.g. from the yaml) replaces the last run's plan: a
    trial storage has never seen is pending."""
    now = time.time() if now is None else now
    summary = _summary(sweep_store)
    listing = sweep_store.listing() if summary is None else _from_summary(sweep_store, summary, now)
    planned = _planned(sweep_store, listing) if planned is None else planned
    counts = {"total": len(planned), "done": 0, "running": 0, "pending": 0, "failed": 0}
    committed = total = 0
    for tid, n in planned.items():
        entry = listing.get(tid, {"rounds": {}, "heartbeat": None, "failed": False})
        rounds = entry["rounds"]
        committed += sum(1 for k in rounds if k < n)
        total += n
        recent = [t for t in [entry["heartbeat"], *rounds.values()] if t is not None]
        if all(k in rounds for k in range(n)):
            counts["done"] += 1
        elif entry["failed"]:
            counts["failed"] += 1
        elif recent and now - max(recent) <= LIVE_S:
            counts["running"] += 1
        else:
            counts["pending"] += 1
    remaining = total - committed
    eta = None
    if remaining == 0:
        eta = 0.0
    else:
        mean = summary.get("mean_round_s") if summary is not None else None
        mean = _mean_round_s(sweep_store) if mean is None else mean
        if mean is not None:
            eta = remaining * mean / max(1, counts["running"])
    return {"sweep": sweep_store.sweep, "trials": counts,
            "source": "listing" if summary is None else "summary",
            "rounds": {"committed": committed, "total": total}, "eta_s": eta,
            "fusion": [_check_row(c) for c in sweep_store.fuse_checks()]}


def _check_row(c: dict) -> dict:
    """A fusion self-check (workers/fusecheck.py) as status shows it."""
    key = c.get("key", {})
    return {"arch": key.get("arch"), "strategy": c.get("strategy"), "K": key.get("K"),
            "device": key.get("device"), "arithmetic": key.get("autocast") or key.get("dtype"),
            "passed": c.get("passed"), "fused_error": c.get("fused_error"), "solo_error": c.get("solo_error")}


def format_status(d: dict, width: int = 30) -> str:
    t, r = d["trials"], d["rounds"]
    frac = r["committed"] / r["total"] if r["total"] else 0.0
    bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
    eta = "unknown" if d.get("eta_s") is None else duration(d["eta_s"])
    return "\n".join([
        f"sweep {d.get('sweep', '?')}: {t['total']} trials",
        f"  done {t['done']}  running {t['running']}  pending {t['pending']}  failed {t['failed']}",
        f"  rounds [{bar}] {r['committed']}/{r['total']} ({100 * frac:.1f}%)",
        f"  eta {eta}",
    ] + [f"  fusion self-check {'passed' if f['passed'] else 'FAILED'}: {f['arch']} {f['strategy']} K={f['K']} "
         f"on {f['device']} {f['arithmetic']} (fused error {f['fused_error']:.2g}, solo {f['solo_error']:.2g})"
         for f in d.get("fusion", [])])
