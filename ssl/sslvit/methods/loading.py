"""A whole method (encoder, decoder or heads) rebuilt from one of its Lightning checkpoints.

The class comes from the checkpoint's ``_class_path`` and must be one of sslvit's methods (nothing
else is imported), its ``__init__`` arguments from ``hyper_parameters``, its weights from
``state_dict``, all read with ``weights_only=True``.
"""

from __future__ import annotations

from pathlib import Path

from sslvit.checkpoints.info import CheckpointInfo
from sslvit.checkpoints.io import check_state_dict
from sslvit.checkpoints.loading import read_lightning_checkpoint
from sslvit.errors import CheckpointError
from sslvit.methods.base import SSLMethod
from sslvit.methods.beit import BEiT
from sslvit.methods.cpc import CPC
from sslvit.methods.mae import MAE

METHODS: dict[str, type[SSLMethod]] = {"MAE": MAE, "BEiT": BEiT, "CPC": CPC}
# Arguments that name files the weights were first made from; the checkpoint's own weights replace them.
SOURCE_FILE_ARGUMENTS = ("init_from",)


def method_class(class_path: str | None, source: str) -> type[SSLMethod]:
    """The sslvit method a checkpoint's ``_class_path`` names (``sslvit.methods.MAE``, ``sslvit.methods.mae.MAE``)."""
    name = (class_path or "").rsplit(".", 1)[-1]
    if not (class_path or "").startswith("sslvit.") or name not in METHODS:
        raise CheckpointError(
            f"{source} holds {class_path or 'a model without a class path'}, not one of sslvit's methods "
            f"({', '.join(METHODS)})"
        )
    return METHODS[name]


def load_method(path: str | Path, expected: type[SSLMethod] | None = None) -> tuple[SSLMethod, CheckpointInfo]:
    """Rebuild the method saved in ``path`` (eval mode, CPU). Returns it and the checkpoint's info.

    ``expected`` refuses a checkpoint of another method with an error naming both.
    """
    ckpt = read_lightning_checkpoint(path)
    cls = method_class(ckpt.class_path, str(path))
    if expected is not None and not issubclass(cls, expected):
        raise CheckpointError(f"{path} holds {ckpt.class_path} weights, but {expected.__name__} is needed here")
    hparams = {k: v for k, v in ckpt.hparams.items() if not k.startswith("_")}
    for key in SOURCE_FILE_ARGUMENTS:
        if key in hparams:
            hparams[key] = None
    model = cls(**hparams)
    check_state_dict(model.state_dict(), ckpt.state_dict, f"checkpoint {path}")
    model.load_state_dict(ckpt.state_dict)
    return model.eval(), ckpt.info()
