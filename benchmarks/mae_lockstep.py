"""sslvit's MAE training loop and facebookresearch/mae's model trained in lockstep on the same inputs.

    python benchmarks/mae_lockstep.py --mae-repo /path/to/mae --data-root ../shared/data/cifar10 \\
        --steps 573 --warmup-steps 100 --train-images 10000 --output lockstep.json

Two training runs differ by their random draws (initial weights, data order, crops, masks) and by their
code. This separates the two: ``sslvit fit`` of the MAE config trains for ``--steps`` steps while a
callback records its initial weights and every batch as the model receives it (cropped, flipped,
normalized) with the samples' keys; then facebookresearch/mae's ``MaskedAutoencoderViT`` (from a local
checkout, ``official_mae.official_modules``) starts from the same weights and is trained on the same
batches with the same masks (the ones sslvit draws from the keys), the way their ``main_pretrain.py``
trains: AdamW betas (0.9, 0.95), ``lr = blr * batch / 256`` with linear warmup then cosine per step. The
weight-decay set is sslvit's (not on biases, norms, the CLS and mask tokens; the official code also
decays the two tokens), so that every remaining difference is one of code. Reported: the loss of every
step of both, the largest difference, and the kNN (k = 20, CLS) of both final encoders on the same bank and
queries, with sslvit's Faiss evaluator and with a plain torch one (cosine similarity, top k, exp(s / T) vote).
"""

from __future__ import annotations

import argparse
import json
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from harness import EvalSplit, machine, today
from official_mae import config_settings, official_modules
from sslvit.cli import run_cli
from sslvit.cli.parser import ToolParser
from sslvit.errors import one_line_errors
from sslvit.methods.mae import MASK_SALT
from sslvit.seeding import keyed_rand

REPO = Path(__file__).resolve().parents[1]


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(__file__, description=__doc__)
    parser.add_argument("--mae-repo", required=True, help="a checkout of facebookresearch/mae")
    parser.add_argument("--config", default="configs/mae/cifar10_vit_tiny.yaml", help="an sslvit MAE config")
    parser.add_argument("--data-root", required=True, help="an ImageFolder root with train/ and val/")
    parser.add_argument("--train-images", type=int, default=10000, help="class-balanced training subset and kNN bank")
    parser.add_argument("--steps", type=int, default=573)
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-dir", default="runs/mae-lockstep")
    parser.add_argument("--output", help="write the record as JSON here")
    parser.add_argument("fit_args", nargs="*", help="extra `sslvit fit` settings, after --")
    return parser


class Recorder(L.Callback):
    """The initial weights, every training batch as the model receives it with its keys, every loss."""

    def __init__(self) -> None:
        self.initial: dict[str, torch.Tensor] = {}
        self.batches: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.losses: list[float] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.initial = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, *args: Any) -> None:
        self.batches.append((batch["images"].detach().clone(), batch["keys"].clone()))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, *args: Any) -> None:
        self.losses.append(float(outputs["loss"]))


@contextmanager
def masks_from(noise: torch.Tensor):
    """The official model draws its mask noise with ``torch.rand(N, L)``: hand it ``noise`` [N, L] instead."""
    draw = torch.rand

    def given(*shape: Any, **kwargs: Any) -> torch.Tensor:
        return noise.clone() if tuple(shape) == tuple(noise.shape) else draw(*shape, **kwargs)

    torch.rand = given
    try:
        yield
    finally:
        torch.rand = draw


def official_replay(args: argparse.Namespace, recorded: Recorder, lr: float, decay_names: set[str]) -> Any:
    """facebookresearch/mae's model from sslvit's initial weights, trained on the recorded batches and masks."""
    from functools import partial

    models_mae, _ = official_modules(Path(args.mae_repo))
    s = config_settings(args.config)
    model = models_mae.MaskedAutoencoderViT(
        img_size=s["img_size"], patch_size=s["patch_size"], in_chans=3, embed_dim=s["embed_dim"], depth=s["depth"],
        num_heads=s["num_heads"], decoder_embed_dim=s["decoder_embed_dim"], decoder_depth=s["decoder_depth"],
        decoder_num_heads=s["decoder_num_heads"], mlp_ratio=s["mlp_ratio"],
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), norm_pix_loss=s["norm_pix_loss"],
    )  # fmt: skip
    model.load_state_dict({k.removeprefix("backbone."): v for k, v in recorded.initial.items()})
    named = list(model.named_parameters())
    groups = [{"params": [p for n, p in named if n in decay_names], "weight_decay": 0.05},
              {"params": [p for n, p in named if n not in decay_names], "weight_decay": 0.0}]  # fmt: skip
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))
    model.train()
    losses = []
    for step, (images, keys) in enumerate(recorded.batches):
        if step < args.warmup_steps:
            rate = lr * (step + 1) / args.warmup_steps
        else:
            progress = (step - args.warmup_steps) / max(1, args.steps - args.warmup_steps)
            rate = lr * 0.5 * (1.0 + math.cos(math.pi * progress))
        for group in optimizer.param_groups:
            group["lr"] = rate
        noise = keyed_rand(keys, (s["img_size"] // s["patch_size"]) ** 2, salt=MASK_SALT)
        with masks_from(noise):
            loss, _, _ = model(images, mask_ratio=s["mask_ratio"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return model.eval(), losses


def plain_knn(bank: Any, queries: Any, k: int = 20, temperature: float = 0.07) -> float:
    """Top-1 of a weighted kNN written in plain torch (no Faiss): cosine similarity, top k, exp(s / T) vote."""
    train, test = F.normalize(bank.features, dim=1), F.normalize(queries.features, dim=1)
    classes = int(bank.labels.max()) + 1
    similarity, index = (test @ train.T).topk(k, dim=1)
    votes = torch.zeros(len(test), classes).scatter_add_(1, bank.labels[index], (similarity / temperature).exp())
    return 100.0 * (votes.argmax(1) == queries.labels).double().mean().item()


def knn_of(model: torch.nn.Module, data_root: str, train_images: int) -> dict[str, float]:
    """kNN of an encoder's CLS token: sslvit's evaluator and the plain one, on the same bank and queries."""
    from sslvit.data import SSLDataModule
    from sslvit.eval import KNNClassifier, dataset_features

    data = SSLDataModule(dataset="imagefolder", root=data_root, image_size=model.config.img_size, batch_size=256)
    positions = EvalSplit("val", train_images=train_images).positions(data)
    (bank_split, bank_at), (query_split, query_at) = positions["bank"], positions["queries"]
    bank = dataset_features(model, data, bank_split, indices=bank_at, precision="fp32")
    queries = dataset_features(model, data, query_split, indices=query_at, precision="fp32")
    knn = KNNClassifier(ks=(20,), k=20).fit(bank.features, bank.labels)
    return {"knn_top1": knn.evaluate(queries.features, queries.labels).top1, "plain_knn_top1": plain_knn(bank, queries)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    with one_line_errors("mae_lockstep.py"):
        return lockstep(args)


def lockstep(args: argparse.Namespace) -> dict[str, Any]:
    from sslvit.checkpoints.loading import load_backbone
    from sslvit.nn.backbone import VisionTransformer
    from sslvit.optim import decays

    recorded = Recorder()
    cli = run_cli(["fit", "--config", args.config, "--data.dataset", "imagefolder", "--data.root", args.data_root,
                   "--data.train_subset", str(args.train_images), "--trainer.max_steps", str(args.steps),
                   "--trainer.max_epochs", "-1", "--model.init_args.warmup_steps", str(args.warmup_steps),
                   "--seed_everything", str(args.seed), "--trainer.callbacks", "[]",
                   "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false",
                   "--trainer.default_root_dir", args.run_dir, *args.fit_args], callbacks=[recorded])  # fmt: skip
    sslvit_model = cli.model
    decay_names = {n.removeprefix("backbone.") for n, p in sslvit_model.named_parameters() if decays(n, p)}
    official, losses = official_replay(args, recorded, sslvit_model.effective_lr(), decay_names)
    encoder = VisionTransformer(sslvit_model.backbone.config)
    encoder.load_state_dict({k: v for k, v in official.state_dict().items() if k in encoder.state_dict()})
    differences = [abs(a - b) for a, b in zip(recorded.losses, losses, strict=True)]
    record = {
        "steps": len(losses),
        "max_loss_difference": max(differences),
        "first_step_over_1e-4": next((i for i, d in enumerate(differences) if d > 1e-4), None),
        "final_loss": {"sslvit": recorded.losses[-1], "official": losses[-1]},
        "sslvit": knn_of(
            load_backbone(Path(args.run_dir) / "checkpoints" / "last.ckpt")[0], args.data_root, args.train_images
        ),  # fmt: skip
        "official": knn_of(encoder.eval(), args.data_root, args.train_images),
        "losses": {"sslvit": recorded.losses, "official": losses},
        "settings": {k: v for k, v in vars(args).items() if k != "fit_args"} | {"fit_args": args.fit_args},
        "machine": machine(),
        "date": today(),
    }
    ours, theirs = record["sslvit"], record["official"]
    print(f"{len(losses)} steps on the same inputs: largest loss difference {record['max_loss_difference']:.2e}; "
          f"kNN top-1 sslvit {ours['knn_top1']:.2f}% (plain {ours['plain_knn_top1']:.2f}%), "
          f"official {theirs['knn_top1']:.2f}% (plain {theirs['plain_knn_top1']:.2f}%)")  # fmt: skip
    if args.output:
        Path(args.output).write_text(json.dumps(record, indent=2) + "\n")
    return record


if __name__ == "__main__":
    main()
