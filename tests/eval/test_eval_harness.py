"""moe-lab as an lm-evaluation-harness model (moe/eval_harness.py), offline on tasks defined on local files:
the three request types against the model's own log-probabilities, and `python -m moe.eval_harness` running
a multiple-choice, a perplexity and a generation task end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")
from lm_eval.api.instance import Instance  # noqa: E402

from moe.eval_harness import MoeLabLM  # noqa: E402
from moe.generation import generate  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DOCS = [{"question": "def add(a, b):\n    return", "choices": [" a + b", " the cat", " 3.14"], "answer": 0},
        {"question": "The cat sat on the", "choices": [" mat.", " return x", " ))))"], "answer": 0},
        {"question": "import", "choices": [" os", " the", " 1 +"], "answer": 0}]


def request(kind: str, *args) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


def direct_logprob(model, context_ids: list[int], continuation_ids: list[int]) -> float:
    ids = torch.tensor([context_ids + continuation_ids])
    with torch.no_grad():
        log_probs = model(ids[:, :-1]).logits.log_softmax(-1)[0]
    n = len(continuation_ids)
    return float(log_probs[-n:].gather(-1, ids[0, -n:, None]).sum())


def test_loglikelihood_and_rolling_are_the_models_log_probabilities(tiny_run):
    run_dir, _ = tiny_run
    lm = MoeLabLM(path=str(run_dir), device="cpu", batch_size=2)
    tok = lm.tokenizer
    pairs = [("def f(x):", " return x"), ("The ", "cat"), ("", "import os")]
    scores = lm.loglikelihood([request("loglikelihood", *pair) for pair in pairs])
    for (context, continuation), (logprob, _) in zip(pairs, scores, strict=True):
        context_ids = tok.encode(context) if context else [tok.eos_id]
        assert logprob == pytest.approx(direct_logprob(lm.model, context_ids, tok.encode(continuation)), abs=1e-4)
    text = "x = 1\n" * 20  # 120 bytes: two windows of the run's 64-token context
    (rolling,) = lm.loglikelihood_rolling([request("loglikelihood_rolling", text)])
    ids = [tok.eos_id] + tok.encode(text)
    # window 1: the 64 first tokens after EOS; window 2: the other 56 after the 9 before them (64 inputs)
    windows = direct_logprob(lm.model, ids[:1], ids[1:65]) + direct_logprob(lm.model, ids[56:65], ids[65:121])
    assert rolling == pytest.approx(windows, abs=1e-3)


def test_generate_until_cuts_at_the_stop_string(tiny_run):
    run_dir, _ = tiny_run
    lm = MoeLabLM(path=str(run_dir), device="cpu")
    (text,) = lm.generate_until([request("generate_until", "def ", {"until": ["("], "max_gen_toks": 20})])
    full = lm.tokenizer.decode(generate(lm.model, [lm.tokenizer.encode("def ")], max_new_tokens=20,
                                        stop_tokens=[lm.tokenizer.eos_id])[0])
    assert text == full.split("(")[0]


TASKS = {
    "moe_lab_toy_choice": """
task: moe_lab_toy_choice
dataset_path: json
dataset_kwargs: {data_files: {test: "DOCS"}}
test_split: test
output_type: multiple_choice
doc_to_text: "{{question}}"
doc_to_choice: choices
doc_to_target: answer
target_delimiter: ""
metric_list: [{metric: acc}]
""",
    "moe_lab_toy_ppl": """
task: moe_lab_toy_ppl
dataset_path: json
dataset_kwargs: {data_files: {test: "DOCS"}}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{question}}"
metric_list: [{metric: bits_per_byte}]
""",
    "moe_lab_toy_gen": """
task: moe_lab_toy_gen
dataset_path: json
dataset_kwargs: {data_files: {test: "DOCS"}}
test_split: test
output_type: generate_until
doc_to_text: "{{question}}"
doc_to_target: "{{choices[answer]}}"
generation_kwargs: {until: ["\\n"], max_gen_toks: 8, do_sample: false}
metric_list: [{metric: exact_match}]
""",
}


@pytest.mark.slow
def test_the_harness_command_line_runs_local_tasks(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps(doc) + "\n" for doc in DOCS))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    for name, text in TASKS.items():
        (tasks / f"{name}.yaml").write_text(text.replace("DOCS", str(docs)))
    out = tmp_path / "out"
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "hf")}
    subprocess.run([sys.executable, "-m", "moe.eval_harness", "--model", "moe-lab", "--model_args",
                    f"path={run_dir}", "--device", "cpu", "--tasks", ",".join(TASKS), "--include_path", str(tasks),
                    "--output_path", str(out)], check=True, cwd=REPO, env=env, capture_output=True)
    (result_file,) = out.rglob("results*.json")
    results = json.loads(result_file.read_text())["results"]
    lm = MoeLabLM(path=str(run_dir), device="cpu")
    scores = [[lm.loglikelihood([request("loglikelihood", doc["question"], choice)])[0][0] for choice in doc["choices"]]
              for doc in DOCS]
    expected_acc = sum(max(range(3), key=s.__getitem__) == doc["answer"] for s, doc in zip(scores, DOCS)) / 3
    assert results["moe_lab_toy_choice"]["acc,none"] == pytest.approx(expected_acc)
    assert results["moe_lab_toy_ppl"]["bits_per_byte,none"] > 0
    assert 0.0 <= results["moe_lab_toy_gen"]["exact_match,none"] <= 1.0
