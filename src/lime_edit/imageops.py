"""Pure PIL/tensor helpers for images and masks (no file I/O here)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from .errors import InputImageError, LimeEditError

#: Default limit on input pixels (about 16 megapixels); configurable everywhere.
DEFAULT_MAX_PIXELS = 4096 * 4096


def to_rgb(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Return an 8-bit RGB copy of any PIL image.

    EXIF orientation is applied; alpha (RGBA, LA, PA, P with transparency) is
    composited on ``background``; 16-bit and 32-bit greyscale ("I;16", "I", "F")
    are rescaled to 8 bits from their actual range; CMYK and YCbCr go through
    PIL's conversion.  diffusers would treat a 4-channel array as *latents*, so
    nothing with alpha may reach the pipeline.
    """
    if not isinstance(image, Image.Image):
        raise InputImageError(f"expected a PIL image, got {type(image).__name__}")
    image = ImageOps.exif_transpose(image) or image
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        hi = 65535.0 if mode.startswith("I;16") else max(float(arr.max()), 1.0)
        if mode in ("I", "F") and arr.max() <= 1.0 and arr.min() >= 0.0 and mode == "F":
            hi = 1.0
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, background + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    if mode == "RGB":
        return image.copy()
    return image.convert("RGB")


def check_size(image: Image.Image, max_pixels: int | None = DEFAULT_MAX_PIXELS, name: str = "image",
               min_side: int = 8) -> None:
    """Refuse an image under ``min_side`` pixels a side (8 for inputs; a mask may be 1x1:
    it is resized to its image) or above ``max_pixels`` (``None`` = no limit)."""
    w, h = image.size
    if w < min_side or h < min_side:
        raise InputImageError(f"{name}: {w}x{h} is too small (at least {min_side}x{min_side} pixels)")
    if max_pixels is not None and w * h > max_pixels:
        raise InputImageError(f"{name}: {w}x{h} = {w * h} pixels is above the limit of {max_pixels} "
                              "(raise --max-pixels or resize it)")


def processing_size(size: tuple[int, int], multiple: int) -> tuple[int, int]:
    """``(w, h)`` rounded to the nearest multiple of ``multiple`` (at least one)."""
    w, h = size
    return (max(multiple, int(round(w / multiple)) * multiple),
            max(multiple, int(round(h / multiple)) * multiple))


def downscaled_size(size: tuple[int, int], native_pixels: int, multiple: int,
                    factor: float) -> tuple[int, int] | None:
    """The processing size of an input far above a model's native size, or None.

    An input ``(w, h)`` with more than ``factor x native_pixels`` pixels is
    "far": it is scaled (aspect ratio kept) to about ``native_pixels`` pixels and
    rounded to ``multiple`` (:func:`processing_size`).  ``factor <= 0`` turns
    this off; smaller inputs (also those below the native size) give None: they
    are never upscaled.
    """
    w, h = size
    if factor <= 0 or native_pixels <= 0 or w * h <= factor * native_pixels:
        return None
    s = (native_pixels / (w * h)) ** 0.5
    return processing_size((w * s, h * s), multiple)


def mask_to_tensor(mask, name: str = "mask") -> torch.Tensor:
    """A user mask (PIL image, numpy array or tensor; any size; nonzero/bright =
    edit) as an ``(H, W)`` bool tensor. Colour and alpha images are read by their
    luminance (or alpha when the image is transparent); threshold 50%."""
    if isinstance(mask, Image.Image):
        if mask.width < 1 or mask.height < 1:
            raise LimeEditError(f"{name}: the mask has no pixels ({mask.width}x{mask.height})")
        try:
            if mask.mode == "PA" or "transparency" in mask.info:   # palette/keyed transparency: read as alpha
                mask = mask.convert("RGBA")
            if mask.mode in ("RGBA", "LA") and np.asarray(mask.getchannel("A")).min() < 255:
                arr = np.asarray(mask.getchannel("A"), dtype=np.float32) / 255.0
            else:
                arr = np.asarray(to_rgb(mask).convert("L"), dtype=np.float32) / 255.0
        except (ValueError, OSError) as err:          # a closed or truncated image
            raise LimeEditError(f"{name}: cannot read the image ({err})") from None
        t = torch.from_numpy(arr) >= 0.5
    elif isinstance(mask, (np.ndarray, torch.Tensor)):
        t = _mask_array(mask, name)
        if t.dtype != torch.bool:
            t = t.float()
            t = t > (0.5 * float(t.max()) if float(t.max()) > 1.0 else 0.5)
    else:
        raise LimeEditError(f"{name}: expected an image, array or tensor, got {type(mask).__name__}")
    return t.bool()


def _mask_array(mask, name: str) -> torch.Tensor:
    """An array or tensor mask as a 2-D CPU tensor: ``(H, W)``, or ``(H, W, C)`` / ``(C, H, W)``
    with 1, 3 or 4 channels (any channel set counts), or any of those with a leading batch of 1.
    Anything else is a ``LimeEditError``: guessing an axis would regularize the wrong pixels."""
    if isinstance(mask, torch.Tensor):
        if mask.layout != torch.strided or mask.device.type == "meta":
            raise LimeEditError(f"{name}: expected a dense tensor, got a {mask.layout} tensor on {mask.device}")
        t = mask.detach().cpu()
        if t.is_complex():
            raise LimeEditError(f"{name}: expected a bool or real-valued mask, got {t.dtype}")
    else:
        if mask.dtype.kind not in "biuf":
            raise LimeEditError(f"{name}: expected a bool or numeric array, got dtype {mask.dtype}")
        t = torch.from_numpy(np.array(mask, dtype=bool if mask.dtype.kind == "b" else np.float32))
    shape = tuple(t.shape)
    if t.numel() == 0:
        raise LimeEditError(f"{name}: the mask has no pixels (shape {shape})")
    if t.ndim == 4 and t.shape[0] == 1:
        t = t[0]
    if t.ndim == 3:
        if t.shape[-1] in (1, 3, 4):          # HWC, PIL's and numpy's layout, first
            t = t.amax(dim=-1) if t.dtype != torch.bool else t.any(dim=-1)
        elif t.shape[0] in (1, 3, 4):
            t = t.amax(dim=0) if t.dtype != torch.bool else t.any(dim=0)
    if t.ndim != 2:
        raise LimeEditError(f"{name}: expected a 2-D mask (H, W), or (H, W, C) / (C, H, W) with 1, 3 or 4 "
                            f"channels, got shape {shape}")
    return t


def stretch_notes(mask_wh: tuple[int, int], image_wh: tuple[int, int], what: str = "the mask") -> list[str]:
    """A note when a mask of ``mask_wh`` is stretched onto an image of another aspect ratio
    (more than 1 %): ``resize_mask`` fits it anyway, which the user should know."""
    (mw, mh), (w, h) = mask_wh, image_wh
    if (mw, mh) != (w, h) and min(mw, mh, w, h) > 0 and abs(mw / mh - w / h) > 0.01 * (w / h):
        return [f"{what} is {mw}x{mh} but the image is {w}x{h}: it was stretched to fit"]
    return []


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of an ``(H, W)`` bool mask to ``size = (h, w)``."""
    if tuple(mask.shape) == tuple(size):
        return mask
    out = F.interpolate(mask[None, None].float(), size=size, mode="nearest")
    return out[0, 0] > 0.5
