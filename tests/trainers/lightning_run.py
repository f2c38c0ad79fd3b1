"""Lightning DDP on two CPU processes (gloo), written the way a user writes it.

    python tests/trainers/lightning_run.py DATA OUT [--loader hook|top] [--stateful]
        [--save-at-step N CKPT] [--save-at-epoch-end CKPT] [--resume CKPT]

``Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=2)`` starts the second
rank itself by running this script again. The loader is
``DataLoader(ds, batch_size=16, sampler=ChunkAwareSampler(ds), num_workers=2,
multiprocessing_context="forkserver", persistent_workers=True)`` (forkserver as the
README recommends, persistent workers as Lightning advises; or the same
``StatefulDataLoader``), returned by ``train_dataloader()`` (``--loader hook``) or
built at the top of the script and given to ``trainer.fit`` (``--loader top``). Every
rank records every frame of every batch it trains on in ``OUT/rank<r>.jsonl``.
``--save-at-step`` saves a checkpoint after N training steps, ``--save-at-epoch-end``
after the last batch of epoch 0 (both from ``on_train_batch_end``, as ``ModelCheckpoint``
does); ``--resume`` continues from a checkpoint with ``trainer.fit(..., ckpt_path=...)``.
"""

from __future__ import annotations

import argparse
import os

import lightning as L
import torch
from common import frame_ids, loss_of, record
from torch import nn
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader

from zarr_torch import ChunkAwareSampler, ZarrFrameDataset


def make_loader(ds: ZarrFrameDataset, stateful: bool) -> DataLoader:
    cls = StatefulDataLoader if stateful else DataLoader
    return cls(
        ds,
        batch_size=16,
        sampler=ChunkAwareSampler(ds),
        num_workers=2,
        multiprocessing_context="forkserver",
        # Lightning's own advice: new workers each epoch (a forkserver worker imports this
        # script again, Lightning with it) took 23 of a run's 70 s. accelerate's runs do not.
        persistent_workers=True,
    )


class Tiny(L.LightningModule):
    def __init__(self, out: str) -> None:
        super().__init__()
        self.lin = nn.Linear(1, 1)
        self.out = out

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        record(
            self.out,
            self.global_rank,
            epoch=self.current_epoch,
            batch=batch_idx,
            step=self.global_step,
            ids=frame_ids(batch),
        )
        return loss_of(self.lin, batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class TinyWithHook(Tiny):
    def __init__(self, out: str, data: str, stateful: bool) -> None:
        super().__init__(out)
        self.data, self.stateful = data, stateful

    def train_dataloader(self) -> DataLoader:
        return make_loader(ZarrFrameDataset(self.data, array="data/camera0_rgb"), self.stateful)


class SaveAt(L.Callback):
    """Save a checkpoint after step N and/or after the last batch of epoch 0."""

    def __init__(self, at_step: tuple[int, str] | None, at_epoch_end: str | None) -> None:
        self.at_step, self.at_epoch_end = at_step, at_epoch_end

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        loader = trainer.train_dataloader
        record(
            module.out,
            trainer.global_rank,
            info={
                "loader": type(loader).__name__,
                "sampler": type(getattr(loader, "sampler", None)).__name__,
                "batches_per_epoch": trainer.num_training_batches,
                "world": trainer.world_size,
            },
        )

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.at_step and trainer.global_step == int(self.at_step[0]):
            trainer.save_checkpoint(self.at_step[1])
        if self.at_epoch_end and trainer.current_epoch == 0 and batch_idx + 1 == trainer.num_training_batches:
            trainer.save_checkpoint(self.at_epoch_end)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("out")
    parser.add_argument("--loader", choices=["hook", "top"], default="hook")
    parser.add_argument("--stateful", action="store_true", help="StatefulDataLoader instead of DataLoader")
    parser.add_argument("--save-at-step", nargs=2, metavar=("N", "CKPT"))
    parser.add_argument("--save-at-epoch-end", metavar="CKPT")
    parser.add_argument("--resume", metavar="CKPT")
    args = parser.parse_args()

    torch.set_num_threads(1)
    if args.loader == "top":  # built before the Trainer exists, as many scripts do
        loader = make_loader(ZarrFrameDataset(args.data, array="data/camera0_rgb"), args.stateful)
        model: Tiny = Tiny(args.out)
    else:
        loader = None
        model = TinyWithHook(args.out, args.data, args.stateful)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=2,
        callbacks=[SaveAt(args.save_at_step, args.save_at_epoch_end)],
    )
    trainer.fit(model, train_dataloaders=loader, ckpt_path=args.resume)
    record(args.out, trainer.global_rank, done=True)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
