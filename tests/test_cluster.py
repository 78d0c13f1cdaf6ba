"""Clustering: determinism and correctness on separable data."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lime_edit.cluster import agglomerative, kmeans


def _blobs(seed=0, k=4, per=200, d=16, spread=0.05):
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(k, d, generator=g), dim=1) * 3
    x = torch.cat([c + spread * torch.randn(per, d, generator=g) for c in centres])
    truth = torch.arange(k).repeat_interleave(per)
    perm = torch.randperm(len(x), generator=g)
    return x[perm], truth[perm]


def _same_partition(a, b):
    pairs = {(int(i), int(j)) for i, j in zip(a, b)}
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def test_kmeans_recovers_separable_clusters():
    x, truth = _blobs()
    labels, centres = kmeans(x, 4, seed=0)
    assert centres.shape == (4, 16)
    assert _same_partition(labels, truth)


def test_kmeans_is_deterministic_and_canonical():
    x, _ = _blobs(seed=1, spread=0.8)
    a, _ = kmeans(x, 8, seed=3)
    b, _ = kmeans(x, 8, seed=3)
    assert torch.equal(a, b)
    firsts = [int((a == v).nonzero()[0]) for v in range(int(a.max()) + 1)]
    assert firsts == sorted(firsts)                    # labels numbered by first appearance
    state = torch.random.get_rng_state()
    kmeans(x, 8, seed=4)
    assert torch.equal(state, torch.random.get_rng_state())  # global RNG untouched


def test_kmeans_more_clusters_than_points():
    x = torch.eye(3)
    labels, centres = kmeans(x, 8)
    assert sorted(labels.tolist()) == [0, 1, 2] and centres.shape == (3, 3)


def test_agglomerative_threshold_controls_merging():
    # a 16x16 grid with four quadrants of distinct directions
    grid = torch.zeros(16, 16, 4)
    grid[:8, :8, 0] = 1
    grid[:8, 8:, 1] = 1
    grid[8:, :8, 2] = 1
    grid[8:, 8:, 3] = 1
    grid = grid + 0.01 * torch.randn(16, 16, 4, generator=torch.Generator().manual_seed(0))
    x = F.normalize(grid.reshape(-1, 4), dim=1)
    labels = agglomerative(x, (16, 16), threshold=0.5)
    assert len(set(labels.tolist())) == 4
    assert _same_partition(labels, torch.tensor([0, 1, 2, 3]).repeat_interleave(64).reshape(2, 2, 8, 8)
                           .permute(0, 2, 1, 3).reshape(-1))
    assert len(set(agglomerative(x, (16, 16), threshold=1.5).tolist())) == 1
    # pooling path (max_points smaller than the grid) gives the same partition here
    assert _same_partition(agglomerative(x, (16, 16), threshold=0.5, max_points=16), labels)


def _region_maps(seed=0):
    """Layer maps at three resolutions over the same 4-region layout, plus noise."""
    g = torch.Generator().manual_seed(seed)
    maps = []
    for res, ch in [(8, 6), (4, 10), (16, 3)]:
        lay = torch.zeros(res, res, dtype=torch.long)
        lay[: res // 2, res // 2:] = 1
        lay[res // 2:, : res // 2] = 2
        lay[res // 2:, res // 2:] = 3
        protos = torch.randn(4, ch, generator=g)
        maps.append((protos[lay] + 0.05 * torch.randn(res, res, ch, generator=g)).permute(2, 0, 1))
    return maps


@pytest.mark.parametrize("align_corners", [True, False])
def test_fused_features_equal_the_explicit_matrix(align_corners):
    from lime_edit.cluster import FusedFeatures
    from lime_edit.roi import fuse_features_dense

    maps, grid = _region_maps(), (32, 24)
    fused = FusedFeatures(maps, grid, chunk=4, align_corners=align_corners)
    dense = fuse_features_dense(maps, grid, align_corners=align_corners)
    other = fuse_features_dense(maps, grid, align_corners=not align_corners)
    assert not torch.allclose(dense, other, atol=1e-3)   # the two conventions really differ
    c = torch.randn(5, dense.shape[1], generator=torch.Generator().manual_seed(1))
    split = list(torch.split(c, [m.shape[0] for m in maps], dim=1))
    assert torch.allclose(fused.dots(split), dense @ c.T, atol=1e-5)
    w = torch.rand(3, dense.shape[0], generator=torch.Generator().manual_seed(2))
    assert torch.allclose(torch.cat(fused.weighted_sums(w), 1), w @ dense, atol=1e-4)
    assert torch.allclose(fused.sq_norms(), (dense * dense).sum(1), atol=1e-5)
    lf, _ = kmeans(fused, 4, seed=0)
    ld, _ = kmeans(dense, 4, seed=0)
    assert torch.equal(lf, ld)
    assert torch.equal(agglomerative(fused, grid, threshold=0.5), agglomerative(dense, grid, threshold=0.5))
    assert torch.equal(agglomerative(fused, grid, threshold=0.5, max_points=48),
                       agglomerative(dense, grid, threshold=0.5, max_points=48))


def test_upsampling_follows_the_reference_corner_convention():
    from lime_edit.cluster import _interp_matrix
    from lime_edit.roi import mean_attention

    m = torch.arange(4.0).reshape(1, 2, 2)                # one 2x2 map, corners 0, 1, 2, 3
    up = mean_attention([m], (5, 5))                      # default: align_corners=True
    assert up[0, 0, 0] == 0 and up[0, 0, 4] == 1 and up[0, 4, 0] == 2 and up[0, 4, 4] == 3
    assert torch.allclose(up[0, 2, 2], torch.tensor(1.5))  # the centre is the mean
    assert torch.allclose(_interp_matrix(2, 5, "cpu"), torch.tensor(
        [[1, 0], [0.75, 0.25], [0.5, 0.5], [0.25, 0.75], [0, 1]]))
    half = mean_attention([m], (4, 4), align_corners=False)
    assert torch.allclose(half[0, 0, :2], torch.tensor([0.0, 0.25]))
