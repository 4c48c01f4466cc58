"""Contrastive Predictive Coding for images (van den Oord et al. 2018; CPC v2, Henaff et al. 2019).

Each image is cut into an overlapping G x G grid of patches; the shared ViT encodes every patch
on its own (a small image of side P) to one latent z[i, j]; a causal context network turns the
grid into c[i, j], which depends only on rows <= i; for each step k a linear map W_k predicts
z[i + k, j] from c[i, j], and InfoNCE scores that prediction against every latent of the batch
on every device (other positions and other images are the negatives).

Shapes: images [N, C, S, S]; patches [N, G, G, C, P, P]; latents z [N, G, G, D]; contexts
c [N, G, G, Dc]; the candidate bank [W * N * G * G, D] over W devices.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from sslvit.distributed import gather_with_grad
from sslvit.errors import ConfigError
from sslvit.methods.base import SSLMethod
from sslvit.methods.cpc.context import DIRECTIONS, CausalContext, Direction, orient
from sslvit.methods.cpc.patch_grid import PatchGrid, augment_patches
from sslvit.nn.backbone import ViTConfig
from sslvit.nn.losses import info_nce
from sslvit.seeding import keyed_rand, random_keys, sub_keys

PATCH_AUGMENT_SALT = 0x4350_43  # 'CPC': the stream of keyed random numbers used for patch augmentation


class CPC(SSLMethod):
    """CPC v2 on the shared ViT: the backbone's ``img_size`` is the patch side P.

    Args:
        backbone: the shared ViT, built for P px images (one patch); ``img_size: 8, patch_size: 4``
            encodes a 8 px patch as 2x2 tokens, and the same weights run on whole images later.
        image_size: side S of the images the data module delivers (``data.image_size``).
        patch_stride: pixels between neighbouring patch corners; default P // 2 (50% overlap, as
            in the paper). S - P must be a multiple of it. Presets (a 7x7 grid):
            32 px: 8 px patches, stride 4; 64 px: 16, stride 8; 224 px: 56, stride 28.
        patch_pooling: how the backbone's tokens of one patch become its latent: ``mean`` of
            the patch tokens or the ``cls`` token.
        context_dim, context_depth, context_heads: the causal context transformer (context_dim
            defaults to the backbone width).
        prediction_steps: K, the number of rows ahead that are predicted, each by its own W_k.
        skip_overlapping_steps: start at the first step whose target row shares no pixel with
            the context row (k >= P / stride, i.e. k = 2, 3, ..., K + 1 with 50% overlap);
            otherwise k = 1..K, where the k = 1 target overlaps the bottom row the context saw.
        directions: scan directions, each with its own context network and predictors;
            ``top_down`` is CPC, more give CPC v2's multi-directional prediction.
        temperature: divides the InfoNCE scores W_k c . z; default sqrt(D), the scaled dot product
            (the latents leave the backbone's LayerNorm with norm ~sqrt(D): with 1.0, CPC's plain
            bilinear score, the softmax starts saturated and the first loss is far above log(candidates)).
        normalize: score by cosine similarity instead; the default temperature is then 0.1.
        channel_drop_prob, hflip_prob: CPC v2 patch augmentation during training, drawn per patch
            (see :func:`sslvit.methods.cpc.patch_grid.augment_patches`).
        patches_per_chunk: encode the N*G*G patches this many at a time and, when gradients are
            needed, recompute each chunk's backbone activations in the backward pass instead of
            storing them (activation checkpointing of the whole patch encoder, one chunk at a time):
            activation memory is then that of one chunk, plus each patch's pixels and latent, at the
            cost of a second forward pass of the backbone. Loss and gradients are those of
            ``null`` (one pass over all patches, everything stored) up to float rounding.
        **kwargs: optimizer settings of :class:`~sslvit.methods.base.SSLMethod`.
    """

    def __init__(
        self,
        backbone: ViTConfig | None = None,
        image_size: int = 32,
        patch_stride: int | None = None,
        patch_pooling: Literal["mean", "cls"] = "mean",
        context_dim: int | None = None,
        context_depth: int = 2,
        context_heads: int = 4,
        prediction_steps: int = 3,
        skip_overlapping_steps: bool = False,
        directions: list[Direction] | tuple[Direction, ...] = ("top_down",),
        temperature: float | None = None,
        normalize: bool = False,
        channel_drop_prob: float = 0.5,
        hflip_prob: float = 0.5,
        patches_per_chunk: int | None = None,
        **kwargs,
    ) -> None:
        config = ViTConfig.from_dict(backbone) if backbone is not None else ViTConfig(img_size=8, patch_size=4)
        patch = config.img_size
        grid = PatchGrid(image_size, patch, patch_stride if patch_stride is not None else max(1, patch // 2))
        steps = self.prediction_steps_for(grid, prediction_steps, skip_overlapping_steps)
        directions = tuple(directions)
        self._check(patch_pooling, context_dim or config.dims[0], context_depth, context_heads, directions)
        if temperature is not None and temperature <= 0:
            raise ConfigError(f"model.temperature must be positive or null, got {temperature}")
        for key, value in (("channel_drop_prob", channel_drop_prob), ("hflip_prob", hflip_prob)):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"model.{key} must be a probability in [0, 1], got {value}")
        if patches_per_chunk is not None and patches_per_chunk < 1:
            raise ConfigError(
                f"model.patches_per_chunk must be a positive number of patches or null, got {patches_per_chunk}"
            )
        super().__init__(backbone=config, **kwargs)
        dim = self.backbone.embed_dim
        context_dim = context_dim or dim
        self.grid, self.steps, self.directions = grid, steps, directions
        self.patch_pooling, self.normalize = patch_pooling, normalize
        self.temperature = temperature if temperature is not None else (0.1 if normalize else dim**0.5)
        self.channel_drop_prob, self.hflip_prob = channel_drop_prob, hflip_prob
        self.patches_per_chunk = patches_per_chunk
        self.context = nn.ModuleDict(
            {d: CausalContext(dim, context_dim, context_depth, context_heads, grid.size) for d in directions}
        )
        # W_k: a linear map per direction and step, no bias (scores are z . W_k c).
        self.predictors = nn.ModuleDict(
            {d: nn.ModuleList(nn.Linear(context_dim, dim, bias=False) for _ in steps) for d in directions}
        )
        for predictors in self.predictors.values():
            for linear in predictors:
                nn.init.xavier_uniform_(linear.weight)

    @staticmethod
    def prediction_steps_for(grid: PatchGrid, count: int, skip_overlapping: bool) -> list[int]:
        """The steps k predicted: ``count`` consecutive row offsets, from 1 or from the first without overlap."""
        first = -(-grid.patch_size // grid.stride) if skip_overlapping else 1  # ceil(P / stride)
        steps = list(range(first, first + count))
        if count < 1 or steps[-1] >= grid.size:
            raise ConfigError(
                f"model.prediction_steps={count} (steps {steps}) needs steps in [1, {grid.size - 1}] on the "
                f"{grid.size}x{grid.size} patch grid, so that every step has a context row; use at most "
                f"{grid.size - first} (model.skip_overlapping_steps={skip_overlapping})"
            )
        return steps

    @staticmethod
    def _check(pooling: str, context_dim: int, depth: int, heads: int, directions: tuple[str, ...]) -> None:
        if pooling not in ("mean", "cls"):
            raise ConfigError(f"model.patch_pooling must be 'mean' or 'cls', got {pooling!r}")
        if depth < 1 or heads < 1 or context_dim % heads or context_dim % 4:
            raise ConfigError(
                f"model.context_dim={context_dim} must be divisible by model.context_heads={heads} and by 4, "
                f"and model.context_depth={depth} must be >= 1"
            )
        unknown = [d for d in directions if d not in DIRECTIONS]
        if not directions or unknown or len(set(directions)) != len(directions):
            raise ConfigError(
                f"model.directions must be distinct names from {list(DIRECTIONS)}, got {list(directions)}"
            )

    @property
    def input_size(self) -> int:
        """The data module delivers whole images; the backbone sees patches of them."""
        return self.grid.image_size

    input_size_key = "model.image_size"

    # ---- the model ----
    def encode_patches(self, images: torch.Tensor, augment_keys: torch.Tensor | None = None) -> torch.Tensor:
        """images [N, C, S, S] -> latents z [N, G, G, D], each patch encoded on its own by the backbone.

        With ``augment_keys`` [N] (the samples' random keys) every patch is augmented first, its
        flip and colour drop drawn from its image's key: reproducible, whatever the batch.
        """
        patches = self.grid.extract(images)  # [N, G, G, C, P, P]
        n, g = patches.shape[:2]
        flat = patches.reshape(n * g * g, *patches.shape[3:])  # [N*G*G, C, P, P]
        patch_keys = None
        if augment_keys is not None:
            draws = keyed_rand(augment_keys, g * g, 3, salt=PATCH_AUGMENT_SALT, device=images.device)  # [N, G*G, 3]
            flat = augment_patches(flat, self.channel_drop_prob, self.hflip_prob, draws.view(n * g * g, 3))
            patch_keys = sub_keys(augment_keys, g * g).view(-1)  # [N*G*G]: each patch's own stochastic depth
        return self.encode_flat_patches(flat, patch_keys).view(n, g, g, -1)

    def encode_flat_patches(self, patches: torch.Tensor, row_keys: torch.Tensor | None = None) -> torch.Tensor:
        """patches [M, C, P, P] -> latents [M, D], ``patches_per_chunk`` at a time (all at once when null).

        With gradients, each chunk runs under activation checkpointing: its forward keeps only its
        input and its latents, and the backward pass recomputes one chunk's activations at a time.
        ``row_keys`` [M]: each patch's key, which its stochastic depth is drawn from.
        """
        chunk = self.patches_per_chunk
        if chunk is None:
            return self.backbone(patches, pooling=self.patch_pooling, row_keys=row_keys)

        def encode(part: torch.Tensor, keys: torch.Tensor | None) -> torch.Tensor:
            return self.backbone(part, pooling=self.patch_pooling, row_keys=keys)

        parts = patches.split(chunk)
        chunks = zip(parts, row_keys.split(chunk) if row_keys is not None else [None] * len(parts), strict=True)
        if not torch.is_grad_enabled():
            return torch.cat([encode(part, keys) for part, keys in chunks])
        return torch.cat([checkpoint(encode, part, keys, use_reentrant=False) for part, keys in chunks])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Patch latents z [N, G, G, D] of un-augmented images."""
        return self.encode_patches(images)

    def grid_features(self, images: torch.Tensor) -> torch.Tensor:
        """Image features [N, D]: the mean of the un-augmented patch latents over the grid."""
        return self.encode_patches(images).mean(dim=(1, 2))

    # The encoder is trained on single patches, so its own image feature is the mean of the patch-grid
    # latents, each formed as in training; a whole image through the backbone is a different input.
    native_pooling = "patch_grid"

    def native_features(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, C, S, S] -> [N, D]: :meth:`grid_features`, the latents as training formed them."""
        return self.grid_features(images)

    def contexts(self, z: torch.Tensor, direction: Direction = "top_down") -> torch.Tensor:
        """Latents z [N, G, G, D] -> contexts [N, G, G, Dc] in the grid turned by ``orient(., direction)``."""
        return self.context[direction](orient(z, direction))

    # ---- the loss ----
    def compute_loss(self, images: torch.Tensor, keys: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """InfoNCE of every prediction W_k c[i, j] against all patch latents of the batch on all devices.

        ``loss`` and ``accuracy`` are means over directions and steps; ``accuracy_k<k>`` is the
        accuracy of step k (chance level: 1 / (devices x N x G x G)). Patches are augmented in
        training mode only, from the samples' ``keys`` [N] (fresh random keys when None).
        """
        if self.training and keys is None:
            keys = random_keys(images.shape[0])
        z = self.encode_patches(images, augment_keys=keys if self.training else None)  # [N, G, G, D]
        n, g = z.shape[:2]
        bank, offset = gather_with_grad(z.reshape(n * g * g, -1))  # [W*N*G*G, D]
        bank_row = offset + torch.arange(n * g * g, device=z.device).view(n, g, g)  # where z[., i, j] sits in the bank
        losses, accuracies = [], {k: [] for k in self.steps}
        for direction in self.directions:
            c = self.contexts(z, direction)  # [N, G, G, Dc], turned
            target_row = orient(bank_row, direction)  # [N, G, G], turned the same way
            for k, predictor in zip(self.steps, self.predictors[direction], strict=True):
                prediction = predictor(c[:, : g - k])  # from context rows 0..G-1-k: [N, G-k, G, D]
                out = info_nce(
                    prediction.reshape(-1, prediction.shape[-1]),
                    bank,
                    positive_index=target_row[:, k:].reshape(-1),  # the latent k rows further on
                    temperature=self.temperature,
                    normalize=self.normalize,
                )
                losses.append(out.loss)
                accuracies[k].append(out.accuracy)
        per_step = {f"accuracy_k{k}": torch.stack(v).mean() for k, v in accuracies.items()}
        return {
            "loss": torch.stack(losses).mean(),
            "accuracy": torch.stack(list(per_step.values())).mean(),
            **per_step,
        }
