"""What the one-process trainer scripts share: their arguments (``OUT --config C [--set k=v ...]
[--resume TARGET]``) and a :class:`~ds_twophase.trainer.Trainer` built in a group of one."""

from __future__ import annotations

import argparse

from ds_twophase import dist
from ds_twophase.config import load_config, validate_config
from ds_twophase.trainer import Trainer


def parser() -> argparse.ArgumentParser:
    """``OUT --config C [--set k=v ...] [--resume TARGET]``; add a script's own flags to it."""
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--config", required=True)
    p.add_argument("--set", action="append", default=[], dest="overrides")
    p.add_argument("--resume")
    return p


def build_trainer(args: argparse.Namespace) -> Trainer:
    """The trainer of ``args.config`` with ``args.overrides``, in a process group of one."""
    dist.init_process_group(quiet=True)
    dist.release_deepspeed_shm()
    return Trainer(validate_config(load_config(args.config, args.overrides), world_size=1))
