"""lime_edit.viz: pure picture functions (sizes, palette, contour, heatmaps)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lime_edit import viz
from lime_edit.results import Localization


def _loc() -> Localization:
    seg = torch.zeros(16, 16, dtype=torch.int64)
    seg[:, 8:] = 1
    seg[8:, :] = 2
    mask = seg == 1
    maps = torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(0))
    return Localization(mask=mask, segments=seg, attention=maps.mean(0), token_maps=maps,
                        token_indices=[3, 4], tokens=["red</w>", "car</w>"],
                        points=torch.zeros(5, 2, dtype=torch.int64), selected_segments=[1],
                        image_size=(32, 32))


def test_mask_image_resizes_nearest_to_any_size():
    loc = _loc()
    m = viz.mask_image(loc.mask, (45, 30))
    assert m.mode == "L" and m.size == (45, 30)
    arr = np.asarray(m)
    assert set(np.unique(arr)) == {0, 255}
    assert arr[0, -1] == 255 and arr[0, 0] == 0 and arr[-1, -1] == 0


def test_overlay_tints_region_and_draws_contour():
    img = Image.new("RGB", (64, 48), (0, 0, 255))
    mask = np.zeros((12, 16), bool)
    mask[3:9, 4:12] = True
    out = viz.overlay(img, mask, color=(255, 0, 0), alpha=0.5, contour_color=(0, 255, 0))
    a = np.asarray(out)
    assert out.size == img.size and out.mode == "RGB"
    assert tuple(a[0, 0]) == (0, 0, 255)            # outside untouched
    assert np.abs(a[24, 32].astype(int) - (128, 0, 128)).max() <= 1  # inside tinted
    assert (a[..., 1] == 255).sum() > 0              # contour present
    assert tuple(a[12, 32]) == (0, 255, 0)           # on the top edge of the region
    plain = np.asarray(viz.overlay(img, mask, color=(255, 0, 0), contour_color=None))
    assert (plain[..., 1] == 0).all()


def test_segment_map_fixed_palette_and_outline():
    loc = _loc()
    out = viz.segment_map(loc.segments, (32, 32))
    a = np.asarray(out)
    assert tuple(a[0, 0]) == viz.PALETTE[0] and tuple(a[0, 31]) == viz.PALETTE[1]
    assert tuple(a[31, 0]) == viz.PALETTE[2]
    many = viz.segment_map(np.arange(25).reshape(5, 5))  # labels past the palette cycle
    assert tuple(np.asarray(many)[4, 0]) == viz.PALETTE[20 % len(viz.PALETTE)]
    outlined = np.asarray(viz.segment_map(loc.segments, (32, 32), mask=loc.mask))
    assert (outlined == 255).all(-1).sum() > 0
    blended = viz.segment_map(loc.segments, image=Image.new("RGB", (20, 10)))
    assert blended.size == (20, 10)


def test_heatmaps():
    loc = _loc()
    h = viz.heatmap(loc.attention, (40, 24))
    assert h.size == (40, 24) and h.mode == "RGB"
    const = np.asarray(viz.heatmap(torch.ones(4, 4), (8, 8)))
    assert (const == np.asarray(viz.colorize(np.zeros(1)))[0]).all()
    ramp = viz.colorize(np.array([0.0, 1.0]))
    assert tuple(ramp[0]) == (0, 0, 4) and tuple(ramp[1]) == (252, 255, 164)
    pics = viz.token_heatmaps(loc, Image.new("RGB", (50, 30)))
    assert [(i, w) for i, w, _ in pics] == [(3, "red"), (4, "car")]
    assert all(p.size == (50, 30) for _, _, p in pics)
    assert viz.heatmap(torch.rand(8, 8, dtype=torch.float16)).size == (8, 8)


@pytest.mark.parametrize("k", [3, 5, 9])
def test_the_fast_erosion_equals_pils_min_filter(k):
    from PIL import ImageFilter

    from lime_edit.viz import _erode

    rng = np.random.default_rng(k)
    a = (rng.random((37, 53)) > 0.3).astype(np.uint8) * 255
    a[10:30, 5:40] = 255
    pil = np.asarray(Image.fromarray(a, "L").filter(ImageFilter.MinFilter(k))) > 127
    assert np.array_equal(_erode(a > 127, k), pil)
