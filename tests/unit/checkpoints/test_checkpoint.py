import json
import pickle

import numpy as np
import pytest
import timm
import torch

from sslvit.checkpoints import export_backbone, load_backbone, safe_load
from sslvit.errors import CheckpointError
from sslvit.methods.mae import MAE
from sslvit.nn.backbone import VisionTransformer


class _RunsCode:
    """Unpickling this would create a file: a stand-in for a malicious checkpoint."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_that_runs_code_is_refused(tmp_path):
    marker, path = tmp_path / "pwned", tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _RunsCode(marker)}, path)
    with pytest.raises(CheckpointError, match="refused to load"):
        safe_load(path)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_backbone(path)
    assert not marker.exists(), "nothing in the file may be executed"
    with open(path, "wb") as f:  # the same in the legacy format: a bare pickle, not a zip archive
        pickle.dump({"payload": _RunsCode(marker)}, f, protocol=2)
    with pytest.raises(CheckpointError, match="refused to load .* could run arbitrary code"):
        safe_load(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "content",
    [
        np.random.default_rng(0).bytes(4096),  # torch's unpickler calls these "unsupported operand" bytes
        b"model weights: see https://example.org/weights\n" * 20,
        b"\x89PNG\r\n\x1a\n" + bytes(200),  # an image saved as .pth
    ],
    ids=["random-bytes", "text", "png"],
)
def test_a_file_that_is_no_checkpoint_is_called_so_not_unsafe(tmp_path, content):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as caught:
        safe_load(path)
    message = str(caught.value)
    assert f"{path} is not a checkpoint: it is neither a torch file (zip archive) nor a pickle" in message
    assert "arbitrary code" not in message and "truncated" not in message


def lightning_like_checkpoint(model: MAE, path):
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams), "global_step": 7}, path)


def test_backbone_from_method_checkpoint(tiny_vit, tmp_path):
    model = MAE(backbone=tiny_vit, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
    lightning_like_checkpoint(model, tmp_path / "m.ckpt")
    backbone, info = load_backbone(tmp_path / "m.ckpt")
    assert not backbone.training and info.source == "lightning"
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(backbone(images), model.backbone.eval()(images))


def test_unknown_architecture_is_a_clear_error(tmp_path):
    torch.save({"state_dict": {"encoder.w": torch.zeros(2)}, "hyper_parameters": {"lr": 0.1}}, tmp_path / "x.ckpt")
    with pytest.raises(CheckpointError, match="hyper_parameters have no 'backbone'"):
        load_backbone(tmp_path / "x.ckpt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pth")
    with pytest.raises(CheckpointError, match="matches none of the formats sslvit reads"):
        load_backbone(tmp_path / "plain.pth")
    with pytest.raises(FileNotFoundError):
        load_backbone(tmp_path / "missing.ckpt")


def test_mismatched_weights_are_listed(tiny_vit, tmp_path):
    model = MAE(backbone=tiny_vit, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
    state = model.state_dict()
    state["backbone.norm.weight"] = torch.ones(10)
    torch.save({"state_dict": state, "hyper_parameters": dict(model.hparams)}, tmp_path / "m.ckpt")
    with pytest.raises(CheckpointError, match=r"norm.weight: checkpoint \(10,\) vs model \(64,\)"):
        load_backbone(tmp_path / "m.ckpt")


def test_export_round_trips_into_timm_and_back(tiny_vit, tmp_path):
    backbone = VisionTransformer(tiny_vit).eval()
    folder = export_backbone(backbone, tmp_path / "exported")
    config = json.loads((folder / "config.json").read_text())
    reference = timm.create_model(
        config["architecture"],
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(folder / "model.safetensors"), custom_load=False),  # as docs/ say
        **config["model_args"],
    ).eval()
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(reference(images), backbone(images), atol=1e-5)
        assert config["num_features"] == 64 and reference.num_features == 64
        again, info = load_backbone(folder)
        assert info.source == "exported" and torch.equal(again(images), backbone(images))
