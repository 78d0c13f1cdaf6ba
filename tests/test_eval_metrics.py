"""Pure metric functions, RLE masks, EditVal rules and LPIPS against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("torchmetrics")  # the eval extra: pip install -e ".[eval]"

from lime_edit.errors import LimeEditError  # noqa: E402
from lime_edit.eval import editval as R  # noqa: E402
from lime_edit.eval import metrics as M  # noqa: E402
from lime_edit.eval.datasets import decode_rle_mask, encode_rle_mask  # noqa: E402
from lime_edit.eval.lpips import LpipsSqueeze, squeezenet_features  # noqa: E402


def solid(value, size=(16, 12)):
    return Image.new("RGB", size, tuple(value) if isinstance(value, (tuple, list)) else (value,) * 3)


# --------------------------------------------------------------------------- RLE
def test_rle_decode_runs_border_and_clipping():
    m = decode_rle_mask([5, 3, 14, 100], shape=(4, 4), border=False)
    flat = m.reshape(-1)
    assert flat.tolist() == [i in (5, 6, 7, 14, 15) for i in range(16)]  # last run clipped at 16
    b = decode_rle_mask([5, 1], shape=(4, 4))  # their quirk: border rows/cols set to 1
    assert b[0].all() and b[-1].all() and b[:, 0].all() and b[:, -1].all()
    assert b[1, 1] and not b[2, 2]  # index 5 = (1, 1); (2, 2) untouched


def test_rle_roundtrip_and_bad_masks():
    rng = np.random.default_rng(0)
    m = rng.random((32, 32)) > 0.7
    assert (decode_rle_mask(encode_rle_mask(m), (32, 32), border=False) == m).all()
    for bad in ([1, 2, 3], [-1, 4], [1.5, 2], "x"):
        with pytest.raises(LimeEditError):
            decode_rle_mask(bad, (4, 4))


# --------------------------------------------------------------------------- MagicBrush
def test_l1_l2_identical_and_known_offset():
    assert M.l1_distance(solid(100), solid(100)) == 0.0
    assert M.l1_distance(solid(110), solid(100)) == pytest.approx(10 / 255, abs=1e-7)
    assert M.l2_distance(solid(110), solid(100)) == pytest.approx((10 / 255) ** 2, abs=1e-8)
    # generated is resized to the ground truth's size first (a solid colour stays solid)
    assert M.l1_distance(solid(110, (64, 64)), solid(100, (16, 12))) == pytest.approx(10 / 255, abs=1e-6)
    # only one channel differs by 30: mean over 3 channels
    assert M.l1_distance(solid((130, 100, 100)), solid(100)) == pytest.approx(10 / 255, abs=1e-7)


def test_cosine_and_clip_score():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])
    assert M.cosine(a, a) == pytest.approx(1.0)
    assert M.cosine(a, b) == pytest.approx(1 / math.sqrt(2))
    assert M.clip_score(a, b) == pytest.approx(100 / math.sqrt(2))
    assert M.clip_score(a, -a) == 0.0  # max(100 cos, 0)


# --------------------------------------------------------------------------- PIE-Bench
def test_background_metrics_identical_and_known_offset():
    src = np.full((32, 32, 3), 100, np.uint8)
    mask = np.zeros((32, 32), bool)
    mask[8:24, 8:24] = True  # edit region: 256 of 1024 pixels
    same = M.background_metrics(src, src, mask, which=("psnr", "mse", "ssim"))
    assert same["mse"] == 0.0 and same["psnr"] == math.inf and same["ssim"] == pytest.approx(1.0, abs=1e-6)
    tgt = src.copy()
    tgt[mask] = 0                       # changes inside the edit region are ignored
    assert M.background_metrics(src, tgt, mask, which=("mse",))["mse"] == 0.0
    tgt = src + np.uint8(51)            # +0.2 everywhere; background = 768/1024 of the pixels
    r = M.background_metrics(src, tgt, mask, which=("psnr", "mse"))
    expected_mse = 0.2 ** 2 * 768 / 1024  # zeros inside the mask count in the mean (their convention)
    assert r["mse"] == pytest.approx(expected_mse, rel=1e-5)
    assert r["psnr"] == pytest.approx(10 * math.log10(1 / expected_mse), rel=1e-5)
    full = np.ones((32, 32), bool)
    assert all(math.isnan(v) for v in M.background_metrics(src, tgt, full, which=("psnr", "mse")).values())


def test_masked_uint8_and_structure_distance():
    img = np.full((4, 4, 3), 200, np.uint8)
    keep = np.zeros((4, 4), bool)
    keep[0, 0] = True
    out = M.masked_uint8(img, keep)
    assert out[0, 0].tolist() == [200] * 3 and out.sum() == 600
    keys = torch.randn(10, 6)
    sim = M.self_similarity(keys)
    assert torch.allclose(sim.diagonal(), torch.ones(10), atol=1e-5)
    assert M.structure_distance(sim, sim) == 0.0
    other = M.self_similarity(torch.randn(10, 6))
    assert M.structure_distance(sim, other) == pytest.approx(float(((sim - other) ** 2).mean()))


# --------------------------------------------------------------------------- EditVal rules
D = R.Detection


def test_best_detection_uses_highest_score_over_threshold():
    dets = [D(0, 0.5, (0, 0, 1, 1)), D(0, 0.9, (5, 5, 6, 6)), D(0, 0.2, (9, 9, 10, 10)), D(1, 0.05, (0, 0, 1, 1))]
    assert R.best_detection(dets, 0).box == (5, 5, 6, 6)
    assert R.best_detection(dets, 1) is None  # below 0.1


def test_addition_and_replacement_rules():
    both = [D(0, 0.3, (0, 0, 10, 10)), D(1, 0.4, (20, 20, 40, 40))]
    assert R.rule_object_addition(both) == 1
    assert R.rule_object_addition(both[:1]) == 0
    assert R.rule_object_replacement(both) == 0          # original still there
    assert R.rule_object_replacement(both[:1]) == 1


def test_alter_parts_reads_boxes_as_corners():
    obj = D(1, 0.5, (100, 100, 200, 200))
    assert R.rule_alter_parts([D(0, 0.5, (140, 140, 160, 160)), obj]) == 1
    assert R.rule_alter_parts([D(0, 0.5, (10, 10, 30, 30)), obj]) == 0
    assert R.part_query("add wheels") == "wheels"


def test_positional_addition_y_grows_downwards():
    obj = D(1, 0.5, (100, 100, 200, 200))           # centre (150, 150)
    under = D(0, 0.5, (120, 250, 180, 300))          # centre y 275: below
    assert R.rule_positional_addition([under, obj], "below") == 1
    assert R.rule_positional_addition([under, obj], "above") == 0
    left = D(0, 0.5, (0, 120, 50, 180))
    assert R.rule_positional_addition([left, obj], "left") == 1
    assert R.rule_positional_addition([left, obj], "right") == 0
    assert R.parse_positional("cup left") == ("cup", "left")
    assert R.parse_positional("a ball on top of") == ("ball", "above")


def test_position_replacement_and_size_in_original_frame():
    before = [D(0, 0.5, (300, 100, 400, 200))]       # centre x 350 in a 640-wide original
    moved = [D(0, 0.5, (0, 50, 50, 100))]            # edited image 320 wide -> x 25 * 2 = 50
    assert R.rule_position_replacement(before, moved, "left", scale=(2.0, 2.0)) == 1
    assert R.rule_position_replacement(before, moved, "right", scale=(2.0, 2.0)) == 0
    small_move = [D(0, 0.5, (130, 50, 180, 100))]    # centre 155*2 = 310: moved only 40 px
    assert R.rule_position_replacement(before, small_move, "left", scale=(2.0, 2.0)) == 0
    # same box in a half-size edited image is the same size once scaled back
    half = [D(0, 0.5, (150, 50, 200, 100))]
    assert R.rule_size(before, half, "large", scale=(2.0, 2.0)) == 0
    bigger = [D(0, 0.5, (100, 20, 220, 140))]
    assert R.rule_size(before, bigger, "large", scale=(2.0, 2.0)) == 1
    assert R.rule_size(before, bigger, "small", scale=(2.0, 2.0)) == 0
    assert R.rule_size([], bigger, "large") == 0


# --------------------------------------------------------------------------- LPIPS
def test_lpips_identical_is_zero_and_positive_otherwise():
    torch.manual_seed(0)
    lp = LpipsSqueeze()
    for k in range(7):
        getattr(lp, f"lin{k}").model[1].weight.data.abs_()
    a = torch.rand(2, 3, 48, 48) * 2 - 1
    assert torch.allclose(lp(a, a), torch.zeros(2))
    assert (lp(a, a.flip(0)) > 0).all()


def test_lpips_matches_torchmetrics_formula_with_same_weights(monkeypatch):
    """Our plain-torch LPIPS-SqueezeNet equals torchmetrics' _LPIPS (whose backbone
    normally comes from torchvision) when both hold the same weights."""
    tm = pytest.importorskip("torchmetrics.functional.image.lpips")
    torch.manual_seed(1)
    feats = squeezenet_features()
    monkeypatch.setattr(tm, "_get_tv_model_features", lambda net, pretrained=False: feats)
    theirs = tm._LPIPS(pretrained=True, net="squeeze").eval()   # lin weights: torchmetrics' squeeze.pth
    ours = LpipsSqueeze()
    state = {}
    for k, v in theirs.state_dict().items():
        if k.startswith("net.slices."):
            _, _, _j, i, rest = k.split(".", 4)
            state[f"features.{i}.{rest}"] = v
        elif k.startswith("lin") and not k.startswith("lins."):
            state[k] = v
    ours.load_state_dict(state, strict=True)
    a, b = torch.rand(2, 3, 64, 64) * 2 - 1, torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        expected = theirs(a, b).reshape(-1)
    assert torch.allclose(ours(a, b), expected, rtol=1e-5, atol=1e-7)
