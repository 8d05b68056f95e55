"""trainer.threads: the run's torch thread count is set for the run and put back after it."""

import pytest
import torch

from moe.cpu_threads import cpu_threads
from moe.training import run


@pytest.fixture
def two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def test_the_count_holds_inside_and_is_put_back_after(two_threads):
    with cpu_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError), cpu_threads(1):
        raise RuntimeError("a failing run")
    assert torch.get_num_threads() == 2


def test_none_leaves_torch_alone(two_threads):
    with cpu_threads(None):
        assert torch.get_num_threads() == 2


def test_a_run_records_its_thread_count_and_gives_the_old_one_back(smoke, two_threads):
    one = run(smoke("trainer.threads=1", "trainer.max_steps=3"))
    assert one["threads"] == 1 and torch.get_num_threads() == 2
    default = run(smoke("trainer.max_steps=3", run_dir=one["run_dir"] + "-default"))
    assert default["threads"] == 2
    # one thread or two: the same computation up to the order of float32 sums
    assert one["val_loss"] == pytest.approx(default["val_loss"], abs=1e-5)
