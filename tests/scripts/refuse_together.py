"""Both ranks refuse before any process group exists; rank 0 is slow to say why (the last argument,
seconds). Exits 2 on both ranks through ``dist.settle`` and ``dist.exit_process``."""

import sys
import time

from ds_twophase import dist

if dist.is_main_process():
    time.sleep(float(sys.argv[-1]))
    print("error: rank 0 says why", file=sys.stderr, flush=True)
dist.settle(timeout_s=60)
dist.exit_process(2)
