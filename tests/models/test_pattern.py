"""Layer patterns name exactly the MoE blocks the literature's models use."""

from __future__ import annotations

import pytest

from moe.models import moe_block_indices


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"n_layers": 4}, [0, 1, 2, 3]),  # Mixtral: every block
        ({"n_layers": 6, "every": 2}, [1, 3, 5]),  # GShard / Switch: every other block, dense first
        ({"n_layers": 6, "first_dense": 1}, [1, 2, 3, 4, 5]),  # DeepSeek-MoE: first block dense
        ({"n_layers": 8, "every": 3, "first_dense": 2}, [4, 7]),
        ({"n_layers": 6, "every": 2, "layers": [0, 5, 5]}, [0, 5]),  # explicit list wins
        ({"n_layers": 3, "first_dense": 3}, []),
    ],
)
def test_patterns(kwargs, expected):
    assert moe_block_indices(**kwargs) == expected


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_layers": 4, "every": 0}, "moe_every=0"),
        ({"n_layers": 4, "first_dense": 5}, "moe_first_dense=5"),
        ({"n_layers": 4, "layers": [1, 4]}, r"outside \[0, n_layers=4\): \[4\]"),
    ],
)
def test_bad_patterns(kwargs, message):
    with pytest.raises(ValueError, match=message):
        moe_block_indices(**kwargs)
