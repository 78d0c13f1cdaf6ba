"""Result dataclasses returned by the task API (never state left on a pipeline)."""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from .errors import LimeEditError


@dataclass
class Localization:
    """What stage 1 found for one image.

    All maps live on the *localization grid*: ``out_scale`` x the latent grid,
    i.e. ``(H_g, W_g) = (out_scale * H / vae_scale, out_scale * W / vae_scale)``
    for a processed image of ``H x W`` pixels (128x128 for a 512 px SD input).

    mask: ``(H_g, W_g)`` bool, True = region of interest.
    segments: ``(H_g, W_g)`` int64 cluster label per pixel, ``0 .. num_segments-1``.
    attention: ``(H_g, W_g)`` float32, mean cross-attention of the related tokens,
        min-max normalised to [0, 1].
    token_maps: ``(n_tokens, H_g, W_g)`` float32, one raw (head- and layer-averaged)
        cross-attention map per entry of ``token_indices``.
    token_indices: positions into the tokenizer's ids (start token = 0) of the
        related tokens used for the RoI.
    tokens: the token strings at those positions.
    points: ``(k, 2)`` int64 ``(row, col)`` grid coordinates of the chosen
        highest-attention pixels (``k`` = ``top_k`` below).
    selected_segments: labels of the segments in the RoI.
    image_size: ``(width, height)`` of the processed image the maps refer to.
    top_k: the number of points selected on this grid: ``LimeConfig.top_k``
        scaled from the 128x128 reference grid (:meth:`LimeConfig.top_k_for`);
        0 when no related token was left.
    warnings: notes about this input (e.g. processed at the model's native size).
    """

    mask: torch.Tensor
    segments: torch.Tensor
    attention: torch.Tensor
    token_maps: torch.Tensor
    token_indices: list[int]
    tokens: list[str]
    points: torch.Tensor
    selected_segments: list[int]
    image_size: tuple[int, int]
    top_k: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def grid_size(self) -> tuple[int, int]:
        """``(H_g, W_g)``."""
        return tuple(self.mask.shape)  # type: ignore[return-value]

    @property
    def num_segments(self) -> int:
        return int(self.segments.max().item()) + 1 if self.segments.numel() else 0

    def with_segments(self, labels: list[int] | set[int]) -> "Localization":
        """A copy whose RoI is the union of the given segment labels (used by the
        web demo's click-to-refine; the segmentation itself is reused)."""
        present = set(int(v) for v in torch.unique(self.segments).tolist())
        try:
            bad = [v for v in labels if isinstance(v, bool) or not isinstance(v, numbers.Integral)
                   or int(v) not in present]
        except TypeError:
            raise LimeEditError(f"labels: expected a list of segment labels, got {type(labels).__name__}") from None
        if bad:
            raise LimeEditError(f"labels: {bad[0]!r} is not a segment label of this localization "
                                f"(labels: {', '.join(map(str, sorted(present)))})")
        labels = sorted(set(int(v) for v in labels))
        mask = torch.isin(self.segments, torch.tensor(labels, dtype=self.segments.dtype)) if labels \
            else torch.zeros_like(self.mask)
        return Localization(mask=mask, segments=self.segments, attention=self.attention,
                            token_maps=self.token_maps, token_indices=list(self.token_indices),
                            tokens=list(self.tokens), points=self.points,
                            selected_segments=labels, image_size=self.image_size, top_k=self.top_k,
                            warnings=list(self.warnings))


@dataclass
class EditResult:
    """One edited image.

    image: the edited image, RGB, at the size of the input image.
    mask: ``(H_g, W_g)`` bool mask that was regularized (None when LIME was off or
        fell back to plain IP2P).
    localization: stage-1 output when the mask was found automatically.
    lime_applied: False when the edit is plain IP2P (asked for, or a fallback).
    warnings: human-readable notes (fallbacks, truncation) for logs and JSON.
    seed: the seed both passes used.
    timings: seconds per stage: "localize", "edit", "total".
    settings: the LimeConfig used, as a dict, plus ``"backbone"``, ``"top_k_points"``
        (the points ``top_k`` gives on this localization grid) and ``"processed_size"``
        (``[width, height]`` the model ran at).
    """

    image: Image.Image
    mask: torch.Tensor | None
    localization: Localization | None
    lime_applied: bool
    seed: int
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
