"""What a checkpoint says about its encoder besides the weights: where it came from and how its images were
prepared, with the defaults for what a format does not record in one place.

Every reader of a checkpoint (:func:`sslvit.checkpoints.load_backbone`, :func:`sslvit.methods.load_method`,
official MAE weights) returns a :class:`CheckpointInfo`; the evaluation tools, fine-tuning, export and the
figures take their defaults from it and build their data with :meth:`CheckpointInfo.eval_datamodule`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from sslvit.constants import IMAGENET_MEAN, IMAGENET_STD
from sslvit.data import SSLDataModule


@dataclass(frozen=True)
class CheckpointInfo:
    """Where an encoder came from and the preprocessing it expects.

    Attributes:
        source: the format it was read from: ``lightning`` (an sslvit run), ``exported`` (sslvit's export),
            ``timm-hub``, ``mae``, ``beit`` or ``timm`` (state dicts trained elsewhere).
        image_size: the size it is evaluated at (CPC: whole images, not the patches its encoder trained on).
        method: the class path of the sslvit method that trained it (``sslvit.methods.MAE``), or what the
            weights are (``official MAE``); None when unknown.
        global_step: the optimizer step it was saved at, when the checkpoint records it.
        mean, std: the normalization of its training data (ImageNet's when not recorded).
        eval_crop_fraction: the center crop of its evaluation transform (1.0: the whole image).
        native_pooling: weights trained elsewhere: their own feature (BEiT: the mean patch token, else CLS);
            an sslvit method's own is its class's :attr:`~sslvit.methods.base.SSLMethod.native_pooling`.
        dropped: parts of the file the encoder does not need (``{"MAE decoder": key count}``).
        has_decoder: official MAE weights: whether the decoder came with them (reconstructions need it).
        timm_arch: the timm model name the weights were read as (``--arch``, a timm hub folder).
        hparams: the method's ``__init__`` arguments (Lightning) or the export's ``config.json``.
        random_init: the architecture only, with freshly initialised weights (``--random-init``).
    """

    source: str
    image_size: int
    method: str | None = None
    global_step: int | None = None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    eval_crop_fraction: float = 1.0
    native_pooling: str = "cls"
    dropped: dict[str, int] = field(default_factory=dict)
    has_decoder: bool = False
    timm_arch: str | None = None
    hparams: dict[str, Any] = field(default_factory=dict)
    random_init: bool = False

    def __post_init__(self) -> None:
        # Lists in JSON and hyper-parameters; tuples here, as SSLDataModule and export take them.
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))

    def untrained(self) -> CheckpointInfo:
        """The same description for freshly initialised weights of the architecture (``--random-init``)."""
        return replace(self, random_init=True)

    def eval_datamodule(
        self,
        dataset: str,
        root: str | None = None,
        batch_size: int = 256,
        num_workers: int = 2,
        image_size: int | None = None,
    ) -> SSLDataModule:
        """A data module that prepares images as this encoder expects: its image size (unless ``image_size``),
        mean, std and evaluation crop. ``root``: the data folder (None: ``data``, for the built-in datasets)."""
        return SSLDataModule(
            dataset=dataset,
            root=root or "data",
            image_size=image_size or self.image_size,
            batch_size=batch_size,
            num_workers=num_workers,
            eval_crop_fraction=self.eval_crop_fraction,
            mean=self.mean,
            std=self.std,
        )
