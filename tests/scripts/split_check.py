"""One trainer run (one process) with its data instrumented, for tests/test_val_split.py.

Usage: ``split_check.py OUT_JSON --config C [--set k=v ...] [--stop-after N] [--resume auto]``.
Wraps the test split in a dataset that records, for every sample read, how many epochs
``metrics.jsonl`` held at that moment, and the training split in a tensor dataset that records
every index the trainer's loader takes; then runs ``Trainer.fit`` and writes what it saw (samples
as digests of their bytes) to OUT_JSON.
"""

from __future__ import annotations

import hashlib
import json

from one_trainer import build_trainer, parser
from torch.utils.data import Dataset, TensorDataset

from ds_twophase.dist import exit_process
from ds_twophase.trainer import Trainer
from ds_twophase.trainer.epoch import make_loader


def digest(x, y) -> str:
    return hashlib.sha1(x.numpy().tobytes() + y.numpy().tobytes()).hexdigest()


class CountingDataset(Dataset):
    """Records the number of finished epochs (metrics rows) at every read."""

    def __init__(self, inner: Dataset, trainer: Trainer):
        self.inner, self.trainer, self.reads = inner, trainer, []

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i):
        self.reads.append(len(self.trainer.metrics.read()))
        return self.inner[i]


class RecordingTensorDataset(TensorDataset):
    """A tensor dataset that records the indices it is asked for."""

    def __init__(self, *tensors):
        super().__init__(*tensors)
        self.taken: list[int] = []

    def __getitem__(self, index):
        self.taken.extend(index if isinstance(index, list) else [index])
        return super().__getitem__(index)


def main() -> None:
    p = parser()
    p.add_argument("--stop-after", type=int)
    args = p.parse_args()
    trainer = build_trainer(args)
    splits = trainer.splits
    train = RecordingTensorDataset(*splits.train.tensors)
    trainer.loader = make_loader(train, trainer.sampler, trainer.micro, 0)
    splits.test = CountingDataset(splits.test, trainer)
    trainer.fit(resume=args.resume, stop_after=args.stop_after)
    x, y = train.tensors
    result = {
        "trained": sorted({digest(x[i], y[i]) for i in train.taken}),
        "val": [digest(*splits.val[i]) for i in range(len(splits.val))],
        "test": [digest(*splits.test.inner[i]) for i in range(len(splits.test))],
        "test_reads": splits.test.reads,
        "val_indices": splits.val_indices,
    }
    with open(args.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    # Ends the process group first and skips interpreter finalisation (see ds_twophase.dist).
    exit_process(main() or 0)
