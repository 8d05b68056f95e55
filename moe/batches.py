"""Which training sequences each micro-step reads: a pure function of (seed, micro-step, rank).

Each epoch is a fresh seeded permutation of the packed sequences; consecutive micro-batches of B
sequences (``trainer.batch_size``: the *global* micro-batch, over all data-parallel ranks) are cut from
it, and rank r of W reads rows [r·B/W, (r+1)·B/W) of each. The sequences a micro-step trains on
therefore do not depend on the number of processes: W processes read, between them, exactly the batch
one process reads. Because the batch of a micro-step depends on nothing else, resuming at micro-step m
continues the exact data order of an uninterrupted run, at any world size — the "data position" of a
checkpoint is just m.

``domain_pure=True`` (``trainer.domain_pure_batches``) cuts every micro-batch from one domain: each
domain's sequences are permuted and cut on their own, and the micro-batches take the domains in turn
(code, prose, code, prose, ...; a domain that runs out drops out of the rotation). With gradient
accumulation over as many micro-steps as there are domains, each optimizer step still sees every
domain, but each micro-batch is homogeneous — the setting of Qiu et al. 2501.11873 in which the scope
of the balance loss (micro-batch vs global batch) decides whether experts may specialise by domain.
"""

from __future__ import annotations

import torch


class MicroBatchSchedule:
    def __init__(self, *, num_sequences: int, batch_size: int, seed: int, num_processes: int = 1,
                 process_index: int = 0, domain_ids: torch.Tensor | None = None, domain_pure: bool = False):
        if domain_pure and domain_ids is None:
            raise ValueError("domain-pure micro-batches need the domain of every training sequence")
        self.domain_members = (
            [torch.nonzero(domain_ids == d).flatten() for d in domain_ids.unique()] if domain_pure else None
        )
        if self.domain_members is not None:
            self.batches_per_epoch = sum(len(m) // batch_size for m in self.domain_members)
        else:
            self.batches_per_epoch = num_sequences // batch_size
        if self.batches_per_epoch < 1:
            raise ValueError(
                f"trainer.batch_size={batch_size} exceeds the {num_sequences} training sequences of the data"
                + (" in every domain (domain-pure batches)" if domain_pure else "")
            )
        if batch_size % num_processes:
            raise ValueError(f"trainer.batch_size={batch_size} (the global micro-batch) is not divisible by the "
                             f"{num_processes} data-parallel processes; use a multiple of {num_processes}")
        self.num_sequences, self.batch_size, self.seed = num_sequences, batch_size, seed
        self.num_processes, self.process_index = num_processes, process_index
        self.rank_batch_size = batch_size // num_processes
        self._epoch, self._batches = -1, None

    def _epoch_batches(self, epoch: int) -> list[torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        if self.domain_members is None:
            return list(torch.randperm(self.num_sequences, generator=generator).split(self.batch_size))[
                :self.batches_per_epoch]
        per_domain = []
        for members in self.domain_members:
            shuffled = members[torch.randperm(len(members), generator=generator)]
            per_domain.append(list(shuffled.split(self.batch_size))[:len(members) // self.batch_size])
        rounds = max(len(batches) for batches in per_domain)
        return [batches[i] for i in range(rounds) for batches in per_domain if i < len(batches)]

    def indices(self, micro_step: int) -> torch.Tensor:
        """Sequence indices [B/W] of this rank's share of the micro-batch at ``micro_step``."""
        epoch, batch_in_epoch = divmod(micro_step, self.batches_per_epoch)
        if epoch != self._epoch:
            self._epoch, self._batches = epoch, self._epoch_batches(epoch)
        start = self.process_index * self.rank_batch_size
        return self._batches[batch_in_epoch][start:start + self.rank_batch_size]
