"""Labels by class name: every labelled split is indexed by the train split's class list.

Each split of a folder (or of shards written from one) lists its own classes, and a label is only a
position in that list: a ``val/`` that lacks one of ``train/``'s classes, or names its folders
differently, would shift every later label and score the wrong classes with no error. So the
labels of every labelled split are re-expressed in train's class list, by name, once, here:

- a class of the split that train lacks is a one-line error naming it (nothing could predict it);
- a train class the split lacks is allowed, recorded in ``missing_classes`` and warned about once;
- a dataset that carries labels but no class names cannot be aligned and is refused, unless it is
  the train split itself (whose labels define the list).

:meth:`sslvit.data.SSLDataModule.build_dataset` applies :func:`align_labels` to every ``train`` and
``val`` dataset it builds, so the tools, the online callbacks and fine-tuning all see one label map.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from sslvit.errors import ConfigError


class LabelWarning(UserWarning):
    """A labelled split lacks some of the train split's classes (its accuracy covers the others only)."""


def class_names(dataset: Any) -> list[str] | None:
    """A labelled dataset's class names in its own label order, or None when it names none."""
    classes = getattr(dataset, "classes", None)
    return [str(c) for c in classes] if classes else None


def align_labels(dataset: Any, train_classes: Sequence[str], where: str) -> Any:
    """Re-index ``dataset``'s labels (``targets``/``labels``/``samples``) into ``train_classes``, by name.

    ``where`` names the split for messages (e.g. ``val split of ImageFolder /data/val``). Returns the
    dataset, whose ``classes`` is then ``train_classes`` and ``missing_classes`` the train classes it
    has no sample of. Raises :class:`ConfigError` for a class that train lacks.
    """
    own = class_names(dataset)
    train_classes = [str(c) for c in train_classes]
    if own is None:
        raise ConfigError(
            f"the {where} has labels but records no class names, so they cannot be matched to the train split's "
            "classes by name; rewrite it with its class names (tools/make_shards.py records them)"
        )
    position = {name: i for i, name in enumerate(train_classes)}
    unknown = [name for name in own if name not in position]
    if unknown:
        shown = ", ".join(repr(n) for n in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        raise ConfigError(
            f"the {where} has {len(unknown)} class(es) that the train split lacks: {shown}. Labels are matched by "
            "class name, so these images could never be classified correctly; remove them, or add the class to "
            "train (a renamed class folder must have the same name in every split)"
        )
    mapping = np.array([position[name] for name in own], dtype=np.int64)
    if not np.array_equal(mapping, np.arange(len(own))):
        _relabel(dataset, mapping)
    present = set(_labels(dataset))
    dataset.classes = list(train_classes)
    dataset.class_to_idx = dict(position)
    dataset.missing_classes = [name for i, name in enumerate(train_classes) if i not in present]
    if dataset.missing_classes:
        shown = ", ".join(repr(n) for n in dataset.missing_classes[:10])
        warnings.warn(
            f"the {where} has no images of {len(dataset.missing_classes)} of the train split's "
            f"{len(train_classes)} classes ({shown}): its accuracy is over the classes it has",
            LabelWarning,
            stacklevel=3,
        )
    return dataset


def _labels(dataset: Any) -> list[int]:
    for name in ("targets", "labels"):
        values = getattr(dataset, name, None)
        if values is not None:
            return [int(v) for v in values]
    return [label for _, label in getattr(dataset, "samples", [])]


def _relabel(dataset: Any, mapping: np.ndarray) -> None:
    """Apply ``own label -> train label`` to every place a dataset keeps its labels (negative: unlabelled)."""

    def convert(label: int) -> int:
        return int(mapping[label]) if label >= 0 else label

    found = False
    for name in ("targets", "labels"):
        values = getattr(dataset, name, None)
        if values is not None:
            converted = [convert(int(v)) for v in values]
            if isinstance(values, np.ndarray):  # STL-10 keeps an array
                converted = np.asarray(converted, dtype=values.dtype)
            setattr(dataset, name, converted)
            found = True
    for name in ("samples", "imgs"):  # torchvision's ImageFolder reads its labels from here
        values = getattr(dataset, name, None)
        if values is not None:
            setattr(dataset, name, [(path, convert(label)) for path, label in values])
            found = True
    if not found:
        raise ConfigError(f"{type(dataset).__name__} keeps its labels where sslvit cannot re-index them by class name")
