"""Pure functions that turn captured U-Net tensors into a region of interest.

Shapes: ``B`` batch items, grid ``(Hg, Wg)`` = the localization grid, ``T`` text
positions (77 for CLIP).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .cluster import DenseFeatures, FusedFeatures, agglomerative, kmeans


def fuse_features(maps: list[torch.Tensor], grid: tuple[int, int], align_corners: bool = True) -> FusedFeatures:
    """Feature maps ``(C_i, h_i, w_i)`` upsampled bilinearly to ``grid``, concatenated
    along channels, L2-normalised per pixel: ``Hg*Wg`` points of ``sum C_i`` dims,
    kept implicit (see :class:`lime_edit.cluster.FusedFeatures`).  ``align_corners``
    as in ``F.interpolate`` (True, the default, is the LIME authors' choice; see
    ``LimeConfig.align_corners``)."""
    return FusedFeatures(maps, grid, align_corners=align_corners)


def fuse_features_dense(maps: list[torch.Tensor], grid: tuple[int, int], align_corners: bool = True
                        ) -> torch.Tensor:
    """The explicit ``(Hg*Wg, sum C_i)`` matrix of :func:`fuse_features` (for tests
    and small inputs)."""
    ups = [F.interpolate(m[None].float(), size=grid, mode="bilinear", align_corners=align_corners)[0]
           for m in maps]  # each (C_i, Hg, Wg)
    return F.normalize(torch.cat(ups, 0).flatten(1).T, dim=1)


def mean_attention(maps: list[torch.Tensor], grid: tuple[int, int], align_corners: bool = True
                   ) -> torch.Tensor:
    """Average head-averaged cross-attention maps ``(T, h_i, w_i)`` of several
    layers after upsampling each (bilinear, ``align_corners`` as in
    ``F.interpolate``) to ``grid``: returns ``(T, Hg, Wg)``."""
    acc = None
    for m in maps:
        up = F.interpolate(m[None].float(), size=grid, mode="bilinear", align_corners=align_corners)[0]
        acc = up if acc is None else acc + up
    return acc / len(maps)


def segment(feats: FusedFeatures | DenseFeatures | torch.Tensor, grid: tuple[int, int], *, method: str, num_clusters: int,
            iters: int, seed: int, distance_threshold: float, max_points: int) -> torch.Tensor:
    """Cluster ``Hg*Wg`` fused pixel features into a ``(Hg, Wg)`` label map."""
    if method == "kmeans":
        labels, _ = kmeans(feats, num_clusters, iters=iters, seed=seed)
    else:
        labels = agglomerative(feats, grid, threshold=distance_threshold, max_points=max_points)
    return labels.reshape(grid)


def roi_from_attention(attention: torch.Tensor, segments: torch.Tensor, top_k: int
                       ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """RoI = union of the segments that contain the ``top_k`` highest pixels of
    ``attention`` ``(Hg, Wg)``.  Returns ``(mask (Hg, Wg) bool, points (k, 2) as
    (row, col), selected segment labels)``; ties break by pixel order."""
    hg, wg = attention.shape
    k = max(1, min(int(top_k), hg * wg))
    idx = torch.topk(attention.flatten().float(), k).indices
    points = torch.stack([idx // wg, idx % wg], 1)
    chosen = sorted(set(segments.flatten()[idx].tolist()))
    mask = torch.isin(segments, torch.tensor(chosen, device=segments.device, dtype=segments.dtype))
    return mask, points.cpu(), chosen


def normalise01(x: torch.Tensor) -> torch.Tensor:
    lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo) if float(hi - lo) > 0 else torch.zeros_like(x)
