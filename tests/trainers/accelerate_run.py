"""accelerate on two CPU processes (gloo), written the way a user writes it.

    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no \
        --dynamo_backend no --main_process_port PORT tests/trainers/accelerate_run.py DATA OUT
        [--sampler before|after] [--stateful] [--save-at N DIR] [--save-at-epoch-end DIR] [--resume DIR]

(``--cpu --num_processes 2`` would silently start one process; ``--multi_gpu`` with
``Accelerator(cpu=True)`` starts two.) The loader is
``accelerator.prepare(DataLoader(ds, batch_size=16, sampler=ChunkAwareSampler(ds), num_workers=2))``
with the sampler made before or after ``Accelerator()``; each epoch calls
``prepared.set_epoch(epoch)``. ``--stateful`` sets
``DataLoaderConfiguration(use_stateful_dataloader=True)``; ``--save-at`` calls
``accelerator.save_state`` after N batches of epoch 0 (and trains on), ``--save-at-epoch-end``
after its last batch; ``--resume`` calls ``load_state``, resumes in epoch
``step // len(prepared)`` (the loader's own state skips what was trained on) and trains
to the end of epoch 1. Every process records every frame it trains on in ``OUT/rank<r>.jsonl``.
"""

from __future__ import annotations

import argparse
import os

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from common import frame_ids, loss_of, record
from torch import nn
from torch.utils.data import DataLoader

from zarr_torch import ChunkAwareSampler, ZarrFrameDataset

EPOCHS = 2


class Progress:
    """Optimizer steps done, saved with ``save_state`` (``register_for_checkpointing``).

    As in accelerate's examples, the epoch to resume in is ``step // len(loader)``.
    """

    def __init__(self) -> None:
        self.step = 0

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step = state["step"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("out")
    parser.add_argument("--sampler", choices=["before", "after"], default="after")
    parser.add_argument("--stateful", action="store_true")
    parser.add_argument("--save-at", nargs=2, metavar=("N", "DIR"))
    parser.add_argument("--save-at-epoch-end", metavar="DIR")
    parser.add_argument("--resume", metavar="DIR")
    args = parser.parse_args()

    torch.set_num_threads(1)
    ds = ZarrFrameDataset(args.data, array="data/camera0_rgb")
    if args.sampler == "before":  # made before the Accelerator, e.g. in a data module
        sampler = ChunkAwareSampler(ds)
    accelerator = Accelerator(
        cpu=True, dataloader_config=DataLoaderConfiguration(use_stateful_dataloader=args.stateful)
    )
    if args.sampler == "after":
        sampler = ChunkAwareSampler(ds)
    rank = accelerator.process_index
    model = nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = DataLoader(
        ds, batch_size=16, sampler=sampler, num_workers=2, multiprocessing_context="forkserver"
    )
    model, optimizer, prepared = accelerator.prepare(model, optimizer, loader)
    progress = Progress()
    accelerator.register_for_checkpointing(progress)
    if args.resume:
        accelerator.load_state(args.resume)
    record(
        args.out,
        rank,
        info={
            "world": accelerator.num_processes,
            "batches_per_epoch": len(prepared),
            "batch_sampler": type(prepared.batch_sampler).__name__,
        },
    )
    for epoch in range(progress.step // len(prepared), EPOCHS):
        prepared.set_epoch(epoch)
        for i, batch in enumerate(prepared):
            record(args.out, rank, epoch=epoch, batch=i, ids=frame_ids(batch))
            loss = loss_of(model, batch)
            optimizer.zero_grad()
            accelerator.backward(loss)
            optimizer.step()
            progress.step += 1
            if epoch == 0 and args.save_at and i + 1 == int(args.save_at[0]):
                accelerator.save_state(args.save_at[1])
            if epoch == 0 and args.save_at_epoch_end and i + 1 == len(prepared):
                accelerator.save_state(args.save_at_epoch_end)
    record(args.out, rank, done=True)
    accelerator.end_training()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
