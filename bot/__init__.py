"""supportbot: customer-service chatbots grounded in a site's own FAQ and help documents."""

__version__ = "0.1.0"

# OpenMP threads (torch's CPU ops) must sleep, not spin, between parallel regions. Spinning is
# read once, when torch loads libgomp, so this has to come before any ``import torch``; ``bot``
# is imported first by the CLI, the web app and the benchmarks. Measured (bench/generate.py, 2
# threads): with the default policy a lone decoding thread's idle OpenMP worker spun through the
# Python between kernels and each token cost ~3x the CPU; passive waiting made it ~1.2x cheaper
# than generate(). An explicit OMP_WAIT_POLICY in the environment wins.
import os as _os

_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
