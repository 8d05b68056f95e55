"""MicroBatchSchedule: the default order, and domain-pure micro-batches."""

import pytest
import torch

from moe.batches import MicroBatchSchedule


def test_default_schedule_cuts_a_seeded_permutation_per_epoch():
    schedule = MicroBatchSchedule(num_sequences=10, batch_size=3, seed=4)
    permutation = torch.randperm(10, generator=torch.Generator().manual_seed(4 * 100_003))
    assert [schedule.indices(m).tolist() for m in range(3)] == [permutation[i:i + 3].tolist() for i in (0, 3, 6)]
    next_epoch = torch.randperm(10, generator=torch.Generator().manual_seed(4 * 100_003 + 1))
    assert schedule.indices(3).tolist() == next_epoch[:3].tolist()


def test_domain_pure_batches_alternate_domains_and_cover_each_sequence_once():
    domain_ids = torch.tensor([0] * 7 + [1] * 4)  # 3 batches of 2 from domain 0, 2 from domain 1
    schedule = MicroBatchSchedule(num_sequences=11, batch_size=2, seed=0, domain_ids=domain_ids, domain_pure=True)
    assert schedule.batches_per_epoch == 5
    batches = [schedule.indices(m) for m in range(5)]
    domains = [set(domain_ids[b].tolist()) for b in batches]
    assert domains == [{0}, {1}, {0}, {1}, {0}]  # the rotation; domain 1 runs out first
    seen = torch.cat(batches)
    assert len(set(seen.tolist())) == 10
    # two ranks split each micro-batch: still domain-pure, the same sequences as one process
    ranks = [MicroBatchSchedule(num_sequences=11, batch_size=2, seed=0, domain_ids=domain_ids, domain_pure=True,
                                num_processes=2, process_index=r) for r in (0, 1)]
    for m, batch in enumerate(batches):
        assert [ranks[0].indices(m).item(), ranks[1].indices(m).item()] == batch.tolist()


@pytest.mark.parametrize("world", [1, 2, 4])
def test_ranks_read_the_one_process_batch_between_them_at_every_world_size(world):
    """trainer.batch_size is the global micro-batch: W ranks read, in rank order, the rows one process
    reads at the same micro-step, across epoch boundaries too (the data position of resuming at another
    world size)."""
    one = MicroBatchSchedule(num_sequences=19, batch_size=4, seed=3)
    ranks = [MicroBatchSchedule(num_sequences=19, batch_size=4, seed=3, num_processes=world, process_index=r)
             for r in range(world)]
    for m in range(12):  # 4 batches per epoch: three epochs
        assert torch.cat([rank.indices(m) for rank in ranks]).tolist() == one.indices(m).tolist()


def test_a_global_batch_the_world_does_not_divide_is_refused():
    with pytest.raises(ValueError, match=r"trainer.batch_size=6 \(the global micro-batch\) is not divisible by the 4"):
        MicroBatchSchedule(num_sequences=40, batch_size=6, seed=0, num_processes=4, process_index=0)


def test_domain_pure_needs_domains_and_a_batch_that_fits_a_domain():
    with pytest.raises(ValueError, match="domain of every training sequence"):
        MicroBatchSchedule(num_sequences=4, batch_size=2, seed=0, domain_pure=True)
    with pytest.raises(ValueError, match="in every domain"):
        MicroBatchSchedule(num_sequences=4, batch_size=3, seed=0, domain_ids=torch.tensor([0, 0, 1, 1]),
                           domain_pure=True)
