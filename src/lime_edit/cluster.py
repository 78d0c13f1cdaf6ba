"""Clustering on the pipeline's device, in torch (no cuML, no GPU-only code).

Both functions take ``x``: ``(N, D)`` float features (L2-normalised per row by
the caller) and return ``(N,)`` int64 labels numbered ``0..K-1`` in order of
first appearance (row-major pixel order), so equal partitions give equal labels.
"""

from __future__ import annotations

import torch


def _canonical(labels: torch.Tensor) -> torch.Tensor:
    """Renumber labels by order of first appearance."""
    uniq, first = [], {}
    out = torch.empty_like(labels)
    lab = labels.tolist()
    for v in lab:
        if v not in first:
            first[v] = len(first)
            uniq.append(v)
    lut = torch.full((int(labels.max().item()) + 1,), -1, dtype=torch.long)
    for v, i in first.items():
        lut[v] = i
    out = lut.to(labels.device)[labels]
    return out


def kmeans(x: torch.Tensor, k: int, *, iters: int = 100, seed: int = 0, tol: float = 1e-6
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's K-means with k-means++ initialisation.

    Deterministic for a given ``seed`` (a private ``torch.Generator``; the global
    RNG is untouched).  Empty clusters are re-seeded with the point farthest from
    its centre.  Returns ``(labels (N,), centres (K, D))``; ``K = min(k, N)``.
    """
    if x.ndim != 2:
        raise ValueError(f"kmeans: x must be (N, D), got {tuple(x.shape)}")
    n = x.shape[0]
    k = max(1, min(int(k), n))
    xf = x.float()
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    sq = (xf * xf).sum(1)  # (N,)

    def dist2(c: torch.Tensor) -> torch.Tensor:  # (N, K) squared distances
        return (sq[:, None] - 2.0 * xf @ c.T + (c * c).sum(1)[None, :]).clamp_min_(0)

    # k-means++: first centre uniform, then proportional to squared distance.
    first = int(torch.randint(n, (1,), generator=gen).item())
    centres = xf[first:first + 1].clone()
    d2 = dist2(centres)[:, 0]
    for _ in range(1, k):
        total = float(d2.sum())
        if total <= 0:
            idx = int(torch.randint(n, (1,), generator=gen).item())
        else:
            probs = (d2 / total).cpu().double()
            idx = int(torch.multinomial(probs, 1, generator=gen).item())
        centres = torch.cat([centres, xf[idx:idx + 1]], 0)
        d2 = torch.minimum(d2, dist2(centres[-1:])[:, 0])

    labels = torch.zeros(n, dtype=torch.long, device=x.device)
    for _ in range(max(1, iters)):
        d = dist2(centres)
        labels = d.argmin(1)
        counts = torch.bincount(labels, minlength=k)
        new = torch.zeros_like(centres).index_add_(0, labels, xf) / counts.clamp_min(1)[:, None].float()
        empty = (counts == 0).nonzero().flatten().tolist()
        if empty:
            far = d.gather(1, labels[:, None])[:, 0]
            for c in empty:
                j = int(far.argmax().item())
                new[c] = xf[j]
                far[j] = -1.0
        shift = float(((new - centres) ** 2).sum())
        centres = new
        if shift <= tol and not empty:
            break
    labels = dist2(centres).argmin(1)
    return _canonical(labels), centres


def agglomerative(x: torch.Tensor, grid: tuple[int, int], *, threshold: float = 0.5,
                  max_points: int = 4096) -> torch.Tensor:
    """Average-linkage agglomerative clustering with a cosine distance threshold.

    ``x`` is ``(H*W, D)`` for a ``grid = (H, W)`` image.  Full pairwise linkage on
    every pixel is quadratic in memory, so the grid is first average-pooled to at
    most ``max_points`` cells; those are clustered (SciPy's C linkage, merging
    stops at cosine distance ``threshold``), and every pixel then joins the
    cluster whose mean feature is most cosine-similar.  Higher threshold = fewer,
    larger clusters.  Returns ``(H*W,)`` labels.
    """
    from scipy.cluster.hierarchy import fcluster, linkage

    h, w = grid
    if x.shape[0] != h * w:
        raise ValueError(f"agglomerative: x has {x.shape[0]} rows, grid {h}x{w} has {h * w}")
    feats = x.float().T.reshape(1, -1, h, w)
    stride = 1
    while (h // stride) * (w // stride) > max_points and stride < max(h, w):
        stride *= 2
    pooled = torch.nn.functional.avg_pool2d(feats, stride, ceil_mode=True) if stride > 1 else feats
    pts = pooled.reshape(pooled.shape[1], -1).T  # (M, D)
    pts = torch.nn.functional.normalize(pts, dim=1)
    if pts.shape[0] < 2:
        return torch.zeros(h * w, dtype=torch.long, device=x.device)
    z = linkage(pts.cpu().double().numpy(), method="average", metric="cosine")
    cell = torch.as_tensor(fcluster(z, t=threshold, criterion="distance"), dtype=torch.long) - 1
    k = int(cell.max()) + 1
    centres = torch.zeros(k, pts.shape[1]).index_add_(0, cell, pts.cpu())
    centres = torch.nn.functional.normalize(centres, dim=1).to(x.device)
    labels = (torch.nn.functional.normalize(x.float(), dim=1) @ centres.T).argmax(1)
    return _canonical(labels)
