"""CPC's InfoNCE, query by query, against a naive loop in the image's own coordinates, for steps k = 1, 2, 3.

The loop knows nothing of the implementation's grid turning or index arithmetic: for the context at
patch (i, j) of image n and step k it takes the latent k patches further in the scan direction (same
image; same column for the vertical scans, same row for the horizontal ones), and scores the prediction
W_k c against every patch latent of the batch (the positive and all others, other images included).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sslvit.methods import CPC
from sslvit.nn.backbone import ViTConfig

# 16 px images, 4 px patches with stride 2: a 7x7 grid; each patch is 2x2 tokens of 2 px.
PATCH_VIT = ViTConfig(arch="vit_tiny", img_size=4, patch_size=2, embed_dim=32, depth=1, num_heads=2)
# Where the target of step k lies from patch (i, j), in the image's rows and columns.
STEP = {"top_down": (1, 0), "bottom_up": (-1, 0), "left_right": (0, 1), "right_left": (0, -1)}


def tiny_cpc(direction: str, **kwargs) -> CPC:
    settings = dict(backbone=PATCH_VIT, image_size=16, context_dim=32, context_depth=1, context_heads=2)
    return CPC(**settings, directions=[direction], prediction_steps=3, **kwargs).eval()


def to_image_coordinates(turned: torch.Tensor, direction: str) -> torch.Tensor:
    """A grid [N, G, G, ...] as the context network returns it (scan direction down the rows) back in image rows and
    columns, undoing the turns by hand: bottom_up reversed the rows; left_right swapped rows and columns;
    right_left swapped them, then reversed the rows."""
    if direction == "top_down":
        return turned
    if direction == "bottom_up":
        return turned.flip(1)
    if direction == "left_right":
        return turned.transpose(1, 2)
    return turned.flip(1).transpose(1, 2)


def naive_infonce(model: CPC, images: torch.Tensor, direction: str) -> dict[int, tuple[float, float, int]]:
    """step k -> (mean loss, accuracy, number of queries) by a loop over every image, patch and step."""
    with torch.no_grad():
        z = model(images)  # [N, G, G, D], un-augmented (eval mode)
        n_images, g = z.shape[:2]
        bank = z.reshape(n_images * g * g, -1)  # row (n * G + i) * G + j holds z[n, i, j]
        unit = (lambda x: x / x.norm(dim=-1, keepdim=True)) if model.normalize else (lambda x: x)  # cosine scores
        context = to_image_coordinates(model.contexts(z, direction), direction)  # [N, G, G, Dc]
        di, dj = STEP[direction]
        result = {}
        for predictor, k in zip(model.predictors[direction], model.steps, strict=True):
            losses, hits = [], []
            for n in range(n_images):
                for i in range(g):
                    for j in range(g):
                        ti, tj = i + k * di, j + k * dj
                        if not (0 <= ti < g and 0 <= tj < g):
                            continue  # no patch k steps further: this context predicts nothing at step k
                        query = predictor(context[n, i, j])  # [D]
                        scores = (unit(bank) @ unit(query)) / model.temperature  # against every latent of the batch
                        positive = (n * g + ti) * g + tj
                        losses.append(torch.logsumexp(scores, 0) - scores[positive])
                        others = torch.cat([scores[:positive], scores[positive + 1 :]])
                        hits.append(float(scores[positive] > others.max()))
            result[k] = (torch.stack(losses).mean().item(), sum(hits) / len(hits), len(hits))
    return result


def check_against_loop(model: CPC, images: torch.Tensor, direction: str) -> dict[int, tuple[float, float, int]]:
    expected = naive_infonce(model, images, direction)
    with torch.no_grad():
        out = model.compute_loss(images)
    assert set(expected) == {1, 2, 3}
    for k, (_, accuracy, count) in expected.items():
        assert count == 2 * 7 * (7 - k), "every patch with a patch k steps further is a query"
        assert out[f"accuracy_k{k}"].item() == pytest.approx(accuracy, abs=1e-6), f"step {k}"
    mean_loss = sum(loss for loss, _, _ in expected.values()) / len(expected)
    assert out["loss"].item() == pytest.approx(mean_loss, rel=1e-5), {k: v[0] for k, v in expected.items()}
    return expected


@pytest.mark.parametrize("direction", list(STEP))
def test_infonce_of_every_step_equals_a_naive_loop(direction):
    torch.manual_seed(0)
    model = tiny_cpc(direction)
    images = torch.randn(2, 3, 16, 16)
    check_against_loop(model, images, direction)


class OracleContext(nn.Module):
    """Stands in for the context network: in the turned grid, c[r, j] = z[r + shift, j] (cheats on purpose)."""

    def __init__(self, shift: int) -> None:
        super().__init__()
        self.shift = shift

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.cat([z[:, self.shift :], z[:, -self.shift :]], dim=1)


@pytest.mark.parametrize("direction", list(STEP))
@pytest.mark.parametrize("k", [1, 2, 3])
def test_only_the_step_whose_prediction_is_the_latent_k_further_is_always_right(direction, k):
    """With a context that holds the latent k steps further and W_k the identity, step k picks out its
    positive for every query (cosine 1) and the other steps do not: their positives are elsewhere."""
    torch.manual_seed(0)
    model = tiny_cpc(direction, normalize=True, temperature=0.01)
    model.context[direction] = OracleContext(k)
    for step, predictor in zip(model.steps, model.predictors[direction], strict=True):
        if step == k:
            predictor.weight.data = torch.eye(32)
    expected = check_against_loop(model, torch.randn(2, 3, 16, 16), direction)
    assert expected[k][1] == 1.0
    assert all(accuracy < 0.5 for step, (_, accuracy, _) in expected.items() if step != k)
