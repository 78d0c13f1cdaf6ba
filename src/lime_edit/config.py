"""One dataclass holds every LIME setting; its defaults are the reference values.

Where the paper and the authors' reference notebook disagree, the default is the
reference code's value and the docstring names the paper's.  Step-dependent
settings are fractions of the schedule so that they mean the same thing at 30
steps (reference), 50 (PIE-Bench) or 100 (MagicBrush); layer choices are
*levels* relative to the latent grid (level ``L`` = a layer whose token grid is
``latent / L``), so they work for any image size and model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

#: editor families of :mod:`lime_edit.backbones` (here so that the CLI can list them without torch;
#: a test keeps it equal to ``backbones.FAMILIES``)
BACKBONE_NAMES = ("ip2p", "hive", "instructdiffusion", "sdxl-ip2p", "p2p")

Mode = Literal["penalize", "reward"]
Clustering = Literal["kmeans", "agglomerative"]
Schedule = Literal["two_pass", "single_pass"]


@dataclass(frozen=True)
class LimeConfig:
    """All LIME settings (reference values by default).

    Sampler
        num_inference_steps: denoising steps of the edit pass (reference 30).
        guidance_scale: text guidance of the edit pass (reference 2.0; plain IP2P
            is usually run at 7.5).
        image_guidance_scale: image guidance of both passes (reference 1.5).
        localization_guidance_scale: text guidance of the localization pass
            (reference 5.5).

    Localization (stage 1)
        localization_steps: length of the localization schedule; ``None`` uses
            ``num_inference_steps`` (reference). A shorter schedule is cheaper:
            only ``capture_step + 1`` U-Net evaluations are ever run.
        capture_at: fraction of the localization schedule at which features and
            cross-attention are captured; step index ``round(capture_at * steps)``
            (reference: step 10 of 30).
        feature_levels: latent-grid levels whose attention layers are read.
            ``None`` (default) = the backbone's choice relative to the levels the
            U-Net has (:mod:`lime_edit.backbones`): on SD1.x/SD2.x the reference
            code's 8x8, 16x16 and 32x32 grids of a 64x64 latent = (2, 4, 8); the
            paper says 16, 32 and 64 = (1, 2, 4).
        out_scale: the localization grid is ``out_scale`` x the latent grid.
            ``None`` = the backbone's choice (SD1.x/SD2.x: 2, the reference's 128
            for a 64 latent; SDXL: 1, 128 at 1024 px).
        clustering: "kmeans" (reference) or "agglomerative" (paper A.7.2).
        num_clusters: K of K-means (paper and reference: 8).
        kmeans_iters: Lloyd iterations at most (stops early on convergence).
        distance_threshold: cosine distance at which agglomerative clustering
            stops merging (paper tries 0.4-0.7).
        agglomerative_max_points: agglomerative clustering runs on an average-
            pooled grid of at most this many points, then every pixel joins its
            nearest cluster centre (full pairwise linkage on 16k pixels would need
            gigabytes).
        top_k: how many highest-attention pixels select segments (paper 100,
            reference notebook 1). On the ``out_scale`` grid.
        drop_verbs: drop instruction verbs ("make", "turn" ...) from the tokens
            that point at the RoI (reference code: yes).

    Edit application (stage 2)
        mode: "penalize" unrelated tokens inside the RoI (paper, default) or
            "reward" related tokens (paper A.7.1: equal attention among them).
        regularization_levels: levels whose cross-attention is regularized;
            ``None`` = the backbone's choice (SD1.x/SD2.x: the reference's grids
            larger than latent/4 = (1, 2)).
        regularize_from, regularize_until: fraction of the edit schedule during
            which regularization is active, ``[from, until)``
            (reference: steps 0..26 of 30 = 0.0 .. 0.9).
        penalize_padding: count padding positions (after the end token) as
            unrelated (reference: yes). CLIP's text encoder is causal, so padding
            embeddings carry the whole sentence; "False" keeps them.
        penalize_end_token: count the end token as unrelated (reference: no).
        layers: optional ``fnmatch`` patterns of attention-layer names (as in
            ``unet.attn_processors``, e.g. ``"up_blocks.*attn2*"``) that restrict
            both stages to those layers; a pattern matching no layer raises.
        schedule: "two_pass" (reference: a localization pass, then the edit pass
            from the same seed) or "single_pass" (one trajectory: plain steps up to
            the capture step, localize there, regularize the remaining steps; the
            cost of one IP2P run, not in the paper).
    """

    # sampler
    num_inference_steps: int = 30
    guidance_scale: float = 2.0
    image_guidance_scale: float = 1.5
    localization_guidance_scale: float = 5.5
    # stage 1: localization
    localization_steps: int | None = None
    capture_at: float = 10 / 30
    feature_levels: tuple[int, ...] | None = None
    out_scale: int | None = None
    clustering: Clustering = "kmeans"
    num_clusters: int = 8
    kmeans_iters: int = 100
    distance_threshold: float = 0.5
    agglomerative_max_points: int = 4096
    top_k: int = 100
    drop_verbs: bool = True
    # stage 2: edit application
    mode: Mode = "penalize"
    regularization_levels: tuple[int, ...] | None = None
    regularize_from: float = 0.0
    regularize_until: float = 27 / 30
    penalize_padding: bool = True
    penalize_end_token: bool = False
    layers: tuple[str, ...] | None = None
    schedule: Schedule = "two_pass"

    def __post_init__(self) -> None:
        _check(self.num_inference_steps >= 1, "num_inference_steps", "must be >= 1")
        _check(self.localization_steps is None or self.localization_steps >= 1,
               "localization_steps", "must be >= 1 or None")
        _check(0.0 <= self.capture_at < 1.0, "capture_at", "must be in [0, 1)")
        _check(self.guidance_scale >= 0 and self.image_guidance_scale >= 0
               and self.localization_guidance_scale >= 0, "guidance_scale", "must be >= 0")
        for name in ("feature_levels", "regularization_levels"):
            if getattr(self, name) is None:
                continue
            levels = tuple(getattr(self, name))
            object.__setattr__(self, name, levels)
            _check(len(levels) > 0 and all(isinstance(v, int) and v >= 1 and (v & (v - 1)) == 0
                                            for v in levels),
                   name, f"must be a non-empty tuple of powers of two (1, 2, 4, ...), got {levels}")
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(self.layers))
        _check(self.out_scale is None or self.out_scale >= 1, "out_scale", "must be >= 1 or None")
        _check(self.clustering in ("kmeans", "agglomerative"), "clustering",
               f"must be 'kmeans' or 'agglomerative', got {self.clustering!r}")
        _check(self.num_clusters >= 1, "num_clusters", "must be >= 1")
        _check(0.0 < self.distance_threshold <= 2.0, "distance_threshold", "must be in (0, 2]")
        _check(self.top_k >= 1, "top_k", "must be >= 1")
        _check(self.mode in ("penalize", "reward"), "mode",
               f"must be 'penalize' or 'reward', got {self.mode!r}")
        _check(0.0 <= self.regularize_from <= self.regularize_until <= 1.0, "regularize_until",
               "need 0 <= regularize_from <= regularize_until <= 1")
        _check(self.schedule in ("two_pass", "single_pass"), "schedule",
               f"must be 'two_pass' or 'single_pass', got {self.schedule!r}")

    # ---- derived step indices -------------------------------------------------
    @property
    def loc_steps(self) -> int:
        """Length of the localization schedule."""
        if self.schedule == "single_pass":
            return self.num_inference_steps
        return self.localization_steps or self.num_inference_steps

    @property
    def capture_step(self) -> int:
        """0-based index of the denoising step whose U-Net call is captured."""
        return min(round(self.capture_at * self.loc_steps), self.loc_steps - 1)

    def regularized_steps(self) -> range:
        """0-based edit-pass step indices during which attention is regularized."""
        n = self.num_inference_steps
        start = round(self.regularize_from * n)
        if self.schedule == "single_pass":
            start = max(start, self.capture_step + 1)
        return range(start, round(self.regularize_until * n))

    def replace(self, **overrides: Any) -> "LimeConfig":
        """A copy with some fields changed; unknown names raise ``ValueError``."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"unknown LIME setting(s): {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(names))}")
        return dataclasses.replace(self, **overrides)

    @classmethod
    def fast(cls, **overrides: Any) -> "LimeConfig":
        """A cheaper preset: a 10-step localization schedule captured at step 3
        (about the same noise level as step 10 of 30), so localization costs 4
        U-Net calls instead of 11."""
        base = dict(localization_steps=10, capture_at=0.3)
        base.update(overrides)
        return cls(**base)

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


def _check(ok: bool, name: str, msg: str) -> None:
    if not ok:
        raise ValueError(f"LimeConfig.{name} {msg}")


__all__ = ["LimeConfig", "Mode", "Clustering", "Schedule", "field"]
