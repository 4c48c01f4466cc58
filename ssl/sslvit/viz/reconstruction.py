"""MAE reconstructions: original | masked input | reconstruction | reconstruction with visible patches pasted back.

With ``norm_pix_loss`` the decoder predicts each patch normalized by its own mean and variance, so
its output must be un-normalized before it can be shown. Two choices (the figure says which):

- ``"patch"``: each patch with the mean/variance of the original patch, as the official MAE demo
  does. Hidden patches then get their true brightness and contrast from the image itself, which
  the model never saw: the figure looks better than what the model knows.
- ``"visible"``: visible patches with their own statistics, hidden ones with the mean/variance
  averaged over the visible patches of the same image: only what the encoder saw.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from matplotlib.figure import Figure

from sslvit.checkpoints.info import CheckpointInfo
from sslvit.checkpoints.io import safe_load
from sslvit.checkpoints.loading import is_sslvit_checkpoint
from sslvit.constants import IMAGENET_MEAN, IMAGENET_STD
from sslvit.data import SSLDataModule
from sslvit.errors import CheckpointError, ConfigError
from sslvit.methods.loading import load_method
from sslvit.methods.mae import MAE
from sslvit.nn.masking import num_kept, patchify, unpatchify
from sslvit.viz.figure import GREY, evenly_spaced_images, figure_to_array, image_grid, save_png, to_pixels

PatchStats = Literal["patch", "visible"]
PATCH_STATS = ("patch", "visible")
NORM_PIX_EPS = 1e-6  # the eps of sslvit.nn.losses.normalize_patches (a test checks that they agree)
COLUMN_TITLES = ("original", "masked input\n({} of {} hidden)", "reconstruction", "reconstruction +\nvisible patches")
STATS_NOTES = {
    "patch": "norm-pix predictions un-normalized with the mean/variance of each original patch (the official "
    "MAE demo's choice: hidden patches borrow their true brightness and contrast from the image).",
    "visible": "norm-pix predictions un-normalized with visible-patch statistics only: hidden patches get the "
    "mean/variance averaged over the visible patches of their image (what the encoder saw).",
}


def load_mae(
    path: str | Path, decoder_num_heads: int | None = None, norm_pix_loss: bool = True
) -> tuple[MAE, CheckpointInfo]:
    """A full MAE (encoder and decoder) in eval mode on the CPU, from an sslvit Lightning checkpoint or an
    official facebookresearch/mae ``.pth`` with its decoder (``decoder_num_heads`` and ``norm_pix_loss``
    describe the latter: see :meth:`sslvit.methods.MAE.from_official`).

    Returns the model and its checkpoint's info, whose image size is the model's, since the decoder's
    positions are fixed to its grid.
    """
    try:
        if Path(path).is_file() and not is_sslvit_checkpoint(safe_load(path)):
            model, info = MAE.from_official(path, decoder_num_heads, norm_pix_loss)
        else:
            model, info = load_method(path, expected=MAE)
    except CheckpointError as err:
        raise ConfigError(
            f"{err}: reconstructions need an MAE checkpoint with its decoder "
            "(feature maps work for every method: tools/visualize_features.py)"
        ) from None
    return model, replace(info, image_size=model.backbone_config.img_size)


def unnormalize_patches(
    pred: torch.Tensor, patches: torch.Tensor, mask: torch.Tensor | None = None, stats: PatchStats = "patch"
) -> torch.Tensor:
    """Map norm-pix predictions back to the space of ``patches``.

    Args:
        pred: [N, L, P] predictions of per-patch normalized values.
        patches: [N, L, P] the original patches (the model's input, patchified).
        mask: [N, L], 1 = hidden; needed for ``stats="visible"``.
        stats: ``"patch"`` uses every patch's own mean/variance (inverts
            :func:`sslvit.nn.losses.normalize_patches` exactly); ``"visible"`` gives hidden patches the
            mean/variance averaged over the visible patches of the same image.
    Returns:
        [N, L, P] ``pred * sqrt(var + eps) + mean``.
    """
    if stats not in PATCH_STATS:
        raise ConfigError(f"stats must be one of {PATCH_STATS}, got {stats!r}")
    mean = patches.mean(dim=-1, keepdim=True)  # [N, L, 1]
    var = patches.var(dim=-1, keepdim=True) + NORM_PIX_EPS
    if stats == "visible":
        if mask is None:
            raise ValueError("stats='visible' needs the mask")
        hidden = mask.bool().unsqueeze(-1)  # [N, L, 1]
        visible = (~hidden).to(patches.dtype)
        count = visible.sum(dim=1, keepdim=True).clamp_min(1.0)
        mean = torch.where(hidden, (mean * visible).sum(dim=1, keepdim=True) / count, mean)
        var = torch.where(hidden, (var * visible).sum(dim=1, keepdim=True) / count, var)
    return pred * var.sqrt() + mean


@dataclass
class Reconstruction:
    """The four columns of the figure, as displayable pixels [N, 3, H, W] in [0, 1], and how they were made."""

    original: torch.Tensor
    masked: torch.Tensor  # hidden patches filled with grey
    reconstruction: torch.Tensor  # the decoder's prediction for every patch
    pasted: torch.Tensor  # the prediction at hidden patches, the original pixels at visible ones
    mask: torch.Tensor  # [N, L], 1 = hidden
    loss: float  # the model's loss on these masks (masked patches; norm-pix space with norm_pix_loss)
    mask_ratio: float
    seed: int
    stats: PatchStats | None  # None: the model predicts pixels (norm_pix_loss off)

    def columns(self) -> list[torch.Tensor]:
        return [self.original, self.masked, self.reconstruction, self.pasted]


@contextmanager
def _evaluating(model: MAE, mask_ratio: float) -> Iterator[None]:
    """Eval mode and another mask ratio for the duration of the block; both restored afterwards."""
    was_training, old_ratio = model.training, model.mask_ratio
    model.eval()
    model.mask_ratio = mask_ratio
    try:
        yield
    finally:
        model.mask_ratio = old_ratio
        model.train(was_training)


@torch.no_grad()
def reconstruct(
    model: MAE,
    images: torch.Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    seed: int = 0,
    mask_ratio: float | None = None,
    stats: PatchStats = "patch",
) -> Reconstruction:
    """Mask ``images`` [N, C, H, W] (normalized with ``mean``/``std``) and reconstruct them.

    The masks come from ``seed`` alone (image i gets the same mask whatever N), so figures are
    reproducible; ``mask_ratio`` overrides the model's for this call.
    """
    size = model.backbone_config.img_size
    if tuple(images.shape[-2:]) != (size, size):
        raise ConfigError(
            f"the MAE was trained on {size}x{size} images and its decoder positions are fixed to that grid; "
            f"got {images.shape[-2]}x{images.shape[-1]}: use --image-size {size} (or leave it unset)"
        )
    if stats not in PATCH_STATS:
        raise ConfigError(f"stats must be one of {PATCH_STATS}, got {stats!r}")
    p, channels = model.patch_size, images.shape[1]
    grid = model.backbone.grid_of(images)
    n, length = images.shape[0], grid[0] * grid[1]
    ratio = model.mask_ratio if mask_ratio is None else mask_ratio
    num_kept(length, ratio)  # a clear error for a ratio that is out of range or hides every patch
    noise = torch.rand(n, length, generator=torch.Generator().manual_seed(seed)).to(images.device)
    param = next(model.parameters())
    with _evaluating(model, ratio), torch.autocast(images.device.type, enabled=False):
        loss, pred, mask = model(images.to(param.dtype), noise=noise)
    images, pred, mask = images.float(), pred.float(), mask.float()
    if model.norm_pix_loss:
        pred = unnormalize_patches(pred, patchify(images, p), mask, stats)
    original = to_pixels(images, mean, std)
    reconstruction = to_pixels(unpatchify(pred, p, grid, channels), mean, std)
    hidden = unpatchify(mask.unsqueeze(-1).expand(-1, -1, p * p * channels), p, grid, channels).bool()
    return Reconstruction(
        original=original.cpu(),
        masked=original.masked_fill(hidden, GREY).cpu(),
        reconstruction=reconstruction.cpu(),
        pasted=torch.where(hidden, reconstruction, original).cpu(),
        mask=mask.cpu(),
        loss=float(loss),
        mask_ratio=ratio,
        seed=seed,
        stats=stats if model.norm_pix_loss else None,
    )


def reconstruction_figure(result: Reconstruction, panel_px: int = 128, title: str | None = None) -> Figure:
    """One row per image, the four columns of :class:`Reconstruction` with titles and a note on how it was made."""
    hidden, total = int(result.mask[0].sum()), result.mask.shape[1]
    how = STATS_NOTES[result.stats] if result.stats else "The model predicts pixels (norm_pix_loss off)."
    note = (
        f"{title + ': ' if title else ''}seed {result.seed}, mask ratio {result.mask_ratio:g} ({hidden} of {total} "
        f"patches hidden per image), loss on hidden patches {result.loss:.4f}.\n{how}"
    )
    titles = [COLUMN_TITLES[0], COLUMN_TITLES[1].format(hidden, total), *COLUMN_TITLES[2:]]
    return image_grid(result.columns(), titles, panel_px=panel_px, note=note)


def send_image(loggers: Sequence[Logger], tag: str, image: np.ndarray, step: int) -> None:
    """An ``[H, W, 3]`` uint8 image to every logger that shows images: TensorBoard, W&B, MLflow."""
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(tag, image, step, dataformats="HWC")
        elif type(logger).__name__ == "WandbLogger":  # by name: wandb is an optional extra
            logger.log_image(key=tag, images=[image], step=step)
        elif type(logger).__name__ == "MLFlowLogger":
            logger.experiment.log_image(logger.run_id, image, key=tag, step=step)


class ReconstructionLogger(Callback):
    """Logs the reconstruction grid of fixed images with fixed masks every ``every_n_epochs`` training epochs.

    Each grid goes to ``<run dir>/<folder>/epoch<E>-step<S>.png`` (run dir = ``trainer.default_root_dir``)
    and, under ``tag``, to every TensorBoard, Weights & Biases and MLflow logger. The images are spread
    evenly over the data module's ``split`` with its evaluation transform (or, without an sslvit data module, the first
    validation batch). Only global rank 0 draws.

    In a config::

        trainer:
          callbacks:
            - class_path: sslvit.viz.ReconstructionLogger
              init_args: {every_n_epochs: 10, num_images: 8}
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        num_images: int = 8,
        seed: int = 0,
        mask_ratio: float | None = None,
        stats: PatchStats = "patch",
        split: Literal["train", "val"] = "val",
        panel_px: int = 96,
        folder: str = "reconstructions",
        tag: str = "reconstructions",
    ) -> None:
        super().__init__()
        if every_n_epochs < 1 or num_images < 1:
            raise ConfigError(
                f"ReconstructionLogger: every_n_epochs ({every_n_epochs}) and num_images ({num_images}) must be >= 1"
            )
        if stats not in PATCH_STATS:
            raise ConfigError(f"ReconstructionLogger: stats must be one of {PATCH_STATS}, got {stats!r}")
        self.every_n_epochs, self.num_images, self.seed, self.mask_ratio = every_n_epochs, num_images, seed, mask_ratio
        self.stats, self.split, self.panel_px, self.folder, self.tag = stats, split, panel_px, folder, tag
        self._images: tuple[torch.Tensor, tuple[float, ...], tuple[float, ...]] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not isinstance(pl_module, MAE):
            raise ConfigError(
                f"ReconstructionLogger needs an MAE model, got {type(pl_module).__name__}: remove the callback"
            )

    def fixed_images(self, trainer: L.Trainer) -> tuple[torch.Tensor, tuple[float, ...], tuple[float, ...]]:
        """(images [n, C, H, W] normalized, mean, std), chosen once and kept for the whole run."""
        if self._images is None:
            data = trainer.datamodule
            if isinstance(data, SSLDataModule):
                images = evenly_spaced_images(data.build_dataset(self.split, data.eval_transform()), self.num_images)
                self._images = images, data.mean, data.std
            else:
                loaders = trainer.val_dataloaders
                loader = loaders[0] if isinstance(loaders, list | tuple) else loaders
                if loader is None:
                    raise ConfigError("ReconstructionLogger needs an SSLDataModule or a validation dataloader")
                # sslvit's dicts, (images, labels) or bare images (not SSLMethod.unpack: it draws random keys)
                images = batch = next(iter(loader))
                if isinstance(batch, dict):
                    images = batch["images"]
                elif isinstance(batch, list | tuple):
                    images = batch[0]
                self._images = images[: self.num_images].cpu(), IMAGENET_MEAN, IMAGENET_STD
        return self._images

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        if (epoch + 1) % self.every_n_epochs or not trainer.is_global_zero:
            return
        images, mean, std = self.fixed_images(trainer)
        result = reconstruct(pl_module, images.to(pl_module.device), mean, std, self.seed, self.mask_ratio, self.stats)
        step = trainer.global_step
        fig = reconstruction_figure(result, self.panel_px, title=f"epoch {epoch}, step {step}")
        save_png(fig, Path(trainer.default_root_dir) / self.folder / f"epoch{epoch:03d}-step{step:07d}.png")
        send_image(trainer.loggers, self.tag, figure_to_array(fig), step)
