"""Every evaluation CLI answers a path that does not exist with one line naming it (no traceback)."""

from __future__ import annotations

import compare
import generate
import perplexity
import pytest
import quantize
import routing_report
import scmoe_arithmetic


@pytest.mark.parametrize("cli, extra", [
    (perplexity, []),
    (routing_report, []),
    (scmoe_arithmetic, ["--problems", "1"]),
    (generate, ["--prompt", "x"]),
    (quantize, ["{tmp}/out"]),
    (compare, ["--out", "{tmp}/out"]),
])
def test_a_missing_run_is_one_line_naming_it(cli, extra, tmp_path):
    missing = tmp_path / "no-such-run"
    with pytest.raises(SystemExit) as exit_info:
        cli.main([str(missing), *(arg.format(tmp=tmp_path) for arg in extra)])
    message = str(exit_info.value.code)
    name = cli.__name__.rsplit(".", 1)[-1]
    assert message.startswith(f"{name}.py: error: ") and "\n" not in message
    assert str(missing) in message
    assert not (tmp_path / "out").exists()
