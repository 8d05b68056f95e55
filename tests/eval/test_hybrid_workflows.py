"""The research workflow on every shipped hybrid (model=jamba_tiny, blackmamba_tiny, moa_tiny, zamba_tiny at smoke
size):
training, eval/perplexity.py reproducing the run's validation loss, eval/routing_report.py reporting every
routed site (MoA's attention experts as "i.moa"), eval/compare.py tabulating them side by side, and
upcycling the FFNs of a dense Mamba hybrid into experts with its function kept at step 0."""

from __future__ import annotations

import pytest
import torch
from compare import compare
from perplexity import perplexity_table
from routing_report import routing_report

from moe import load_model
from moe.training import run

pytestmark = pytest.mark.slow

HYBRIDS = {  # name: (overrides at smoke size, the routed sites the report lists)
    "jamba_tiny": (["model=jamba_tiny", "model.n_layers=4", "model.expert_d_ff=64"], ["1", "3"]),
    "blackmamba_tiny": (["model=blackmamba_tiny", "model.expert_d_ff=64"], ["0", "1"]),
    "moa_tiny": (["model=moa_tiny", "model.moa_head_dim=16"], ["0.moa", "0", "1.moa", "1"]),
    "zamba_tiny": (["model=zamba_tiny", "model.expert_d_ff=64"], ["0", "1"]),
}


@pytest.fixture(scope="module")
def hybrid_runs(tmp_path_factory, data_cache):
    from conftest import compose

    sweep = tmp_path_factory.mktemp("hybrids")
    summaries = {}
    for name, (overrides, _) in HYBRIDS.items():
        summaries[name] = run(compose("experiment=smoke", *overrides, "trainer.max_steps=4", "trainer.eval_every=4",
                                      "trainer.save_every=4", "logger=none", "trainer.progress=false",
                                      f"data.cache_dir={data_cache}", run_dir=sweep / name))
    return sweep, summaries


@pytest.mark.parametrize("name", list(HYBRIDS))
def test_perplexity_and_the_routing_report_work_on_each_hybrid(hybrid_runs, tmp_path, name):
    sweep, summaries = hybrid_runs
    table = perplexity_table(str(sweep / name), [], max_sequences=4)
    assert table["overall"]["loss"] == pytest.approx(summaries[name]["val_loss"], rel=1e-6)
    report = routing_report(str(sweep / name), tmp_path / "report", sequences_per_domain=2)
    assert list(report["layers"]) == HYBRIDS[name][1]
    for layer in report["layers"].values():
        assert sum(layer["load_share"]) == pytest.approx(1.0)


def test_compare_tabulates_the_hybrids_side_by_side(hybrid_runs, tmp_path):
    sweep, summaries = hybrid_runs
    rows = compare([sweep], tmp_path / "compare", sequences_per_domain=2)
    by_run = {row["run"]: row for row in rows}
    assert set(by_run) == set(HYBRIDS)
    for name, row in by_run.items():
        assert row["val_loss"] == pytest.approx(summaries[name]["val_loss"])
        assert 0 < row["params_active"] < row["params_total"]
        assert 0.0 <= row["domain_mi"]


@pytest.mark.parametrize("method", ["copy", "carve"])
def test_a_dense_mamba_hybrid_upcycles_with_its_function_kept(tmp_path, data_cache, method):
    """Jamba's layout with dense FFNs → the same backbone with MoE blocks 1 and 3: the Mamba and attention
    mixers are copied, the FFNs become experts (copies, or carved with every expert active)."""
    from conftest import compose

    backbone = ["experiment=smoke", "model=jamba_tiny", "model.n_layers=4", "logger=none", "trainer.progress=false",
                f"data.cache_dir={data_cache}"]
    run(compose(*backbone, "model.num_experts=0", "trainer.max_steps=3", run_dir=tmp_path / "dense"))
    overrides = ["init=upcycle", f"init.path={tmp_path / 'dense'}", f"init.method={method}", "trainer.max_steps=0"]
    # copy: renormalised top-2 of identical experts; carve: CMoE's analytic router with all 4 slices active
    overrides += ["model.expert_d_ff=128", "router.order=topk_then_softmax"] if method == "copy" else [
        "model.expert_d_ff=32", "model.num_experts=4", "router=cmoe", "router.top_k=4"]
    run(compose(*backbone, *overrides, run_dir=tmp_path / "moe"), overrides)
    dense, moe = load_model(tmp_path / "dense"), load_model(tmp_path / "moe")
    assert moe.moe_indices == [1, 3]
    ids = torch.randint(0, 257, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(moe(ids).logits, dense(ids).logits, rtol=1e-5, atol=1e-5)
