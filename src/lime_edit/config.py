"""One dataclass holds every LIME setting and its defaults.

"Reference" below means the LIME authors' public code (github enisimsar/LIME:
``pipeline.py``, ``utils.py`` and the ``lime.ipynb`` notebook).  Most defaults are
its values; where a default is the paper's or lime-edit's own choice, its
docstring says so (``top_k`` is the paper's 100, the notebook passes 1;
``kmeans_iters``, ``distance_threshold``, ``agglomerative_max_points`` and the
verb rule of ``drop_verbs`` are lime-edit's).  Step-dependent
settings are fractions of the schedule so that they mean the same thing at 30
steps (reference), 50 (PIE-Bench) or 100 (MagicBrush); layer choices are
*levels* relative to the latent grid (level ``L`` = a layer whose token grid is
``latent / L``), so they work for any image size and model.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Literal

#: editor families of :mod:`lime_edit.backbones` (here so that the CLI can list them without torch;
#: a test keeps it equal to ``backbones.FAMILIES``)
BACKBONE_NAMES = ("ip2p", "hive", "instructdiffusion", "sdxl-ip2p", "p2p", "kontext", "qwen-image-edit", "flux2")

Mode = Literal["penalize", "reward"]
Clustering = Literal["kmeans", "agglomerative"]
Schedule = Literal["two_pass", "single_pass"]
JointRule = Literal["text_mass", "literal"]
Preserve = Literal["none", "outside", "latent"]


@dataclass(frozen=True)
class LimeConfig:
    """All LIME settings (the reference code's values by default, except where noted).

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
        kmeans_iters: Lloyd iterations at most (stops early on convergence; ours,
            the reference runs cuML's K-means with its defaults).
        distance_threshold: cosine distance at which agglomerative clustering
            stops merging (paper tries 0.4-0.7; 0.5 is ours, the reference code
            has no agglomerative clustering).
        agglomerative_max_points: agglomerative clustering runs on an average-
            pooled grid of at most this many points, then every pixel joins its
            nearest cluster centre (full pairwise linkage on 16k pixels would need
            gigabytes).
        top_k: how many highest-attention pixels select segments, counted on
            the *reference grid* of 128x128 points (SD1.5's localization grid at
            512 px) and scaled by area to the actual localization grid:
            ``k = max(1, round(top_k * Hg * Wg / 128**2))`` (:meth:`top_k_for`),
            so the points cover the same share of the image at every size and on
            every model. At 512 px on SD1.5 (and 1024 px on SDXL) k is exactly
            ``top_k``; on a 96x96 grid (SD1.5 at 384 px) 100 gives 56, on the
            demo model's 32x32 grid 6. The default 100 is the paper's (and
            ``locate_points``' default; 0.61% of the grid); the reference
            notebook passes 1. The k used is recorded in
            ``Localization.top_k`` and ``EditResult.settings["top_k_points"]``.
        align_corners: corner convention of the bilinear upsampling of feature
            and attention maps to the localization grid, as in ``F.interpolate``.
            True (default) is the reference's: the corner pixels of a map land on
            the corner pixels of the grid. False (torch's default) aligns pixel
            areas instead: a 16x16 map's outer pixel centres land 3.5 pixels
            inside a 128x128 grid's border, and the map sits that much nearer
            the centre there.
        drop_verbs: drop the instruction's verbs ("make", "turn" ...) from the
            tokens that point at the RoI (reference: yes). The reference finds
            verbs with NLTK's part-of-speech tagger; lime-edit tells them by
            position and form (an imperative starts with its verb: "color the car
            red" drops "color", "change the color of ..." keeps it), offline; see
            :func:`lime_edit.tokens.verb_words`.
        localize_end_token: also average the end token's attention map into the
            localization map (when the instruction has a related word at all).
            The reference does so for most instructions, probably by accident:
            its NLTK tagger usually tags ``<|endoftext|>`` as a noun. Default True
            because it measured better on the synthetic benchmark (RoI IoU
            +0.008 over 200 scenes, other metrics unchanged; README); False
            localizes with the instruction's words only.

    Edit application (stage 2)
        mode: "penalize" unrelated tokens inside the RoI (paper, default) or
            "reward" related tokens (paper A.7.1: equal attention among them).
        joint_rule: on joint-attention transformers (FLUX.1 Kontext), where one
            softmax spans text AND image keys: "text_mass" (default) keeps the
            text block's total probability and moves the unrelated keys' share
            to the kept words, image keys unchanged; "literal" applies the
            paper's -inf to the joint logits, so most of the freed mass goes to
            image keys (see :mod:`lime_edit.joint`). Same result on U-Nets,
            whose cross-attention holds text keys only.
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
        penalize_punctuation: count punctuation tokens ("." "," "-" ...) as
            unrelated (reference: no, they are kept as "effective" tokens).
        layers: optional ``fnmatch`` patterns of attention-layer names (as in
            ``unet.attn_processors``, e.g. ``"up_blocks.*attn2*"``) that restrict
            both stages to those layers; a pattern matching no layer raises.
        schedule: "two_pass" (reference: a localization pass, then the edit pass
            from the same seed) or "single_pass" (one trajectory: plain steps up to
            the capture step, localize there, regularize the remaining steps; the
            cost of one IP2P run, not in the paper).

    Output (lime-edit's, not a LIME setting of the paper)
        preserve: "none" (default: the editor's output, as the paper) or
            "outside": the result is the input, pixel for pixel, outside the
            region LIME regularized (the RoI, or your mask), and the edited
            image inside it (a hard-edged composite at the input's size). LIME
            itself only guarantees that attention outside the RoI is untouched;
            the denoiser's other layers and the VAE still change those pixels.
            "latent" (the flow-matching transformers: kontext, qwen-image-edit,
            flux2): after every step the latents outside the region are put back on
            the input's own trajectory, so the result there is the input after the
            VAE round trip and the edit blends in without a seam.

    Processing size (lime-edit's, not a LIME setting of the paper)
        downscale_above: an input with more than ``downscale_above`` x the
            model's native pixel count (``unet.config.sample_size x
            vae_scale_factor`` squared: 512**2 for SD1.5 IP2P, 1024**2 for SDXL,
            64**2 for the demo model) is processed at the native pixel count,
            aspect ratio kept, and the result is resized back to the input's
            size; ``EditResult.warnings`` says so. Default 4.0: SD1.5 users'
            768 px photos (2.25x) run at their own size, a 12-megapixel photo
            runs at about 512x512 px instead of for many minutes at a size the
            model was never trained on. Inputs are never upscaled. 0 = off
            (always process at the input's size, rounded to the size multiple).
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
    align_corners: bool = True
    drop_verbs: bool = True
    localize_end_token: bool = True
    # stage 2: edit application
    mode: Mode = "penalize"
    joint_rule: JointRule = "text_mass"
    regularization_levels: tuple[int, ...] | None = None
    regularize_from: float = 0.0
    regularize_until: float = 27 / 30
    penalize_padding: bool = True
    penalize_end_token: bool = False
    penalize_punctuation: bool = False
    layers: tuple[str, ...] | None = None
    schedule: Schedule = "two_pass"
    # output
    preserve: Preserve = "none"
    # processing size
    downscale_above: float = 4.0

    def __post_init__(self) -> None:
        self._check_types()
        _check(1 <= self.num_inference_steps <= MAX_STEPS, "num_inference_steps", f"must be in 1..{MAX_STEPS}")
        _check(self.localization_steps is None or 1 <= self.localization_steps <= MAX_STEPS,
               "localization_steps", f"must be in 1..{MAX_STEPS} or None")
        _check(0.0 <= self.capture_at < 1.0, "capture_at", "must be in [0, 1)")
        for name in ("guidance_scale", "image_guidance_scale", "localization_guidance_scale"):
            _check(getattr(self, name) >= 0, name, "must be >= 0")
        for name in ("feature_levels", "regularization_levels"):
            if getattr(self, name) is None:
                continue
            levels = tuple(getattr(self, name))
            object.__setattr__(self, name, levels)
            _check(len(levels) > 0 and all(isinstance(v, int) and v >= 0 for v in levels), name,
                   f"must be a non-empty tuple of U-Net latent levels (1, 2, 4, ...) or transformer block "
                   f"indices (0, 1, ...), got {levels}")
        if self.layers is not None:
            _check(isinstance(self.layers, (str, tuple, list)), "layers",
                   f"must be None or a non-empty tuple of fnmatch patterns, got {self.layers!r}")
            layers = (self.layers,) if isinstance(self.layers, str) else tuple(self.layers)
            _check(len(layers) > 0 and all(isinstance(v, str) and v.strip() for v in layers), "layers",
                   f"must be None or a non-empty tuple of fnmatch patterns, got {self.layers!r}")
            object.__setattr__(self, "layers", layers)
        _check(self.out_scale is None or 1 <= self.out_scale <= MAX_OUT_SCALE, "out_scale",
               f"must be in 1..{MAX_OUT_SCALE} or None")
        _check(self.clustering in ("kmeans", "agglomerative"), "clustering",
               f"must be 'kmeans' or 'agglomerative', got {self.clustering!r}")
        _check(self.num_clusters >= 1, "num_clusters", "must be >= 1")
        _check(self.kmeans_iters >= 1, "kmeans_iters", "must be >= 1")
        _check(self.agglomerative_max_points >= 1, "agglomerative_max_points", "must be >= 1")
        _check(0.0 < self.distance_threshold <= 2.0, "distance_threshold", "must be in (0, 2]")
        _check(self.top_k >= 1, "top_k", "must be >= 1")
        _check(self.downscale_above == 0 or self.downscale_above >= 1, "downscale_above",
               f"must be 0 (off) or >= 1, got {self.downscale_above}")
        _check(self.mode in ("penalize", "reward"), "mode",
               f"must be 'penalize' or 'reward', got {self.mode!r}")
        _check(0.0 <= self.regularize_from <= 1.0, "regularize_from", "must be in [0, 1]")
        _check(0.0 <= self.regularize_until <= 1.0, "regularize_until", "must be in [0, 1]")
        _check(self.regularize_from <= self.regularize_until, "regularize_from",
               f"must be at most regularize_until ({self.regularize_until:g})")
        _check(self.joint_rule in ("text_mass", "literal"), "joint_rule",
               f"must be 'text_mass' or 'literal', got {self.joint_rule!r}")
        _check(self.preserve in ("none", "outside", "latent"), "preserve",
               f"must be 'none', 'outside' or 'latent', got {self.preserve!r}")
        _check(self.schedule in ("two_pass", "single_pass"), "schedule",
               f"must be 'two_pass' or 'single_pass', got {self.schedule!r}")

    def _check_types(self) -> None:
        """Field types: ints are ints (not bool, not str, not 2.5), floats are
        finite real numbers, flags are bools. numpy scalars are accepted and
        stored as Python numbers (the settings are written to JSON)."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kind = _FIELD_KINDS.get(f.name)
            if kind == "int" or (kind == "int?" and value is not None):
                _check(isinstance(value, numbers.Integral) and not isinstance(value, bool), f.name,
                       f"must be an int{' or None' if kind == 'int?' else ''}, got {_shown(value)}")
                object.__setattr__(self, f.name, int(value))
            elif kind == "float":
                _check(is_real(value), f.name,
                       f"must be a number, got {_shown(value)}")
                _check(math.isfinite(value), f.name, f"must be a finite number, got {value}")
                object.__setattr__(self, f.name, float(value))
            elif kind == "bool":
                _check(isinstance(value, (bool, _np_bool_types())), f.name,
                       f"must be True or False, got {_shown(value)}")
                object.__setattr__(self, f.name, bool(value))
            elif kind == "levels" and value is not None:   # None: the backbone's levels
                _check(isinstance(value, (tuple, list)) and all(
                    isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value), f.name,
                    f"must be a tuple of ints, got {_shown(value)}")
                object.__setattr__(self, f.name, tuple(int(v) for v in value))

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

    def top_k_for(self, grid: tuple[int, int]) -> int:
        """Points selected on a localization grid ``(Hg, Wg)``: ``top_k`` scaled by
        the grid's area relative to the 128x128 reference grid, at least 1 and at
        most every point (exactly ``top_k`` on a 128x128 grid)."""
        hg, wg = int(grid[0]), int(grid[1])
        k = round(self.top_k * hg * wg / TOP_K_REFERENCE_POINTS)
        return max(1, min(k, hg * wg))

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


#: Upper bounds that only catch typos (a schedule has 1000 training timesteps; the reference
#: localization grid is 2 x the latent grid): beyond them a run would fail deep inside.
MAX_STEPS = 10_000
MAX_OUT_SCALE = 16

#: Points of the reference localization grid ``top_k`` counts on: SD1.5's 128x128 at 512 px.
TOP_K_REFERENCE_POINTS = 128 * 128

#: How ``__post_init__`` type-checks each field ("int?" = int or None).
_FIELD_KINDS = {
    "num_inference_steps": "int", "localization_steps": "int?", "out_scale": "int?", "num_clusters": "int",
    "kmeans_iters": "int", "agglomerative_max_points": "int", "top_k": "int",
    "guidance_scale": "float", "image_guidance_scale": "float", "localization_guidance_scale": "float",
    "capture_at": "float", "distance_threshold": "float", "regularize_from": "float",
    "regularize_until": "float", "downscale_above": "float",
    "drop_verbs": "bool", "penalize_padding": "bool", "penalize_end_token": "bool",
    "penalize_punctuation": "bool", "localize_end_token": "bool", "align_corners": "bool",
    "feature_levels": "levels", "regularization_levels": "levels",
}

#: Seeds: ``torch.Generator.manual_seed`` takes 0 .. 2**64 - 1 (it would also take
#: negative numbers, but maps them onto that range, so -1 and 2**64 - 2 would be one
#: seed); negative seeds are refused.
SEED_MAX = 2**64 - 1


def check_seed(value: Any, name: str = "seed") -> int:
    """``value`` as a seed (an int in 0 .. 2**64 - 1); else a ``LimeEditError``
    naming ``name`` and the accepted range. Used by the API, the CLI and the web demo."""
    from .errors import LimeEditError

    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise LimeEditError(f"{name}: expected a whole number in 0..2**64-1, got {_shown(value)}")
    if not 0 <= int(value) <= SEED_MAX:
        raise LimeEditError(f"{name}: {int(value)} is out of range; seeds are whole numbers in "
                            f"0..2**64-1 (0..{SEED_MAX})")
    return int(value)


def _np_bool_types() -> tuple[type, ...]:
    import sys

    np = sys.modules.get("numpy")  # never import numpy just for this check
    return (np.bool_,) if np is not None else ()


def _shown(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def is_real(value: Any) -> bool:
    """A real number given as a number: not a bool (Python's or numpy's), not text."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, *_np_bool_types()))


def _check(ok: bool, name: str, msg: str) -> None:
    if not ok:
        raise ValueError(f"LimeConfig.{name} {msg}")


__all__ = ["LimeConfig", "Mode", "Clustering", "Schedule", "SEED_MAX", "TOP_K_REFERENCE_POINTS", "check_seed",
           "field"]
