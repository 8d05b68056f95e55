"""ReMoE routing on a short training run: every MoE layer keeps routing about k experts per token.

Without the offset inside the ReLU (``router.start_at_target=false`` and no ``aux_free``), the deeper
layers' gates switched off for good in the first ~50 steps of the default run (docs/results.md)."""

import json

import pytest

from moe.training import run


@pytest.mark.slow
def test_every_layer_keeps_routing_and_settles_between_half_and_one_and_a_half_k(smoke, tmp_path):
    run_dir = tmp_path / "relu"
    # fp32 pinned: with auto precision a CPU with native bf16 trained in bf16, one without in fp32, and
    # the warm-up ended at different steps (fp32: layer 3 above 1.5k at step 120, 1.2k from 130; bf16: within
    # 1.5k by step 120)
    run(smoke("+router_arm=relu", "model.n_layers=4", "trainer.max_steps=200", "trainer.log_every=10",
              "trainer.eval_every=200", "trainer.save_every=200", "trainer.mixed_precision=no", run_dir=run_dir))
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    windows = [r for r in records if "layer0/experts_per_token" in r]
    assert len(windows) == 20
    for record in windows:  # k = 2
        per_layer = [record[f"layer{i}/experts_per_token"] for i in range(4)]
        assert min(per_layer) >= 1.0, (record["step"], per_layer)  # no layer ever stops routing
        if record["step"] >= 140:  # after ReMoE's warm-up stages (a dense phase, then sparsifying)
            assert max(per_layer) <= 3.0, (record["step"], per_layer)
