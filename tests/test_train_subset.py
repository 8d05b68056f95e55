"""trainer.train_sequences_per_domain: every seed reads the same first n sequences of each domain."""

from __future__ import annotations

import torch

from moe.run_plan import prepare_run
from moe.trainer import Trainer


def sequences_read(trainer: Trainer, micro_steps: int) -> torch.Tensor:
    """The token rows [micro_steps x B, S+1] the run reads in its first ``micro_steps`` micro-steps."""
    rows = torch.cat([trainer.batches.indices(m) for m in range(micro_steps)])
    return trainer.data.train.input_ids[rows]


def as_set(rows: torch.Tensor) -> set[tuple[int, ...]]:
    return {tuple(row.tolist()) for row in rows}


def test_every_seed_reads_the_first_n_of_each_domain_once_per_epoch_in_its_own_order(smoke):
    full = Trainer(prepare_run(smoke())).data.train
    n = 6  # 12 sequences: three micro-batches of 4 per epoch
    first_n = [full.input_ids[full.domain_ids == d][:n] for d in (0, 1)]
    runs = [Trainer(prepare_run(smoke("trainer.train_sequences_per_domain=6", f"trainer.seed={seed}")))
            for seed in (0, 1)]
    epochs = [sequences_read(trainer, 3) for trainer in runs]
    for trainer, read in zip(runs, epochs):
        assert len(trainer.data.train) == 2 * n
        assert trainer.data.train.domain_ids.tolist() == [0] * n + [1] * n
        assert len(read) == 2 * n and as_set(read) == as_set(torch.cat(first_n))  # each once
    assert not torch.equal(epochs[0], epochs[1])  # the same sequences, in each seed's own order
    second_epoch = torch.cat([runs[0].batches.indices(m) for m in range(3, 6)])
    assert as_set(runs[0].data.train.input_ids[second_epoch]) == as_set(torch.cat(first_n))


def test_more_than_a_domain_has_takes_the_whole_split(smoke):
    full = Trainer(prepare_run(smoke())).data.train
    capped = Trainer(prepare_run(smoke("trainer.train_sequences_per_domain=10000000"))).data.train
    assert torch.equal(capped.input_ids, full.input_ids[full.domain_ids.argsort(stable=True)])
