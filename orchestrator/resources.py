"""Whether a cluster can ever hold a sweep's units: checked by the driver before
Ray starts (the local Ray it will start) and by the Tune adapter once connected
(a cluster whose nodes may still be joining). No Ray here."""
from __future__ import annotations

from orchestrator.formatting import number


class DriverError(Exception):
    """A user-facing problem detected before any trial starts."""


def check_resources(units: list, nodes: list[dict], where: str) -> None:
    """A Tune trial (a lineage or a fused group: orchestrator/grid.py `Unit`) that
    no node can ever hold is an error now, not a sweep that stays pending forever."""
    for u in units:
        need_cpu, need_gpu = u.resources["cpu"], u.resources["gpu"]
        if not any(n.get("CPU", 0) >= need_cpu and n.get("GPU", 0) >= need_gpu for n in nodes):
            best_cpu = max((n.get("CPU", 0) for n in nodes), default=0)
            best_gpu = max((n.get("GPU", 0) for n in nodes), default=0)
            raise DriverError(
                f"trial {u.unit_id} asks for cpu={number(need_cpu)} gpu={number(need_gpu)} but the largest node "
                f"of {where} has cpu={number(best_cpu)} gpu={number(best_gpu)}; change `resources:` in the "
                f"experiment or pass --num-cpus/--num-gpus")
