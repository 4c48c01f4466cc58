"""Weights & Biases (offline) and MLflow (local file store) chosen in YAML: they get the metrics and the
reconstructions, and the run directory keeps metrics.csv for tools/plot_metrics.py."""

from __future__ import annotations

import csv

import pytest
import yaml

from conftest import TINY_CONFIGS, sslvit

pytestmark = pytest.mark.slow  # one `sslvit fit` with the W&B service started


def test_wandb_and_mlflow_get_metrics_and_images_and_metrics_csv_stays(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    store = f"file:{tmp_path / 'mlruns'}"
    loggers = {
        "trainer": {
            "logger": [
                {
                    "class_path": "lightning.pytorch.loggers.WandbLogger",
                    "init_args": {"project": "sslvit-test", "offline": True, "save_dir": str(tmp_path / "wandb")},
                },
                {
                    "class_path": "lightning.pytorch.loggers.MLFlowLogger",
                    "init_args": {"experiment_name": "sslvit-test", "tracking_uri": store},
                },
            ],
            "callbacks": [{"class_path": "sslvit.viz.ReconstructionLogger", "init_args": {"num_images": 2}}],
        }
    }
    (tmp_path / "loggers.yaml").write_text(yaml.safe_dump(loggers))
    run = tmp_path / "run"
    # W&B offline; MLflow 3 wants a database or a server, and accepts its local file store when asked explicitly
    offline = {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_DIR": str(tmp_path / "wandb"),
        "MLFLOW_ALLOW_FILE_STORE": "true",
    }
    out = sslvit("fit", "--config", TINY_CONFIGS["mae"], "--config", str(tmp_path / "loggers.yaml"),
                 "--trainer.default_root_dir", str(run), "--data.train_subset", "32", "--trainer.max_steps", "4",
                 env=offline)  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]

    with open(run / "metrics.csv") as file:  # the run directory's CSV is kept beside the configured loggers
        assert len([row for row in csv.DictReader(file) if row.get("train/loss")]) == 4
    assert len(list((run / "reconstructions").glob("*.png"))) == 2  # 2 epochs of 2 steps

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=store)
    (mlflow_run,) = client.search_runs([client.get_experiment_by_name("sslvit-test").experiment_id])
    assert len(client.get_metric_history(mlflow_run.info.run_id, "train/loss")) == 4
    images = [f.path for f in client.list_artifacts(mlflow_run.info.run_id, "images")]
    assert len(images) >= 2 and all("reconstructions" in path for path in images), images

    (wandb_run,) = (tmp_path / "wandb" / "wandb").glob("offline-run-*")
    assert len(list((wandb_run / "files" / "media" / "images").glob("reconstructions_*.png"))) == 2
    (log,) = wandb_run.glob("run-*.wandb")
    assert b"train/loss" in log.read_bytes()
