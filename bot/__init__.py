"""supportbot: customer-service chatbots grounded in a site's own FAQ and help documents."""

__version__ = "0.1.0"

# OpenMP workers (torch's CPU ops) should neither spin for long nor fall asleep at once between
# parallel regions. This is read once, when torch loads libgomp, so it has to come before any
# ``import torch``; ``bot`` is imported first by the CLI, the web app and the benchmarks.
# libgomp's default spins ~300k iterations after each region: a lone decoding thread's idle worker
# spun through all the Python between kernels, so each token cost far more CPU (and on a shared
# machine, a neighbour's core). Passive waiting (spin 0) wakes the worker through the kernel for
# every one of the ~200 small kernels of a decode step, which makes the step much slower. A short
# spin (GOMP_SPINCOUNT=5000, microseconds) bridges the gaps between the kernels of one step and
# sleeps between steps: the fastest step at little extra CPU (bench/generate.py; figures in the
# README). Explicit OMP_WAIT_POLICY / GOMP_SPINCOUNT values in the environment win.
import os as _os

_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # other OpenMP runtimes: do not spin
_os.environ.setdefault("GOMP_SPINCOUNT", "5000")  # libgomp: this spin count overrides the policy
