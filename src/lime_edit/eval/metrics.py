"""Pure metric functions (no model loading, no files) for MagicBrush and PIE-Bench.

The EditVal decision rules are in :mod:`lime_edit.eval.editval`.

Each function states the exact convention of the benchmark code it reproduces.
Images are PIL images or ``uint8`` arrays ``(H, W, 3)``; features are 1-D tensors.
"""

from __future__ import annotations

import math
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
