"""Image metrics for the synthetic benchmark (numpy/scipy only; images in [0, 1]).

* ``l1`` / ``l2``: mean absolute / squared error to the target over the whole
  image (MagicBrush style).
* ``bg_l1`` / ``bg_psnr`` / ``bg_ssim``: background preservation outside the
  ground-truth mask, against the *input* image (PIE-Bench style).  PSNR uses the
  background pixels' MSE, floored at 1e-10 (so an untouched background scores
  100 dB).  SSIM is computed on the whole image after the masked pixels are set
  to 0 in both images (PIE-Bench's convention), Gaussian window sigma 1.5.
* ``in_mask_l1``: mean absolute error to the target inside the mask.
* ``edit_success``: the mean colour of the edited object's fully covered pixels
  (mask eroded by one pixel) is nearest, among the named palette colours, to the
  requested colour.
"""

from __future__ import annotations

import numpy as np


def to_float(img) -> np.ndarray:
    return np.asarray(img.convert("RGB") if hasattr(img, "convert") else img, np.float64) / 255.0


def l1(a, b) -> float:
    return float(np.abs(a - b).mean())


def l2(a, b) -> float:
    return float(((a - b) ** 2).mean())


def masked_l1(a, b, m) -> float:
    if not m.any():
        return 0.0
    return float(np.abs(a - b)[m].mean())


def psnr_masked(a, b, m) -> float:
    if not m.any():
        return 100.0
    mse = float(((a - b) ** 2)[m].mean())
    return float(10 * np.log10(1.0 / max(mse, 1e-10)))


def ssim(a, b, sigma: float = 1.5) -> float:
    """Mean SSIM over pixels and channels (Wang et al. 2004, Gaussian window)."""
    from scipy.ndimage import gaussian_filter

    c1, c2 = 0.01 ** 2, 0.03 ** 2
    vals = []
    for ch in range(a.shape[2]):
        x, y = a[..., ch], b[..., ch]
        f = lambda z: gaussian_filter(z, sigma, truncate=3.5)  # noqa: E731  (11-pixel window)
        mx, my = f(x), f(y)
        sxx = f(x * x) - mx * mx
        syy = f(y * y) - my * my
        sxy = f(x * y) - mx * my
        s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
        vals.append(s.mean())
    return float(np.mean(vals))


def bg_ssim(a, b, m) -> float:
    keep = (~m)[..., None]
    return ssim(a * keep, b * keep)


def erode(m: np.ndarray) -> np.ndarray:
    from scipy.ndimage import binary_erosion

    e = binary_erosion(m, iterations=1)
    return e if e.any() else m


def edit_success(out, m, target_colour: str) -> bool:
    from .scenes import nearest_colour

    core = erode(m)
    return nearest_colour(out[core].mean(0) * 255.0) == target_colour


def iou(a: np.ndarray, b: np.ndarray) -> float:
    u = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / u) if u else 1.0


def roi_iou(roi, gt: np.ndarray) -> float:
    """IoU of a RoI on the localization grid (bool tensor or array) with the ground-truth
    mask ``gt`` at image size: the RoI is resized to ``gt``'s shape (nearest) first."""
    from PIL import Image

    m = roi.cpu().numpy() if hasattr(roi, "cpu") else np.asarray(roi)
    h, w = gt.shape
    pm = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize((w, h), Image.NEAREST)) > 0
    return iou(pm, gt)


def all_metrics(out, inp, target, m, target_colour: str) -> dict:
    """Every per-sample metric except RoI IoU and time."""
    bg = ~m
    return {"l1": l1(out, target), "l2": l2(out, target),
            "bg_l1": masked_l1(out, inp, bg), "bg_psnr": psnr_masked(out, inp, bg),
            "bg_ssim": bg_ssim(out, inp, m), "in_mask_l1": masked_l1(out, target, m),
            "edit_success": float(edit_success(out, m, target_colour))}
