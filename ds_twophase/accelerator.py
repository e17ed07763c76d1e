"""Quiet CPU runs: choose DeepSpeed's CPU accelerator explicitly when no accelerator is present.

DeepSpeed detects its accelerator when it is first imported, and when it finds none it warns
"Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it";
importing ``torch.utils.cpp_extension`` (DeepSpeed's op builders do) adds "No CUDA runtime is
found"; and every rank prints "DeepSpeed ... built successfully" when its CPU communication op
loads. On a machine that has no accelerator these lines are expected and alarm users. Here the
CPU accelerator is chosen the documented way (``DS_ACCELERATOR=cpu``) only when DeepSpeed's own
detection could not find anything else: no CUDA device, no XPU or MPS device, and none of the
vendor packages it probes installed. Anything else is left to DeepSpeed, warnings included; an
explicit ``DS_ACCELERATOR`` always wins.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os
import re
import sys
from collections.abc import Iterator

ENV = "DS_ACCELERATOR"

# The packages deepspeed/accelerator/real_accelerator.py imports to detect other accelerators.
VENDOR_PACKAGES = (
    "torch_npu",
    "torch_sdaa",
    "habana_frameworks",
    "torch_mlu",
    "torch_supa",
    "torch_xmlir",
    "intel_extension_for_pytorch",
)

_BUILT_LINE = re.compile(r"DeepSpeed \S+ built successfully")


def has_accelerator() -> bool:
    """True when DeepSpeed's auto-detection could pick something other than the CPU."""
    import torch

    if torch.cuda.device_count() > 0 and torch.cuda.is_available():
        return True
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        return True
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return True
    return any(importlib.util.find_spec(name) is not None for name in VENDOR_PACKAGES)


def select_cpu_accelerator() -> bool:
    """Set ``DS_ACCELERATOR=cpu`` before DeepSpeed is imported when there is no accelerator;
    True when it did. A no-op once DeepSpeed is imported or when ``DS_ACCELERATOR`` is set."""
    if ENV in os.environ or "deepspeed" in sys.modules or has_accelerator():
        return False
    os.environ[ENV] = "cpu"
    import_cpp_extension_quietly()
    return True


def import_cpp_extension_quietly() -> None:
    """Import ``torch.utils.cpp_extension`` without its "No CUDA runtime is found" warning,
    which it logs on every machine without CUDA (only CPU kernels are built here)."""
    ext_log = logging.getLogger("torch.utils.cpp_extension")
    level = ext_log.level
    ext_log.setLevel(logging.ERROR)
    try:
        import torch.utils.cpp_extension  # noqa: F401
    finally:
        ext_log.setLevel(level)


@contextlib.contextmanager
def without_op_build_lines() -> Iterator[None]:
    """Drop DeepSpeed's "DeepSpeed <op> built successfully" lines from stdout inside the block;
    every other line (a failed build's message too) is passed on unchanged."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            yield
    finally:
        kept = [
            line
            for line in captured.getvalue().splitlines(keepends=True)
            if not _BUILT_LINE.fullmatch(line.strip())
        ]
        sys.stdout.write("".join(kept))
