"""orchestrator/tune/ray_start.py: starting Ray without losing the graceful SIGTERM."""


# A SIGTERM while ray.init runs: ray.init first installs a handler of its own
# that exits 15 on the spot (no "re-run" message, exit 15 instead of 130). The
# signal is sent from inside that handler's installation, so it lands in
# ray.init itself, every time. In a process of its own: signals are global.
_SIGTERM_IN_RAY_INIT = """
import os, signal, sys
import ray._private.utils as U
from orchestrator.tune import ray_start
real = U.set_sigterm_handler
def set_and_signal(handler):
    real(handler)
    os.kill(os.getpid(), signal.SIGTERM)
U.set_sigterm_handler = set_and_signal
signal.signal(signal.SIGTERM, signal.default_int_handler)  # what the CLI installs
try:
    ray_start.quiet_ray_init(address="local", num_cpus=1, include_dashboard=False)
except KeyboardInterrupt:
    print("graceful", signal.getsignal(signal.SIGTERM) is signal.default_int_handler)
"""


def test_a_sigterm_while_ray_starts_takes_the_graceful_path():
    from tests.helpers import python
    r = python(_SIGTERM_IN_RAY_INIT, timeout=120)
    assert r.returncode == 0 and r.stdout.split() == ["graceful", "True"], (r.returncode, r.stdout, r.stderr[-2000:])
