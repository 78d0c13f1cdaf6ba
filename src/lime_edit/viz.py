"""Pictures of what LIME did: mask, overlay, segment map, attention heatmaps.

Pure functions from masks/maps (torch tensors or numpy arrays on the
localization grid) to PIL images at a requested size; no file I/O and no
plotting library.  Sizes are PIL's ``(width, height)``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from PIL import Image

#: Fixed segment palette (Tableau 20 order: strong colours first), label ``i``
#: gets ``PALETTE[i % len(PALETTE)]``, so the same label has the same colour in
#: every picture.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
)

#: Heatmap colour stops (value, RGB), an "inferno"-like ramp: black -> purple ->
#: red -> orange -> pale yellow.
_HEAT_STOPS = ((0.0, (0, 0, 4)), (0.25, (87, 16, 110)), (0.5, (188, 55, 84)),
               (0.75, (249, 142, 9)), (1.0, (252, 255, 164)))


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().to("cpu")
        if str(x.dtype) in ("torch.bfloat16", "torch.float16"):
            x = x.float()
        x = x.numpy()
    arr = np.asarray(x)
    if arr.ndim != 2:
        arr = arr.squeeze()
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D map, got shape {arr.shape}")
    return arr


def _size_of(size: tuple[int, int] | None, arr: np.ndarray) -> tuple[int, int]:
    return (int(arr.shape[1]), int(arr.shape[0])) if size is None else (int(size[0]), int(size[1]))


def mask_image(mask: Any, size: tuple[int, int] | None = None) -> Image.Image:
    """A bool ``(H, W)`` mask as a black/white ``"L"`` image (255 = region),
    resized (nearest neighbour) to ``size = (width, height)``."""
    arr = _to_numpy(mask).astype(bool)
    img = Image.fromarray(np.where(arr, 255, 0).astype(np.uint8), "L")
    size = _size_of(size, arr)
    return img if img.size == size else img.resize(size, Image.Resampling.NEAREST)


def _contour(mask_l: Image.Image, width: int) -> Image.Image:
    """Inner contour (``"L"``, 255 on the boundary) of a binary ``"L"`` mask."""
    inside = np.asarray(mask_l) > 127
    arr = inside & ~_erode(inside, 2 * max(1, width) + 1)
    return Image.fromarray(np.where(arr, 255, 0).astype(np.uint8), "L")


def _erode(a: np.ndarray, k: int) -> np.ndarray:
    """Binary erosion by a ``k`` x ``k`` square, edges extended (what PIL's ``MinFilter(k)``
    gives), as two 1-D passes: O(pixels x k) where ``MinFilter`` is O(pixels x k^2), which took
    20 s on a 4000 px image."""
    from numpy.lib.stride_tricks import sliding_window_view

    r = k // 2
    rows = sliding_window_view(np.pad(a, ((0, 0), (r, r)), mode="edge"), k, axis=1).min(-1)
    return sliding_window_view(np.pad(rows, ((r, r), (0, 0)), mode="edge"), k, axis=0).min(-1)


def _line_width(size: tuple[int, int]) -> int:
    return max(1, round(min(size) / 256))


def overlay(image: Image.Image, mask: Any, color: tuple[int, int, int] = (255, 40, 40),
            alpha: float = 0.45, contour_color: tuple[int, int, int] | None = (255, 255, 0),
            contour_width: int | None = None) -> Image.Image:
    """The RGB ``image`` with the mask region tinted by ``color`` (opacity
    ``alpha``) and outlined by ``contour_color`` (``None`` = no outline). The mask
    may be on any grid; it is resized to the image (nearest)."""
    base = image.convert("RGB")
    m = mask_image(mask, base.size)
    tint = Image.new("RGB", base.size, color)
    blended = Image.blend(base, tint, float(alpha))
    out = Image.composite(blended, base, m)
    if contour_color is not None:
        edge = _contour(m, contour_width if contour_width is not None else _line_width(base.size))
        out.paste(Image.new("RGB", base.size, contour_color), mask=edge)
    return out


def segment_map(segments: Any, size: tuple[int, int] | None = None, image: Image.Image | None = None,
                alpha: float = 0.6, mask: Any | None = None,
                palette: Sequence[tuple[int, int, int]] = PALETTE) -> Image.Image:
    """Colour an ``(H, W)`` integer label map with the fixed ``palette``.

    size: output ``(width, height)`` (default: the image's size, else the grid's).
    image: when given, the colours are blended over it with opacity ``alpha``.
    mask: when given, the RoI (e.g. ``Localization.mask``) is outlined in white.
    """
    labels = _to_numpy(segments).astype(np.int64)
    lut = np.asarray(palette, dtype=np.uint8)
    colours = lut[np.mod(labels, len(lut))]
    out = Image.fromarray(colours, "RGB")
    size = _size_of(size if size is not None else (image.size if image is not None else None), labels)
    if out.size != size:
        out = out.resize(size, Image.Resampling.NEAREST)
    if image is not None:
        out = Image.blend(image.convert("RGB").resize(size), out, float(alpha))
    if mask is not None:
        edge = _contour(mask_image(mask, size), _line_width(size))
        out.paste(Image.new("RGB", size, (255, 255, 255)), mask=edge)
    return out


def colorize(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to ``(..., 3)`` uint8 RGB with the heatmap ramp."""
    v = np.clip(np.nan_to_num(values.astype(np.float64)), 0.0, 1.0)
    xs = np.array([s[0] for s in _HEAT_STOPS])
    rgb = [np.interp(v, xs, np.array([s[1][c] for s in _HEAT_STOPS], dtype=np.float64))
           for c in range(3)]
    return np.stack(rgb, axis=-1).round().astype(np.uint8)


def heatmap(attention: Any, size: tuple[int, int] | None = None, image: Image.Image | None = None,
            alpha: float = 0.6, normalize: bool = True) -> Image.Image:
    """An attention map (``(H, W)`` float) as a colour heatmap.

    The map is min-max normalised (``normalize=True``; a constant map is black),
    resized bilinearly to ``size`` (default: the image's size, else the grid's)
    and, when ``image`` is given, blended over it with opacity ``alpha``.
    """
    arr = _to_numpy(attention).astype(np.float32)
    if normalize:
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    size = _size_of(size if size is not None else (image.size if image is not None else None), arr)
    field = Image.fromarray(np.clip(arr, 0.0, 1.0).astype(np.float32), "F")
    if field.size != size:
        field = field.resize(size, Image.Resampling.BILINEAR)
    out = Image.fromarray(colorize(np.asarray(field)), "RGB")
    if image is not None:
        out = Image.blend(image.convert("RGB").resize(size), out, float(alpha))
    return out


def token_label(token: str) -> str:
    """A CLIP token string as a readable word (``"red</w>"`` -> ``"red"``)."""
    return token.replace("</w>", "").strip() or token


def token_heatmaps(localization: Any, image: Image.Image | None = None,
                   size: tuple[int, int] | None = None,
                   alpha: float = 0.6) -> list[tuple[int, str, Image.Image]]:
    """One heatmap per related token of a :class:`~lime_edit.results.Localization`:
    ``[(token_index, word, image), ...]`` in the order of ``token_indices``."""
    maps = localization.token_maps
    out = []
    for i, (idx, tok) in enumerate(zip(localization.token_indices, localization.tokens)):
        out.append((int(idx), token_label(tok), heatmap(maps[i], size=size, image=image, alpha=alpha)))
    return out


__all__ = ["PALETTE", "mask_image", "overlay", "segment_map", "heatmap", "colorize",
           "token_label", "token_heatmaps"]
