"""first_per_domain: the first n sequences of each domain (the validation and training subsets), or all."""

import torch

from moe.data.packing import first_per_domain


def test_first_n_of_each_domain_in_domain_order():
    domain_ids = torch.tensor([1, 0, 1, 0, 0, 1, 1])
    assert first_per_domain(domain_ids, 2).tolist() == [1, 3, 0, 2]


def test_none_takes_every_sequence_grouped_by_domain():
    domain_ids = torch.tensor([1, 0, 1, 0, 0, 1, 1])
    assert first_per_domain(domain_ids, None).tolist() == [1, 3, 4, 0, 2, 5, 6]
    assert first_per_domain(domain_ids, 100).tolist() == first_per_domain(domain_ids, None).tolist()
