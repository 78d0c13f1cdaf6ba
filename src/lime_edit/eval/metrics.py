"""Pure metric functions (no model loading, no files) and the EditVal decision rules.

Each function states the exact convention of the benchmark code it reproduces.
Images are PIL images or ``uint8`` arrays ``(H, W, 3)``; features are 1-D tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


# --------------------------------------------------------------------------- conversions
def to_unit_tensor(image: Image.Image | np.ndarray) -> torch.Tensor:
    """``(3, H, W)`` float32 in [0, 1] (torchvision's ``ToTensor`` of an RGB image)."""
    arr = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 image, got {arr.dtype} {arr.shape}")
    return torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1).float().div(255.0)


# --------------------------------------------------------------------------- MagicBrush
def _pair_for_distance(generated: Image.Image, ground_truth: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
    gen, gt = generated.convert("RGB"), ground_truth.convert("RGB")
    if gen.size != gt.size:
        # MagicBrush: ``gen_img.resize(gt_img.size)`` with PIL's default filter (bicubic).
        gen = gen.resize(gt.size)
    return to_unit_tensor(gen), to_unit_tensor(gt)


def l1_distance(generated: Image.Image, ground_truth: Image.Image) -> float:
    """MagicBrush L1: mean |gen - gt| over RGB in [0, 1], gen resized to gt's size."""
    a, b = _pair_for_distance(generated, ground_truth)
    return float(F.l1_loss(a, b))


def l2_distance(generated: Image.Image, ground_truth: Image.Image) -> float:
    """MagicBrush L2: mean squared error (``nn.MSELoss``, not a root), same convention as L1."""
    a, b = _pair_for_distance(generated, ground_truth)
    return float(F.mse_loss(a, b))


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two feature vectors, in float64 (as ``1 - scipy.spatial.distance.cosine``)."""
    a, b = a.reshape(-1).double(), b.reshape(-1).double()
    return float((a @ b) / (a.norm() * b.norm()))


def clip_score(image_features: torch.Tensor, text_features: torch.Tensor) -> float:
    """torchmetrics ``CLIPScore`` for one pair: ``max(100 * cos, 0)`` (PIE-Bench's CLIP similarity)."""
    return max(100.0 * cosine(image_features, text_features), 0.0)


# --------------------------------------------------------------------------- PIE-Bench
def masked_unit(image: np.ndarray, keep: np.ndarray) -> torch.Tensor:
    """``(1, 3, H, W)`` float32: the image in [0, 1] times ``keep`` (``(H, W)``, 1 = kept)."""
    t = to_unit_tensor(image)
    return (t * torch.from_numpy(np.asarray(keep, dtype=np.float32))[None]).unsqueeze(0)


def masked_uint8(image: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """``np.uint8(image * mask)``: PIE-Bench's input to CLIP for the "Edited" score."""
    return np.uint8(np.asarray(image) * np.asarray(keep, dtype=np.float64)[..., None])


def psnr(pred: torch.Tensor, target: torch.Tensor) -> float:
    """torchmetrics PSNR, ``data_range=1.0`` (``inf`` for identical inputs, as theirs)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    return float(peak_signal_noise_ratio(pred, target, data_range=1.0))


def ssim(pred: torch.Tensor, target: torch.Tensor) -> float:
    """torchmetrics SSIM, ``data_range=1.0``, gaussian kernel 11, sigma 1.5 (its defaults)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    return float(structural_similarity_index_measure(pred, target, data_range=1.0, gaussian_kernel=True,
                                                     sigma=1.5, kernel_size=11))


def mse(pred: torch.Tensor, target: torch.Tensor) -> float:
    """torchmetrics ``MeanSquaredError`` over every element."""
    from torchmetrics.functional.regression import mean_squared_error

    return float(mean_squared_error(pred.contiguous(), target.contiguous()))


def background_metrics(source: np.ndarray, edited: np.ndarray, edit_mask: np.ndarray,
                       lpips: Callable[[torch.Tensor, torch.Tensor], float] | None = None,
                       which: Sequence[str] = ("psnr", "lpips", "mse", "ssim")) -> dict[str, float]:
    """PIE-Bench background preservation ("unedit part").

    Both images in [0, 1] are multiplied by ``1 - edit_mask`` and compared over the
    *whole* image (zeros included), exactly as their scorer; when the background is
    empty every value is NaN (their ``"nan"``). ``lpips`` gets inputs in [-1, 1].
    Raw units: multiply LPIPS by 1e3, MSE by 1e4 and SSIM by 1e2 for the paper's table.
    """
    keep = 1.0 - np.asarray(edit_mask, dtype=np.float32)
    out: dict[str, float] = {}
    if keep.sum() == 0:
        return {k: math.nan for k in which}
    a, b = masked_unit(edited, keep), masked_unit(source, keep)
    if "psnr" in which:
        out["psnr"] = psnr(a, b)
    if "mse" in which:
        out["mse"] = mse(a, b)
    if "ssim" in which:
        out["ssim"] = ssim(a, b)
    if "lpips" in which:
        if lpips is None:
            raise ValueError("background_metrics: 'lpips' needs an lpips callable")
        out["lpips"] = float(lpips(a * 2 - 1, b * 2 - 1))
    return out


def self_similarity(keys: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``(N, N)`` cosine self-similarity of ``(N, D)`` token keys; the norm product is
    clamped at ``eps`` (Splice-ViT's ``attn_cosine_sim``)."""
    keys = keys.float()
    norm = keys.norm(dim=-1, keepdim=True)                  # (N, 1)
    factor = (norm @ norm.T).clamp_min(eps)                 # (N, N)
    return (keys @ keys.T) / factor                         # (N, N)


def structure_distance(sim_source: torch.Tensor, sim_edited: torch.Tensor) -> float:
    """PIE-Bench structure distance: MSE between the DINO key self-similarity
    matrices of source and edited image (x1e3 in the paper's table)."""
    if sim_source.shape != sim_edited.shape:
        raise ValueError(f"self-similarity shapes differ: {tuple(sim_source.shape)} vs "
                         f"{tuple(sim_edited.shape)} (source and edited image must have the same size)")
    return float(F.mse_loss(sim_edited.float(), sim_source.float()))


# --------------------------------------------------------------------------- EditVal rules
#: OWL-ViT score threshold (EditVal, "default from OWL-ViT paper").
OWL_THRESHOLD = 0.1
#: Position replacement: the object's centre must move by more than this many pixels
#: of the ORIGINAL image (EditVal's ``delta = 200``).
POSITION_DELTA = 200.0


@dataclass(frozen=True)
class Detection:
    """One OWL-ViT box: ``label`` = index of the query, ``box`` = (x0, y0, x1, y1) in pixels."""

    label: int
    score: float
    box: tuple[float, float, float, float]

    @property
    def center(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2.0, (y0 + y1) / 2.0

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.box
        return max(x1 - x0, 0.0) * max(y1 - y0, 0.0)

    def scaled(self, sx: float, sy: float) -> "Detection":
        x0, y0, x1, y1 = self.box
        return Detection(self.label, self.score, (x0 * sx, y0 * sy, x1 * sx, y1 * sy))


def best_detection(dets: Sequence[Detection], label: int, threshold: float = OWL_THRESHOLD
                   ) -> Detection | None:
    """The highest-scoring box of ``label`` with ``score >= threshold`` (EditVal kept
    the *last* such box in output order; see :mod:`lime_edit.eval.editval_rules`)."""
    cands = [d for d in dets if d.label == label and d.score >= threshold]
    return max(cands, key=lambda d: d.score) if cands else None


POSITIONS = {"left": "left", "right": "right", "top": "above", "above": "above", "up": "above",
             "over": "above", "below": "below", "bottom": "below", "under": "below", "beneath": "below",
             "underneath": "below", "down": "below"}
_ARTICLES = {"a", "an", "the", "some"}


def parse_positional(to: str) -> tuple[str, str | None]:
    """``to`` of a positional addition -> (object, position in {left, right, above,
    below} or None). EditVal took the first and last words; we take the first word
    that is not an article and the last word that names a position."""
    words = [w.strip(".,").lower() for w in to.split()]
    obj = next((w for w in words if w not in _ARTICLES and w not in POSITIONS), words[0] if words else "")
    pos = next((POSITIONS[w] for w in reversed(words) if w in POSITIONS), None)
    return obj, pos


def part_query(to: str) -> str:
    """Alter-parts ``to`` values read "add <part>": the detector is asked for the part."""
    t = to.strip()
    return t[4:].strip() if t.lower().startswith("add ") else t


def rule_object_addition(edited: Sequence[Detection]) -> int:
    """Queries ``[to, class]`` on the edited image: both present."""
    return int(best_detection(edited, 0) is not None and best_detection(edited, 1) is not None)


def rule_object_replacement(edited: Sequence[Detection]) -> int:
    """Queries ``[to, class]`` on the edited image: new object present, original gone."""
    return int(best_detection(edited, 0) is not None and best_detection(edited, 1) is None)


def rule_alter_parts(edited: Sequence[Detection]) -> int:
    """Queries ``[part, class]``: both present and the part's centre inside the
    object's box (boxes read as corners, which EditVal's code misread as centre/size)."""
    part, obj = best_detection(edited, 0), best_detection(edited, 1)
    if part is None or obj is None:
        return 0
    cx, cy = part.center
    x0, y0, x1, y1 = obj.box
    return int(x0 < cx < x1 and y0 < cy < y1)


def rule_positional_addition(edited: Sequence[Detection], position: str | None) -> int:
    """Queries ``[object, class]``: both present and the new object's centre on the
    asked side of the class's centre. Image y grows downwards, so "above" means a
    smaller y (EditVal's code had above/below inverted)."""
    add, obj = best_detection(edited, 0), best_detection(edited, 1)
    if add is None or obj is None or position is None:
        return 0
    (ax, ay), (ox, oy) = add.center, obj.center
    return int({"left": ax < ox, "right": ax > ox, "above": ay < oy, "below": ay > oy}[position])


def rule_position_replacement(original: Sequence[Detection], edited: Sequence[Detection], to: str,
                              scale: tuple[float, float] = (1.0, 1.0), delta: float = POSITION_DELTA) -> int:
    """Query ``[class]`` on both images: the object's centre moved left/right by more
    than ``delta`` pixels. ``scale`` maps edited-image pixels to original-image pixels."""
    a, b = best_detection(original, 0), best_detection(edited, 0)
    if a is None or b is None:
        return 0
    b = b.scaled(*scale)
    side = POSITIONS.get(to.strip().lower().split()[-1] if to.strip() else "", None)
    if side == "left":
        return int(b.center[0] < a.center[0] - delta)
    if side == "right":
        return int(b.center[0] > a.center[0] + delta)
    return 0


def rule_size(original: Sequence[Detection], edited: Sequence[Detection], to: str,
              scale: tuple[float, float] = (1.0, 1.0)) -> int:
    """Query ``[class]`` on both images: box area grew ("large"/"big") or shrank ("small")."""
    a, b = best_detection(original, 0), best_detection(edited, 0)
    if a is None or b is None:
        return 0
    b = b.scaled(*scale)
    t = to.strip().lower()
    if t in ("large", "big", "bigger", "larger"):
        return int(b.area > a.area)
    if t in ("small", "smaller", "tiny"):
        return int(b.area < a.area)
    return 0
