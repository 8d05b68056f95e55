"""Expert offloading (moe/offload.py): the offloaded model computes the resident model's logits and tokens,
the LRU cache never holds more than it may (beyond one forward's own experts), the counters add up, the
weights leave memory, and bad requests are refused before anything is written."""

from __future__ import annotations

import functools

import pytest
import torch

from moe.experts import GroupedExperts
from moe.generation import generate
from moe.models.builder import build_decoder
from moe.offload import offload_experts
from moe.routers import ExpertChoiceRouter, TopKRouter


def build(impl="sorted_loop", router=None):
    torch.manual_seed(0)
    return build_decoder(vocab_size=61, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, d_ff=48, max_seq_len=40,
                         num_experts=8, expert_d_ff=16, experts=functools.partial(GroupedExperts, impl=impl),
                         router=router or functools.partial(TopKRouter, top_k=2, order="topk_then_softmax")).eval()


PROMPTS = [[5, 9, 2, 44, 7, 1, 30], [12, 3], [8, 8, 50, 21, 2]]


@pytest.mark.parametrize("tier", ["disk", "host"])
@pytest.mark.parametrize("impl", ["sorted_loop", "auto"])
def test_the_offloaded_model_computes_what_the_resident_one_does(tmp_path, impl, tier):
    resident_model, offloaded = build(impl), build(impl)
    stats = offload_experts(offloaded, resident=2, store=tmp_path / "store", tier=tier)
    assert (tmp_path / "store").exists() == (tier == "disk")
    ids = torch.randint(0, 61, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        tolerance = dict(rtol=0, atol=0) if impl == "sorted_loop" else dict(rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(offloaded(ids).logits, resident_model(ids).logits, **tolerance)
    assert generate(offloaded, PROMPTS, max_new_tokens=6) == generate(resident_model, PROMPTS, max_new_tokens=6)
    assert stats.misses > 0 and stats.hits > 0 and stats.bytes_read > 0 and stats.prefetched > 0
    assert 0 <= stats.prefetched_used <= stats.prefetched and stats.prefetched_used <= stats.used_after_prefetch


def test_the_cache_keeps_at_most_its_size_and_the_weights_leave_memory(tmp_path):
    model = build()
    before = sum(p.numel() for p in model.parameters())
    offload_experts(model, resident=3, store=tmp_path / "store", prefetch=False)
    after = sum(p.numel() for p in model.parameters())
    assert before - after == 3 * 8 * 3 * 32 * 16  # 3 layers x 8 experts x (gate, up, down) of 32 x 16
    layers = [block.ffn.experts for block in model.blocks]
    state = model.decode_state()
    with torch.no_grad():
        for token in torch.randint(0, 61, (12,)).tolist():  # decoding: each forward needs 2 experts per layer
            model(torch.tensor([[token]]), state=state)
            assert all(len(layer.cache) <= 3 for layer in layers)


def test_hit_rate_and_bytes_per_token_add_up(tmp_path):
    model = build()
    stats = offload_experts(model, resident=8, store=tmp_path / "store", prefetch=False)  # all experts fit
    with torch.no_grad():
        model(torch.randint(0, 61, (1, 30)))
        first_misses = stats.misses
        model(torch.randint(0, 61, (1, 30)))
    assert stats.misses == first_misses  # nothing is read twice once everything is resident
    per_expert = 3 * 32 * 16 * 4
    assert stats.bytes_read == first_misses * per_expert
    summary = stats.summary(tokens=60)
    assert summary["hit_rate"] == stats.hits / (stats.hits + stats.misses)
    assert summary["bytes_read_per_token"] == stats.bytes_read / 60


def test_auto_keeps_the_experts_on_disk_for_a_cpu_model_and_host_memory_needs_no_store(tmp_path):
    from moe.offload import DiskTier, HostTier

    on_cpu = build()
    offload_experts(on_cpu, resident=2, store=tmp_path / "store")
    assert all(isinstance(block.ffn.experts.tier, DiskTier) for block in on_cpu.blocks)
    in_host = build()
    offload_experts(in_host, resident=2, tier="host")
    assert all(isinstance(block.ffn.experts.tier, HostTier) for block in in_host.blocks)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_a_gpu_the_experts_wait_in_host_memory_and_compute_the_resident_logits():
    resident_model, offloaded = build().cuda(), build().cuda()
    stats = offload_experts(offloaded, resident=2)  # auto: host memory for a model on the GPU
    ids = torch.randint(0, 61, (2, 20), generator=torch.Generator().manual_seed(1)).cuda()
    with torch.no_grad():
        torch.testing.assert_close(offloaded(ids).logits, resident_model(ids).logits, rtol=1e-5, atol=1e-5)
    assert stats.misses > 0 and stats.bytes_read > 0
    assert all(w.is_pinned() for w in offloaded.blocks[0].ffn.experts.tier.experts[0])


@pytest.mark.filterwarnings("ignore:ExpertChoiceRouter ranks all tokens")
@pytest.mark.parametrize("kwargs, router, message", [
    (dict(resident=9), None, r"offload.experts=9 must be an integer in \[1, 8\]"),
    (dict(resident=0), None, r"offload.experts=0 must be an integer in \[1, 8\]"),
    (dict(resident=2), ExpertChoiceRouter, "offloading needs token-choice routing"),
    (dict(resident=2, tier="ssd"), None, r"offload.tier='ssd' is not one of \('auto', 'disk', 'host'\)"),
])
def test_bad_offload_requests_are_refused_before_anything_is_written(tmp_path, kwargs, router, message):
    with pytest.raises(ValueError, match=message):
        offload_experts(build(router=router), store=tmp_path / "store", **kwargs)
    assert not (tmp_path / "store").exists()
    (tmp_path / "store").mkdir()
    with pytest.raises(FileExistsError, match="exists"):
        offload_experts(build(), resident=2, store=tmp_path / "store")
    with pytest.raises(ValueError, match="offload.tier=disk needs a store directory"):
        offload_experts(build(), resident=2, tier="disk")
