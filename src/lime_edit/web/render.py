"""Pictures the web demo shows: RoI overlay, clickable segment map, attention heatmap.

Pure PIL/numpy on a :class:`~lime_edit.results.Localization`'s grids; no Gradio
here.  Every view is drawn at one *display size* (see :func:`display_size`) so
that a click at pixel ``(x, y)`` of any view maps to the same grid cell
(:func:`grid_cell`).  These are small local renderers; ``lime_edit.viz`` holds
the library's own overlays.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

#: Distinct colours for segment labels (Tableau-like); repeated past 16 labels.
PALETTE = np.array([
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
    (196, 156, 148),
], dtype=np.float32)

ROI_COLOUR = np.array((255, 64, 32), dtype=np.float32)

# A perceptually ordered dark-to-bright colour ramp (magma-like stops).
_RAMP = np.array([(0, 0, 4), (59, 15, 112), (140, 41, 129), (222, 73, 104),
                  (254, 159, 109), (252, 253, 191)], dtype=np.float32)


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
    row = int(np.clip(int(y * gh / max(h, 1)), 0, gh - 1))
    col = int(np.clip(int(x * gw / max(w, 1)), 0, gw - 1))
    return row, col


def _upsample_nearest(grid: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(H_g, W_g)`` array -> ``(h, w)`` by nearest neighbour; ``size = (w, h)``."""
    w, h = size
    gh, gw = grid.shape
    rows = np.minimum((np.arange(h) * gh) // h, gh - 1)
    cols = np.minimum((np.arange(w) * gw) // w, gw - 1)
    return grid[rows[:, None], cols[None, :]]


def _base(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(image.convert("RGB").resize(size, Image.Resampling.BICUBIC), dtype=np.float32)


def _edges(labels: np.ndarray) -> np.ndarray:
    """Bool ``(h, w)``: pixels whose right or lower neighbour has another label."""
    e = np.zeros(labels.shape, dtype=bool)
    e[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    e[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return e


def _to_image(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "RGB")


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType
        return ImageFont.load_default()


def roi_overlay(image: Image.Image, mask: np.ndarray | None, size: tuple[int, int] | None = None,
                points: np.ndarray | None = None, grid: tuple[int, int] | None = None) -> Image.Image:
    """The image with the RoI tinted red and outlined, the rest dimmed.

    mask: ``(H_g, W_g)`` bool (any grid), or None for the plain image.
    points: ``(k, 2)`` ``(row, col)`` cells on ``grid`` drawn as small rings.
    """
    size = size or display_size(image.size)
    base = _base(image, size)
    if mask is None:
        return _to_image(base)
    m = _upsample_nearest(np.asarray(mask, dtype=bool), size)
    out = np.where(m[..., None], 0.55 * base + 0.45 * ROI_COLOUR, 0.55 * base)
    out[_edges(m.astype(np.int8))] = (255, 255, 255)
    img = _to_image(out)
    if points is not None and grid is not None and len(points):
        _draw_points(img, np.asarray(points), grid)
    return img


def _draw_points(img: Image.Image, points: np.ndarray, grid: tuple[int, int], limit: int = 200) -> None:
    draw = ImageDraw.Draw(img)
    w, h = img.size
    gh, gw = grid
    r = max(2, round(min(w, h) / 120))
    for row, col in points[:limit]:
        cx, cy = (col + 0.5) * w / gw, (row + 0.5) * h / gh
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=(255, 255, 0), width=max(1, r // 2))


def segment_map(image: Image.Image, segments: np.ndarray, selected: list[int] | set[int],
                size: tuple[int, int] | None = None) -> Image.Image:
    """Each segment in its palette colour, numbered at its largest blob's centre.
    Segments in the RoI (``selected``) are drawn strongly; the others faded."""
    size = size or display_size(image.size)
    base = _base(image, size)
    labels = _upsample_nearest(np.asarray(segments, dtype=np.int64), size)
    colours = PALETTE[labels % len(PALETTE)]
    sel = np.isin(labels, np.asarray(sorted(selected), dtype=np.int64))
    grey = base.mean(axis=-1, keepdims=True)
    out = np.where(sel[..., None], 0.3 * base + 0.7 * colours, 0.7 * grey + 0.3 * colours)
    edge = _edges(labels)
    out[edge] = 40
    out[_edges(sel.astype(np.int8))] = (255, 255, 255)
    img = _to_image(out)
    _number_segments(img, np.asarray(segments, dtype=np.int64), set(int(s) for s in selected))
    return img


def _number_segments(img: Image.Image, segments: np.ndarray, selected: set[int]) -> None:
    draw = ImageDraw.Draw(img)
    w, h = img.size
    gh, gw = segments.shape
    font = _font(max(10, round(min(w, h) / 28)))
    for label in np.unique(segments):
        rows, cols = np.nonzero(segments == label)
        # The cell of this segment closest to its centroid (inside non-convex shapes).
        i = int(np.argmin((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2))
        x, y = (cols[i] + 0.5) * w / gw, (rows[i] + 0.5) * h / gh
        fill = (255, 255, 255) if int(label) in selected else (230, 230, 230)
        draw.text((x, y), str(int(label)), fill=fill, font=font, anchor="mm",
                  stroke_width=2, stroke_fill=(0, 0, 0))


def heatmap(image: Image.Image, attention: np.ndarray, size: tuple[int, int] | None = None,
            points: np.ndarray | None = None) -> Image.Image:
    """``attention`` (``(H_g, W_g)``, values in [0, 1]) as a colour ramp blended on
    the image; ``points`` (``(k, 2)`` grid cells) as rings."""
    size = size or display_size(image.size)
    base = _base(image, size)
    a = np.asarray(attention, dtype=np.float32)
    lo, hi = float(a.min()), float(a.max())
    a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    grid_img = Image.fromarray((a * 255).astype(np.uint8), "L").resize(size, Image.Resampling.BILINEAR)
    t = np.asarray(grid_img, dtype=np.float32) / 255.0 * (len(_RAMP) - 1)
    i = np.clip(t.astype(np.int64), 0, len(_RAMP) - 2)
    f = (t - i)[..., None]
    colour = (1 - f) * _RAMP[i] + f * _RAMP[i + 1]
    img = _to_image(0.35 * base + 0.65 * colour)
    if points is not None and len(points):
        _draw_points(img, np.asarray(points), a.shape)
    return img


def mask_image(mask: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """``(H_g, W_g)`` bool mask as an 8-bit ``L`` image of ``size = (w, h)``; 255 = edit."""
    m = _upsample_nearest(np.asarray(mask, dtype=bool), size)
    return Image.fromarray(m.astype(np.uint8) * 255, "L")
