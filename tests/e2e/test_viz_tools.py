"""The figures and the export on a real (seconds-long) `sslvit fit` run, through the scripts in tools/."""

import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import TINY_CONFIGS, load_script, write_image_folder
from sslvit.checkpoints import load_backbone
from sslvit.cli import run_cli
from sslvit.viz.figure import GAP_PX, TITLE_PX
from sslvit.viz.plots import FIGURE_PX, read_metrics

TINY = TINY_CONFIGS["mae"]
CALLBACK = """
trainer:
  callbacks:
    - class_path: sslvit.viz.ReconstructionLogger
      init_args: {every_n_epochs: 1, num_images: 3, panel_px: 48}
"""


def tool(name: str):
    return load_script(f"tools/{name}.py")


def fit(run_dir, *configs):
    """Two epochs of three steps of the tiny MAE."""
    extra = [arg for config in configs for arg in ("--config", str(config))]
    run_cli(["fit", "--config", TINY, *extra, "--trainer.default_root_dir", str(run_dir), "--trainer.max_steps", "-1",
             "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "3"])  # fmt: skip
    return run_dir


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A real run with the reconstruction callback."""
    root = tmp_path_factory.mktemp("viz")
    (root / "callback.yaml").write_text(CALLBACK)
    return fit(root / "run", root / "callback.yaml")


def test_callback_writes_png_and_tensorboard_image_each_epoch(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    pngs = sorted((run / "reconstructions").glob("*.png"))
    assert [p.name for p in pngs] == ["epoch000-step0000003.png", "epoch001-step0000006.png"]
    width, height = Image.open(pngs[0]).size
    assert width == 4 * (48 + GAP_PX) + GAP_PX and height > TITLE_PX + 3 * (48 + GAP_PX)
    events = EventAccumulator(str(run), size_guidance={"images": 0})
    events.Reload()
    images = events.Images("reconstructions")
    assert [i.step for i in images] == [3, 6] and (images[0].width, images[0].height) == (width, height)
    # the same images and masks every time: only the model changed between the two grids
    first, second = np.asarray(Image.open(pngs[0])), np.asarray(Image.open(pngs[1]))
    rows = slice(TITLE_PX, TITLE_PX + 3 * (48 + GAP_PX))
    original, masked = slice(GAP_PX, GAP_PX + 48), slice(2 * GAP_PX + 48, 2 * GAP_PX + 2 * 48)
    assert np.array_equal(first[rows, original], second[rows, original])
    assert np.array_equal(first[rows, masked], second[rows, masked]), "the same masks at every epoch"
    reconstruction = slice(3 * GAP_PX + 2 * 48, 3 * GAP_PX + 3 * 48)
    assert not np.array_equal(first[rows, reconstruction], second[rows, reconstruction]), "the model changed"


def test_callback_leaves_training_unchanged(run, tmp_path):
    """It draws its own masks and touches no global random state: the run ends with the same weights."""
    plain = fit(tmp_path / "plain")
    with_callback = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    without = torch.load(plain / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert with_callback.keys() == without.keys()
    assert all(torch.equal(with_callback[k], without[k]) for k in without)


def test_plots_from_the_run_logs(run, tmp_path, capsys):
    from_csv, from_tensorboard = read_metrics(run, "csv"), read_metrics(run, "tensorboard")
    for name in ("train/loss", "train/lr", "val/loss"):
        assert np.allclose(from_csv[name].value, from_tensorboard[name].value), name
        assert np.array_equal(from_csv[name].step, from_tensorboard[name].step), name
        assert np.array_equal(from_csv[name].epoch, from_tensorboard[name].epoch), name
    assert list(from_csv["train/loss"].step) == [0, 1, 2, 3, 4, 5] and list(from_csv["val/loss"].epoch) == [0, 1]
    for source in ("auto", "tensorboard"):
        out = tmp_path / f"curves-{source}.png"
        tool("plot_metrics").main([str(run), "--output", str(out), "--source", source, "--x", "epoch"])
        assert Image.open(out).size == FIGURE_PX
    assert "train/loss (6)" in capsys.readouterr().out


def test_visualize_tools_on_the_run(run, tmp_path, capsys):
    checkpoint = str(run / "checkpoints" / "last.ckpt")
    out = tmp_path / "recon.png"
    tool("visualize_mae").main(["--checkpoint", checkpoint, "--num-images", "2", "--mask-ratio", "0.5",
                                "--panel-size", "64", "--output", str(out)])  # fmt: skip
    assert Image.open(out).size[0] == 4 * (64 + GAP_PX) + GAP_PX
    assert "2 images" in capsys.readouterr().out
    folder = write_image_folder(tmp_path / "images", size=20)  # resized and cropped to the model's 16px
    out = tmp_path / "features.png"
    tool("visualize_features").main(["--checkpoint", checkpoint, "--data-root", str(folder), "--num-images", "3",
                                     "--panel-size", "64", "--output", str(out)])  # fmt: skip
    assert Image.open(out).size[0] == (3 + 2) * (64 + GAP_PX) + GAP_PX  # image, PCA, mean, 2 heads
    assert "3 images at 16px" in capsys.readouterr().out


def test_export_of_a_real_run_round_trips_into_timm(run, tmp_path, capsys):
    checkpoint = run / "checkpoints" / "last.ckpt"
    tool("export").main(["--checkpoint", str(checkpoint), "--output", str(tmp_path / "exported")])
    assert "largest |timm - sslvit| feature difference 0.00e+00" in capsys.readouterr().out
    folder = tmp_path / "exported"
    config = json.loads((folder / "config.json").read_text())
    assert {"architecture", "model_args", "num_classes", "num_features"} <= set(config)
    assert all(not k.startswith(("decoder", "mask_token")) for k in load_file(folder / "model.safetensors"))
    model = timm.create_model(
        config["architecture"],
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(folder / "model.safetensors")),
        **config["model_args"],
    ).eval()
    ours, _ = load_backbone(checkpoint)
    images = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model.forward_features(images), ours.forward_features(images))
        assert torch.equal(model(images), ours(images))


@pytest.mark.parametrize("method,pooling", [("beit", "cls"), ("cpc", "mean")])
def test_export_of_real_beit_and_cpc_runs(method, pooling, tmp_path, capsys):
    """Real runs: BEiT's tokenizer buffers, mask token and code head, CPC's context networks and predictors."""
    run_cli(["fit", "--config", TINY_CONFIGS[method], "--trainer.default_root_dir", str(tmp_path / "run")])
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    folder = tmp_path / "exported"
    tool("export").main(["--checkpoint", str(checkpoint), "--output", str(folder), "--pooling", pooling])
    assert "largest |timm - sslvit| feature difference 0.00e+00" in capsys.readouterr().out
    ours, info = load_backbone(checkpoint)
    assert set(load_file(folder / "model.safetensors")) == set(ours.state_dict())
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    size = info.image_size  # CPC: whole images, not the patches its encoder trained on
    images = torch.randn(4, 3, size, size)
    with torch.no_grad():
        assert torch.equal(model(images), ours(images, pooling=pooling))


@pytest.mark.parametrize(
    "script,args,message",
    [
        ("visualize_mae", ["--mask-ratio", "1.2"], "mask_ratio must be in the open interval (0, 1), got 1.2"),
        ("visualize_mae", ["--image-size", "32"], "use --image-size 16"),
        ("visualize_features", ["--data-root", "/nonexistent"], "--data-root /nonexistent has no train/ or val/"),
        ("export", ["--image-size", "18"], "--image-size 18 is not a multiple of the patch size 4"),
    ],
)
def test_tool_errors_are_one_clear_line(run, tmp_path, capsys, script, args, message):
    checkpoint = str(run / "checkpoints" / "last.ckpt")
    with pytest.raises(SystemExit) as exit_info:
        tool(script).main(["--checkpoint", checkpoint, "--output", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and "Traceback" not in err, err
