import math

import pytest
import torch

from sslvit.nn.pos_embed import sincos_pos_embed_2d


def direct_formula(dim: int, rows: int, cols: int) -> torch.Tensor:
    """Entry by entry: first half encodes the column, second half the row; sin then cos."""
    quarter = dim // 4
    table = torch.zeros(rows * cols, dim, dtype=torch.float64)
    for r in range(rows):
        for c in range(cols):
            for k in range(quarter):
                w = 1.0 / 10000 ** (k / quarter)
                t = r * cols + c
                table[t, k] = math.sin(c * w)
                table[t, quarter + k] = math.cos(c * w)
                table[t, 2 * quarter + k] = math.sin(r * w)
                table[t, 3 * quarter + k] = math.cos(r * w)
    return table.float()


@pytest.mark.parametrize("dim,grid", [(16, 4), (32, (3, 5))])
def test_matches_direct_formula(dim, grid):
    rows, cols = (grid, grid) if isinstance(grid, int) else grid
    table = sincos_pos_embed_2d(dim, grid)
    assert torch.allclose(table, direct_formula(dim, rows, cols), atol=1e-6)


def test_cls_position_is_zero_and_rest_unchanged():
    with_cls = sincos_pos_embed_2d(24, 3, cls_token=True)
    assert with_cls.shape == (10, 24)
    assert torch.equal(with_cls[0], torch.zeros(24))
    assert torch.equal(with_cls[1:], sincos_pos_embed_2d(24, 3))


def test_positions_are_distinct():
    table = sincos_pos_embed_2d(64, 8)
    dist = torch.cdist(table, table)
    assert (dist + torch.eye(64) * 1e3).min() > 0.1


def test_bad_dimension():
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_pos_embed_2d(30, 4)
