"""The OnlineKNN callback in short fits, and its place in the shipped configs."""

import csv

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from conftest import REPO
from sslvit.data import SSLDataModule
from sslvit.errors import ConfigError
from sslvit.eval import OnlineKNN, OnlineLinearProbe
from sslvit.methods.mae import MAE
from sslvit.nn.backbone import VisionTransformer


def tiny_mae(tiny_vit):
    return MAE(backbone=tiny_vit, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2, warmup_steps=1)


def fit(tiny_vit, root, callbacks, image_folder, epochs=3, train_batches=2, validate=False):
    L.seed_everything(0)
    model = tiny_mae(tiny_vit)
    data = SSLDataModule(dataset="imagefolder", root=str(image_folder), image_size=16, batch_size=8, num_workers=0)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        limit_train_batches=train_batches,
        callbacks=callbacks,
        limit_val_batches=None if validate else 0,
        num_sanity_val_steps=0,
        logger=CSVLogger(root, name="", version=""),
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        log_every_n_steps=1,
    )
    trainer.fit(model, datamodule=data)
    return trainer, model


def test_logs_knn_top1_and_leaves_training_unchanged(tiny_vit, image_folder, tmp_path):
    callback = OnlineKNN(every_n_epochs=2, train_subset=15, k=5)
    trainer, model = fit(tiny_vit, tmp_path / "watched", [callback], image_folder)
    assert [h["epoch"] for h in callback.history] == [2, 3], "every 2 epochs, and after the last"
    assert "knn/top1" in trainer.progress_bar_metrics
    assert trainer.callback_metrics["knn/top1"].item() == pytest.approx(callback.history[-1]["top1"])
    assert 50 < callback.history[-1]["top1"] <= 100  # 3 colour classes: chance is 33%
    with open(tmp_path / "watched" / "metrics.csv") as f:
        logged = [row for row in csv.DictReader(f) if row.get("knn/top1")]
    assert [int(row["epoch"]) for row in logged] == [1, 2] and all(row["knn/top5"] for row in logged)
    assert model.backbone.training, "the callback leaves the model in train mode"
    # Evaluation draws no random numbers and restores modes: the same weights as without it.
    _, plain = fit(tiny_vit, tmp_path / "plain", [], image_folder)
    for (name, a), b in zip(plain.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("pooling", ["mean", "native"])
def test_compares_with_a_random_init_at_the_end_without_changing_training(
    tiny_vit, image_folder, tmp_path, caplog, pooling
):
    callback = OnlineKNN(every_n_epochs=2, train_subset=15, k=5, compare_random_init=True, seed=3, pooling=pooling)
    with caplog.at_level("INFO", logger="lightning.pytorch"):
        trainer, model = fit(tiny_vit, tmp_path / "compared", [callback], image_folder)
    baseline = trainer.callback_metrics["knn/random_init_top1"].item()
    # the very number a fresh encoder of the same architecture, seeded with `seed`, gets on its own
    torch.manual_seed(3)
    fresh = VisionTransformer(model.backbone.config)
    plain_pooling = model.native_pooling if pooling == "native" else pooling  # MAE's own feature is its CLS token
    same = OnlineKNN(train_subset=15, k=5, pooling=plain_pooling)
    assert baseline == pytest.approx(same.evaluate(fresh, trainer.datamodule)["top1"])
    trained = callback.history[-1]["top1"]
    assert f"{trained:.2f}%; a random initialisation of the same architecture: {baseline:.2f}%" in caplog.text
    _, plain = fit(tiny_vit, tmp_path / "plain", [], image_folder)
    for (name, a), b in zip(plain.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_clear_errors_before_training(tiny_vit, image_folder, tmp_path):
    trainer = L.Trainer(accelerator="cpu", max_steps=1, limit_val_batches=0, callbacks=[OnlineKNN()], logger=False)
    loader = DataLoader(TensorDataset(torch.randn(4, 3, 16, 16), torch.zeros(4)), batch_size=2)
    with pytest.raises(ConfigError, match="needs the trainer's datamodule to be an sslvit.data.SSLDataModule"):
        trainer.fit(tiny_mae(tiny_vit), train_dataloaders=loader)
    with pytest.raises(ConfigError, match="train_subset=5 must be at least k=20"):
        OnlineKNN(train_subset=5)
    with pytest.raises(ConfigError, match="pooling='token'"):
        fit(tiny_vit, tmp_path / "run", [OnlineKNN(pooling="token")], image_folder)


@pytest.mark.parametrize("config", ["quickstart.yaml", "cifar10_vit_tiny.yaml"])
def test_configs_turn_online_knn_on(config):
    settings = yaml.safe_load((REPO / "configs" / "mae" / config).read_text())
    (callback,) = [c for c in settings["trainer"]["callbacks"] if c["class_path"] == "sslvit.eval.OnlineKNN"]
    knn = OnlineKNN(**callback.get("init_args", {}))
    assert knn.every_n_epochs == settings["trainer"]["check_val_every_n_epoch"]


def test_callback_from_yaml_through_the_cli(tmp_path):
    from sslvit.cli import run_cli

    extra = tmp_path / "knn.yaml"
    extra.write_text(
        "trainer:\n  callbacks:\n    - class_path: sslvit.eval.OnlineKNN\n"
        "      init_args: {every_n_epochs: 5, train_subset: 50, k: 10}\n"
    )
    tiny = str(REPO / "tests" / "configs" / "mae_tiny.yaml")
    run = str(tmp_path / "run")
    cli = run_cli(["fit", "--config", tiny, "--config", str(extra), "--trainer.default_root_dir", run])
    assert "knn/top1" in cli.trainer.callback_metrics, "evaluated when max_steps ends training in epoch 1 of 5"
    assert "knn/top1" in (tmp_path / "run" / "metrics.csv").read_text()


def test_online_linear_probe_learns_on_train_batches_and_reports_val(tiny_vit, image_folder, tmp_path):
    probe = OnlineLinearProbe(pooling="mean", lr=0.5)
    trainer, model = fit(tiny_vit, tmp_path / "probed", [probe], image_folder, epochs=4, train_batches=3, validate=True)
    assert 60 < trainer.callback_metrics["online_linear/top1"].item() <= 100, "3 colour classes: chance is 33%"
    assert "online_linear/top1" in trainer.progress_bar_metrics
    with open(tmp_path / "probed" / "metrics.csv") as f:
        logged = [row for row in csv.DictReader(f) if row.get("online_linear/top1")]
    assert len(logged) == 4 and all(row["online_linear/top5"] for row in logged), "after every validation"
    _, plain = fit(tiny_vit, tmp_path / "plain", [], image_folder, epochs=4, train_batches=3, validate=True)
    for (name, a), b in zip(plain.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), f"{name}: the probe changed pretraining"
    # The head and its optimizer travel in checkpoints.
    resumed = OnlineLinearProbe(pooling="mean", lr=0.5)
    resumed.load_state_dict(probe.state_dict())
    resumed.setup(trainer, model, "fit")
    assert torch.equal(resumed.head[1].weight, probe.head[1].weight.cpu())


def test_no_gradient_reaches_the_backbone(tiny_vit, image_folder):
    model = tiny_mae(tiny_vit)
    data = SSLDataModule(dataset="imagefolder", root=str(image_folder), image_size=16, batch_size=8, num_workers=0)
    trainer = L.Trainer(accelerator="cpu", logger=False)
    trainer.datamodule = data  # what fit() attaches
    probe = OnlineLinearProbe(pooling="native")
    probe.setup(trainer, model, "fit")
    probe.on_fit_start(trainer, model)
    before = probe.head[1].weight.detach().clone()
    batch = {"images": torch.randn(8, 3, 16, 16), "labels": torch.tensor([0, 1, 2, -1, 0, 1, 2, 0])}
    probe.on_train_batch_end(trainer, model, None, batch, 0)
    assert all(p.grad is None for p in model.parameters()), "gradients stop at the detached features"
    assert not torch.equal(before, probe.head[1].weight) and model.backbone.training
