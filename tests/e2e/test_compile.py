"""`model.compile` (torch.compile of the whole model, or per block) trains the same function as eager mode."""

import copy

import pytest
import torch
from torch._dynamo.utils import counters

from sslvit.methods.mae import MAE

pytestmark = pytest.mark.slow  # inductor compiles C++ kernels on first use


@pytest.mark.parametrize("mode", [True, "blocks"])
def test_compiled_model_gives_the_eager_loss_and_gradients(tiny_vit, mode):
    torch._dynamo.reset()
    counters.clear()
    eager = MAE(backbone=tiny_vit, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)
    compiled = copy.deepcopy(eager)
    compiled.hparams.compile = mode
    compiled.configure_model()
    assert set(compiled.state_dict()) == set(eager.state_dict()), "checkpoint keys must not change"
    images, noise = torch.randn(4, 3, 16, 16), torch.rand(4, 16)
    loss_e, pred_e, _ = eager(images, noise=noise)
    loss_c, pred_c, _ = compiled(images, noise=noise)
    # a silent fall-back to eager would pass the comparisons below: the graphs must really exist
    assert counters["stats"]["unique_graphs"] >= 1
    assert torch.allclose(loss_c, loss_e, rtol=1e-5, atol=1e-6)
    assert torch.allclose(pred_c, pred_e, atol=1e-5)
    loss_e.backward()
    loss_c.backward()
    for (name, p_e), p_c in zip(eager.named_parameters(), compiled.parameters(), strict=True):
        assert torch.allclose(p_c.grad, p_e.grad, atol=1e-5, rtol=1e-4), name
