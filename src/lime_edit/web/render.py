"""Pictures the web demo shows, drawn with :mod:`lime_edit.viz` at one display size.

Every view of an image is drawn at :func:`display_size` of it, so a click at
pixel ``(x, y)`` of any view maps to the same localization-grid cell
(:func:`grid_cell`).  On top of ``viz`` this adds what only the demo needs:
segment numbers, faded segments outside the region, and the top-k attention
points.  Pure PIL/numpy; no Gradio here.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .. import viz


def display_size(size: tuple[int, int], min_side: int = 384, max_side: int = 768) -> tuple[int, int]:
    """``(w, h)`` at which views of an image of ``size = (w, h)`` are drawn: small
    images are scaled up (so segments are big enough to click), large ones down."""
    w, h = size
    long = max(w, h)
    scale = 1.0
    if long < min_side:
        scale = min_side / long
    elif long > max_side:
        scale = max_side / long
    return max(1, round(w * scale)), max(1, round(h * scale))


def grid_cell(x: float, y: float, view_size: tuple[int, int], grid: tuple[int, int]) -> tuple[int, int]:
    """``(row, col)`` of the grid cell under pixel ``(x, y)`` of a view of
    ``view_size = (w, h)``; ``grid = (H_g, W_g)``."""
    w, h = view_size
    gh, gw = grid
    row = min(max(int(y * gh / max(h, 1)), 0), gh - 1)
    col = min(max(int(x * gw / max(w, 1)), 0), gw - 1)
    return row, col


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def _base(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    image = image.convert("RGB")
    if image.size == size:
        return image
    # Nearest when scaling up: a small image's pixels stay visible as pixels.
    up = size[0] > image.size[0]
    return image.resize(size, Image.Resampling.NEAREST if up else Image.Resampling.LANCZOS)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType
        return ImageFont.load_default()


def _draw_points(img: Image.Image, points: np.ndarray, grid: tuple[int, int], limit: int = 200) -> None:
    """Rings at ``(row, col)`` cells of ``grid`` (the first ``limit`` points)."""
    draw = ImageDraw.Draw(img)
    w, h = img.size
    gh, gw = grid
    r = max(2, round(min(w, h) / 120))
    for row, col in np.asarray(points)[:limit]:
        cx, cy = (col + 0.5) * w / gw, (row + 0.5) * h / gh
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=(0, 255, 255), width=max(1, r // 2))


def view(image: Image.Image, size: tuple[int, int] | None = None) -> Image.Image:
    """The image itself at the display size."""
    return _base(image, size or display_size(image.size))


def roi_overlay(image: Image.Image, mask, size: tuple[int, int] | None = None,
                points=None, grid: tuple[int, int] | None = None) -> Image.Image:
    """The image with the region (``(H, W)`` bool on any grid) tinted and outlined;
    optional ``points`` (``(k, 2)`` ``(row, col)`` cells on ``grid``) as rings."""
    base = _base(image, size or display_size(image.size))
    if mask is None:
        return base
    m = _np(mask)
    dimmed = Image.composite(base, Image.blend(base, Image.new("RGB", base.size), 0.45),
                             viz.mask_image(m, base.size))
    img = viz.overlay(dimmed, m)
    if points is not None and grid is not None and len(points):
        _draw_points(img, _np(points), grid)
    return img


def segment_map(image: Image.Image, segments, selected, size: tuple[int, int] | None = None) -> Image.Image:
    """Segments in their ``viz.PALETTE`` colours over the image, the region
    (segments in ``selected``) outlined in white and the others faded, each
    segment numbered at the cell nearest its centre."""
    size = size or display_size(image.size)
    base = _base(image, size)
    labels = _np(segments).astype(np.int64)
    sel = np.isin(labels, np.asarray(sorted(int(v) for v in selected), dtype=np.int64))
    img = viz.segment_map(labels, size, image=base, alpha=0.65, mask=sel)
    faded = Image.blend(img, base.convert("L").convert("RGB"), 0.6)
    img = Image.composite(img, faded, viz.mask_image(sel, size))
    _number_segments(img, labels, {int(v) for v in selected})
    return img


def _number_segments(img: Image.Image, segments: np.ndarray, selected: set[int]) -> None:
    draw = ImageDraw.Draw(img)
    w, h = img.size
    gh, gw = segments.shape
    font = _font(max(10, round(min(w, h) / 28)))
    for label in np.unique(segments):
        rows, cols = np.nonzero(segments == label)
        i = int(np.argmin((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2))
        x, y = (cols[i] + 0.5) * w / gw, (rows[i] + 0.5) * h / gh
        fill = (255, 255, 255) if int(label) in selected else (200, 200, 200)
        draw.text((x, y), str(int(label)), fill=fill, font=font, anchor="mm",
                  stroke_width=2, stroke_fill=(0, 0, 0))


def heatmap(image: Image.Image, attention, size: tuple[int, int] | None = None,
            points=None) -> Image.Image:
    """The attention map (``(H_g, W_g)``) as a heatmap over the image, with the
    top-k ``points`` (grid cells) as rings."""
    size = size or display_size(image.size)
    att = _np(attention)
    img = viz.heatmap(att, size, image=_base(image, size), alpha=0.65)
    if points is not None and len(points):
        _draw_points(img, _np(points), att.shape)
    return img


def mask_image(mask, size: tuple[int, int]) -> Image.Image:
    """``(H, W)`` bool mask as an ``L`` image of ``size = (w, h)``; 255 = edit."""
    return viz.mask_image(_np(mask), size)
