"""eval/generate.py on the tiny run: a batch of prompts continues with the run's byte tokenizer, greedily
as the library does, and bad requests end in one line."""

import pytest
from generate import main

from moe import load_model
from moe.data.tokenizer import ByteTokenizer
from moe.generation import generate


def test_the_cli_continues_each_prompt_as_the_library_does(tiny_run, capsys):
    run_dir, _ = tiny_run
    texts = main([str(run_dir), "--prompt", "def ", "--prompt", "The cat", "--max-new-tokens", "12", "--no-stop"])
    tokenizer = ByteTokenizer()
    expected = generate(load_model(run_dir), [tokenizer.encode("def "), tokenizer.encode("The cat")],
                        max_new_tokens=12)
    assert texts == [tokenizer.decode(ids) for ids in expected]
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("def ") and len(printed) >= 2


def test_a_prompt_longer_than_the_model_allows_fails_in_one_line(tiny_run):
    run_dir, _ = tiny_run
    with pytest.raises(SystemExit, match="generate.py: error: a prompt of 70 tokens \\+ max_new_tokens=8 exceeds"):
        main([str(run_dir), "--prompt", "x" * 70, "--max-new-tokens", "8"])
    with pytest.raises(SystemExit, match="top_p=2.0 must lie in"):
        main([str(run_dir), "--prompt", "x", "--top-p", "2"])


def test_scmoe_from_the_command_line(tiny_run):
    from moe.scmoe import SCMoE

    run_dir, _ = tiny_run
    texts = main([str(run_dir), "--prompt", "def ", "--max-new-tokens", "6", "--no-stop", "--scmoe-beta", "0.5"])
    expected = generate(load_model(run_dir), [ByteTokenizer().encode("def ")], max_new_tokens=6, scmoe=SCMoE())
    assert texts == [ByteTokenizer().decode(expected[0])]
    with pytest.raises(SystemExit, match=r"scmoe rank=99 must lie in \[1, "):
        main([str(run_dir), "--prompt", "x", "--scmoe-beta", "0.5", "--scmoe-rank", "99"])


def test_offloaded_experts_generate_the_same_text(tiny_run, capsys):
    run_dir, _ = tiny_run
    plain = main([str(run_dir), "--prompt", "def ", "--max-new-tokens", "8", "--no-stop"])
    offloaded = main([str(run_dir), "--prompt", "def ", "--max-new-tokens", "8", "--no-stop", "--offload-experts", "2"])
    assert offloaded == plain
    assert "hit_rate" in capsys.readouterr().err
    with pytest.raises(SystemExit, match=r"offload.experts=99 must be an integer in \[1, "):
        main([str(run_dir), "--prompt", "x", "--offload-experts", "99"])
