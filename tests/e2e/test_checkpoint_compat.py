"""Checkpoints made through the public API keep loading: by name, by every path a class has had, and on resume."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY_CONFIGS
from sslvit.checkpoints import load_backbone
from sslvit.cli import run_cli
from sslvit.methods import CPC, MAE, BEiT, load_method

# The class paths configs use, and the module paths of the classes before the package was regrouped
# (sslvit/methods/beit.py and cpc.py became sub-packages).
SPELLINGS = {
    "mae": (MAE, ["sslvit.methods.MAE", "sslvit.methods.mae.MAE"]),
    "beit": (BEiT, ["sslvit.methods.BEiT", "sslvit.methods.beit.BEiT", "sslvit.methods.beit.method.BEiT"]),
    "cpc": (CPC, ["sslvit.methods.CPC", "sslvit.methods.cpc.CPC", "sslvit.methods.cpc.method.CPC"]),
}


@pytest.mark.parametrize("method", sorted(SPELLINGS))
def test_a_checkpoint_loads_under_every_class_path_and_resumes(method, tmp_path):
    cls, spellings = SPELLINGS[method]
    run = tmp_path / "run"
    run_cli(["fit", "--config", TINY_CONFIGS[method], "--trainer.default_root_dir", str(run)])
    last = run / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["_class_path"] == spellings[0], "the config's public name is what is stored"
    backbone = {k.removeprefix("backbone."): v for k, v in ckpt["state_dict"].items() if k.startswith("backbone.")}

    for spelling in spellings:
        ckpt["hyper_parameters"]["_class_path"] = spelling
        path = tmp_path / f"{spelling}.ckpt"
        torch.save(ckpt, path)
        for model in (load_method(path)[0], cls.load_from_checkpoint(path, map_location="cpu")):
            assert type(model) is cls
            state = model.state_dict()
            assert all(torch.equal(state[k], v) for k, v in ckpt["state_dict"].items()), spelling
        encoder, info = load_backbone(path)
        assert all(torch.equal(encoder.state_dict()[k], v) for k, v in backbone.items())

    steps = ckpt["global_step"]
    resumed = run_cli(["fit", "--config", TINY_CONFIGS[method], "--trainer.default_root_dir", str(run),
                       "--ckpt_path", "last", "--trainer.max_steps", str(steps + 1)])  # fmt: skip
    assert resumed.trainer.global_step == steps + 1
