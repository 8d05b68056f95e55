"""eval/scmoe_arithmetic.py: held-out problems in the arithmetic domain's format, scored on the tiny run."""

from scmoe_arithmetic import HELD_OUT, main, problems

from moe.data.extra_domains import arithmetic_document


def test_problems_are_the_fourth_line_of_held_out_documents():
    (prompt, answer), = problems(1)
    lines = arithmetic_document(HELD_OUT).splitlines()
    assert prompt == "\n".join(lines[:3]) + "\n" + lines[3].split(" = ")[0] + " = " and lines[3].endswith(answer)
    left, op, right = lines[3].split(" = ")[0].split(" ")
    assert int(answer) == {"+": int(left) + int(right), "-": int(left) - int(right), "*": int(left) * int(right)}[op]


def test_the_script_scores_greedy_and_scmoe(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    results = main([str(run_dir), "--problems", "4", "--betas", "0.5", "--out", str(tmp_path / "r.json")])
    assert set(results) == {"problems", "greedy", "scmoe_rank2_beta0.5"} and results["problems"] == 4
    assert all(0.0 <= results[k] <= 1.0 for k in ("greedy", "scmoe_rank2_beta0.5"))
