"""What `lth-sweep run` asks of the driver, in one frozen object: the driver
(orchestrator/driver.py) and the Tune adapter (orchestrator/tune/) read it
instead of passing a dozen arguments along."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class SweepRequest:
    trials: tuple                       # orchestrator/grid.py Trial, the whole experiment's
    experiment: str
    sweep_name: str
    storage: str                        # a path or s3://bucket/prefix
    address: Optional[str] = None       # a running Ray cluster; None: start a local Ray
    num_cpus: Optional[float] = None    # the local Ray's; None: this machine's
    num_gpus: Optional[float] = None
    max_concurrent: Optional[int] = None
    max_failures: int = 2               # Tune's retries of a failed trial
    wait_s: float = 0.0                 # --wait-for-nodes: how long a cluster may take to fit every unit
    plain: Optional[bool] = None        # one line per round; None: unless stdout is a terminal
    trackers: tuple = ()                # orchestrator/trackers.py names
    verify: bool = False                # scrub every committed file first (orchestrator/verify.py)

    def __post_init__(self):
        object.__setattr__(self, "trials", tuple(self.trials))
        object.__setattr__(self, "trackers", tuple(self.trackers))
