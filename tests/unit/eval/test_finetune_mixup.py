"""Fine-tuning's mixup/cutmix: the soft targets belong to exactly the images the model is shown.

Every sample is a constant image whose channels are (a, a^2, a^3) with a = its index + 1. Whatever
mixing did, the pixels then say which partner was mixed into each output and with what weight: a
mixup output is one constant colour, lam * own + (1 - lam) * partner in every channel, which the
three powers resolve; a cutmix output holds the partner's exact values inside a box and its own
outside, lam being the area outside. The targets the loss receives must be those two samples' labels
(smoothed) with exactly that lam, whatever the labels are (here no label equals its index).
"""

from __future__ import annotations

import torch

from sslvit.eval import FineTune

N, CLASSES, SMOOTHING, SIZE = 8, 8, 0.1, 16
LABELS = torch.tensor([(3 * i + 1) % CLASSES for i in range(N)])  # a permutation, never the index


def constant_images() -> torch.Tensor:
    a = torch.arange(1, N + 1, dtype=torch.float32)
    colours = torch.stack([a, a**2, a**3], dim=1)  # [N, 3]
    return colours[:, :, None, None].expand(N, 3, SIZE, SIZE).clone()


def recover(mixed: torch.Tensor) -> tuple[list[int | None], list[float], str]:
    """For every output: the partner mixed in (None when nothing was), lam, and how (mixup, cutmix, none)."""
    partners, lams, kinds = [], [], set()
    for o, image in enumerate(mixed):
        own = float(o + 1)
        values = image[0].unique()
        if len(values) == 1 and abs(values.item() - own) < 1e-4:  # untouched
            partners.append(None), lams.append(1.0), kinds.add("none")
        elif len(values) == 1:  # mixup: one colour v_c = lam * own^c + (1 - lam) * b^c for c = 1, 2, 3
            v1, v2, v3 = (image[c, 0, 0].double().item() for c in range(3))
            b = (v2 - own**2) / (v1 - own) - own  # (v2 - a^2) / (v1 - a) = a + b
            partner = round(b) - 1
            assert abs(b - round(b)) < 1e-3, f"output {o}: not a mix of two samples ({v1}, {v2}, {v3})"
            lam = (v1 - b) / (own - b)
            assert abs(v3 - (lam * own**3 + (1 - lam) * b**3)) < 1e-3 * v3, f"output {o}: not a two-sample mix"
            partners.append(partner), lams.append(lam), kinds.add("mixup")
        else:  # cutmix: the partner's exact pixels inside one box, the output's own outside it
            inside = (image[0] - own).abs() > 1e-4  # [H, W]
            rows, cols = inside.any(dim=1).nonzero().flatten(), inside.any(dim=0).nonzero().flatten()
            box = torch.zeros_like(inside)
            box[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] = True
            assert torch.equal(inside, box), f"output {o}: the pasted pixels are not one box"
            pasted = image[:, inside].unique(dim=1)  # [3, 1]: one colour, a whole sample's
            assert pasted.shape[1] == 1, f"output {o}: the box holds several colours"
            b = pasted[0, 0].item()
            assert round(b) ** 2 == pasted[1, 0].item() and round(b) ** 3 == pasted[2, 0].item()
            assert torch.all(image[:, ~inside] == torch.tensor([own, own**2, own**3])[:, None])
            partners.append(round(b) - 1), lams.append(1.0 - inside.sum().item() / inside.numel())
            kinds.add("cutmix")
    assert len(kinds) == 1, f"one kind of mixing per batch, got {kinds}"
    return partners, lams, kinds.pop()


def smoothed(label: int) -> torch.Tensor:
    row = torch.full((CLASSES,), SMOOTHING / CLASSES)
    row[label] += 1.0 - SMOOTHING
    return row


def test_mixed_targets_are_the_recovered_partner_and_lambda(tiny_vit):
    model = FineTune(backbone=tiny_vit, num_classes=CLASSES, mixup=0.8, cutmix=1.0, label_smoothing=SMOOTHING)
    shown, targets = [], []
    model.register_forward_pre_hook(lambda module, args: shown.append(args[0].detach().clone()))
    model.train_loss.register_forward_pre_hook(lambda module, args: targets.append(args[1].detach().clone()))
    seen = set()
    for batch_number in range(24):  # each batch's draws follow its keys: mixup and cutmix both occur
        keys = torch.arange(N) + 1000 * batch_number
        model.batch_loss({"images": constant_images(), "labels": LABELS.clone(), "keys": keys})
        partners, lams, kind = recover(shown[-1])
        seen.add(kind)
        if kind == "none":
            expected = torch.stack([smoothed(int(LABELS[o])) for o in range(N)])
        else:
            assert all(partners[partners[o]] == o != partners[o] for o in range(N)), f"not pairs: {partners}"
            assert max(lams) - min(lams) < 1e-5, f"batch mode: one lam for the batch, got {lams}"
            expected = torch.stack(
                [
                    lams[o] * smoothed(int(LABELS[o])) + (1 - lams[o]) * smoothed(int(LABELS[partners[o]]))
                    for o in range(N)
                ]
            )
        assert torch.allclose(targets[-1], expected, atol=1e-5), (kind, partners, lams, targets[-1])
    assert {"mixup", "cutmix"} <= seen
