"""Which training sequences each micro-step reads: a pure function of (seed, micro-step, rank).

Each epoch is a fresh seeded permutation of the packed sequences; consecutive micro-batches of B
sequences are cut from it, interleaved over data-parallel ranks. Because the batch of a micro-step
depends on nothing else, resuming at micro-step m continues the exact data order of an uninterrupted
run — the "data position" of a checkpoint is just m.
"""

from __future__ import annotations

import torch


class MicroBatchSchedule:
    def __init__(self, *, num_sequences: int, batch_size: int, seed: int,
                 num_processes: int = 1, process_index: int = 0):
        self.batches_per_epoch = num_sequences // batch_size
        if self.batches_per_epoch < 1:
            raise ValueError(
                f"trainer.batch_size={batch_size} exceeds the {num_sequences} training sequences of the data"
            )
        self.num_sequences, self.batch_size, self.seed = num_sequences, batch_size, seed
        self.num_processes, self.process_index = num_processes, process_index
        self._epoch, self._permutation = -1, None

    def indices(self, micro_step: int) -> torch.Tensor:
        """Sequence indices [B] of this rank's micro-batch at ``micro_step``."""
        global_batch = micro_step * self.num_processes + self.process_index
        epoch, batch_in_epoch = divmod(global_batch, self.batches_per_epoch)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._epoch, self._permutation = epoch, torch.randperm(self.num_sequences, generator=generator)
        start = batch_in_epoch * self.batch_size
        return self._permutation[start:start + self.batch_size]
