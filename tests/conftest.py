"""Shared test configuration: keep torch single-threaded so two ranks share two cores."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
