"""Loader of the fused CPU kernel of LARS (``kernel.cpp``; the design is described in
``optimizer.py`` and ``docs/lars.md``).

The kernel is compiled at the first step that needs it and cached under
``TORCH_EXTENSIONS_DIR``; ``DS_TWOPHASE_LARS_KERNEL=0`` disables it, and a failed build warns
once per process, after which LARS uses its PyTorch implementation (``update.py``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import threading
import warnings
from pathlib import Path
from types import FrameType, ModuleType

import torch

from ...accelerator import import_cpp_extension_quietly

KERNEL_ENV = "DS_TWOPHASE_LARS_KERNEL"
_KERNEL_SOURCE = Path(__file__).with_name("kernel.cpp")
KERNEL_DTYPES = (torch.float32, torch.float64)
# -ffp-contract=off: the compiler adds no fused multiply-adds of its own, so the kernel rounds
# where its source says (like PyTorch's CPU ops, see kernel.cpp). No -march=native: the
# cache directory may be shared by machines with different CPUs (the kernel picks its AVX2 or
# baseline loops at run time).
_KERNEL_CFLAGS = ["-O3", "-fopenmp", "-ffp-contract=off"]
_KERNEL_LDFLAGS = ["-fopenmp"]
_kernel_lock = threading.Lock()
# None: not tried yet; False: disabled or failed (warned once); else the loaded module
_kernel: ModuleType | bool | None = None

# the package's logger, ds_twophase.optim.lars (docs/lars.md names it)
_log = logging.getLogger(__name__.rpartition(".")[0])


def kernel_module() -> ModuleType | None:
    """The fused CPU kernel, built or loaded on the first call; None if it is unavailable."""
    global _kernel
    if _kernel is None:
        with _kernel_lock:
            if _kernel is None:
                _kernel = _load_kernel()
    return _kernel if isinstance(_kernel, ModuleType) else None


def kernel_available() -> bool:
    """Whether the fused CPU kernel can be used here (builds or loads it on the first call)."""
    return kernel_module() is not None


def _load_kernel() -> ModuleType | bool:
    """Compile (once per machine and source version) and import the kernel, or warn once."""
    if os.environ.get(KERNEL_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    try:
        source = _KERNEL_SOURCE.read_bytes()
        # A name per source, flags and torch version: a different checkout or torch gets its
        # own build directory instead of rebuilding over (and racing with) another's.
        digest = hashlib.sha1(
            source + repr((_KERNEL_CFLAGS, _KERNEL_LDFLAGS, torch.__version__)).encode()
        ).hexdigest()[:12]
        import_cpp_extension_quietly()  # no CUDA_HOME warning on machines without CUDA
        from torch.utils import cpp_extension

        _log.info("LARS: loading the fused CPU kernel (the first time: a build of 10-15 s)")
        # torch serialises concurrent builds of one name with a file lock in its build directory
        return cpp_extension.load(
            name=f"ds_twophase_lars_{digest}",
            sources=[str(_KERNEL_SOURCE)],
            extra_cflags=_KERNEL_CFLAGS,
            extra_ldflags=_KERNEL_LDFLAGS,
            verbose=False,
        )
    except Exception as exc:  # no compiler, no ninja, a read-only cache, ...: run without it
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if len(first) > 200:  # a failed build quotes the whole compiler command line
            first = first[:200] + " ..."
        _log.debug("LARS: the fused CPU kernel failed to build or load", exc_info=True)
        warnings.warn(
            f"LARS: the fused CPU kernel is unavailable, using the slower PyTorch "
            f"implementation ({type(exc).__name__}: {first}); set {KERNEL_ENV}=0 to skip "
            f"the attempt",
            RuntimeWarning,
            stacklevel=_caller_stacklevel(),
        )
        return False


def _caller_stacklevel() -> int:
    """``stacklevel`` for a warning about the frame that called into torch.optim / LARS."""
    # the frames between here and the caller (ds_twophase.optim, torch's optimizer and no_grad
    # wrappers) change with torch versions, so they are counted rather than hard-coded
    internal = (os.path.dirname(__file__) + os.sep, os.path.dirname(torch.__file__) + os.sep)
    level = 1
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(internal):
        level, frame = level + 1, frame.f_back
    return level
