"""Clustering on the pipeline's device, in torch (no cuML, no GPU-only code).

LIME clusters the pixels of the localization grid by the L2-normalised
concatenation of many upsampled attention-layer outputs.  For SD1.5 at 512 px that
matrix would be 128*128 pixels x ~20k channels (1.4 GB in float32), more than the
rest of the edit needs.  :class:`FusedFeatures` represents it *implicitly*:
bilinear upsampling is linear, so every product K-means needs (pixel . centre,
cluster means) is computed per layer at the layer's own resolution on K-channel
maps and then upsampled (or adjoint-downsampled).  The result is the same
K-means, to float rounding, in O(pixels x K) memory.  :class:`DenseFeatures`
wraps an explicit ``(N, D)`` matrix with the same interface.

Labels are returned numbered ``0..K-1`` in order of first appearance (row-major),
so equal partitions give equal label maps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class DenseFeatures:
    """An explicit ``(N, D)`` feature matrix. Centres are ``(K, D)`` tensors."""

    def __init__(self, x: torch.Tensor, grid: tuple[int, int] | None = None):
        if x.ndim != 2:
            raise ValueError(f"features must be (N, D), got {tuple(x.shape)}")
        self.x = x.float()
        self.grid = grid
        self.n = x.shape[0]

    def sq_norms(self) -> torch.Tensor:               # (N,)
        return (self.x * self.x).sum(1)

    def dots(self, c: torch.Tensor) -> torch.Tensor:  # (N, K)
        return self.x @ c.T

    def centre_sq_norms(self, c: torch.Tensor) -> torch.Tensor:  # (K,)
        return (c * c).sum(1)

    def weighted_sums(self, w: torch.Tensor) -> torch.Tensor:    # w (K, N) -> (K, D)
        return w @ self.x

    def cat(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.cat([a, b], 0)

    def set_row(self, c: torch.Tensor, k: int, v: torch.Tensor) -> None:
        c[k] = v[0]

    def shift(self, a: torch.Tensor, b: torch.Tensor) -> float:
        return float(((a - b) ** 2).sum())

    def pooled(self, stride: int) -> torch.Tensor:   # (M, D) cell means of the grid
        h, w = self.grid
        maps = self.x.T.reshape(1, -1, h, w)
        if stride > 1:
            maps = F.avg_pool2d(maps, stride, ceil_mode=True)
        return maps.reshape(maps.shape[1], -1).T


class FusedFeatures:
    """Pixels of ``grid`` described by the L2-normalised concatenation of
    ``maps`` (each ``(C_l, h_l, w_l)``) bilinearly upsampled to ``grid``
    (``align_corners`` as in ``F.interpolate``); never materialised. Centres are
    lists of per-map ``(K, C_l)`` tensors."""

    def __init__(self, maps: list[torch.Tensor], grid: tuple[int, int], chunk: int = 256,
                 align_corners: bool = True):
        # Layers of one resolution are concatenated along channels first: the fused
        # features are the same (upsampling is per channel), and K-means then runs one
        # product per resolution instead of one per layer (launch-bound on a GPU).
        by_size: dict[tuple[int, int], list[torch.Tensor]] = {}
        for m in maps:
            by_size.setdefault(tuple(m.shape[1:]), []).append(m.float())
        self.maps = [torch.cat(g, 0) if len(g) > 1 else g[0] for g in by_size.values()]
        self.flat = [m.flatten(1) for m in self.maps]                      # (C_l, h_l*w_l)
        self.grid = tuple(grid)
        self.n = grid[0] * grid[1]
        self.chunk = chunk
        # Bilinear upsampling (either corner convention) is separable: up(z) = Uh z Uw^T.
        dev = self.maps[0].device
        self.align_corners = bool(align_corners)
        self._u = [(_interp_matrix(m.shape[1], grid[0], dev, self.align_corners),
                    _interp_matrix(m.shape[2], grid[1], dev, self.align_corners))
                   for m in self.maps]                                       # (Hg, h_l), (Wg, w_l)
        sq = torch.zeros(self.grid, device=dev)
        for i, m in enumerate(self.maps):
            for c0 in range(0, m.shape[0], chunk):
                sq += self._up(m[c0:c0 + chunk], i).pow(2).sum(0)
        self.norm = sq.flatten().sqrt().clamp_min(1e-12)                  # (N,) = ||u_p||

    def _up(self, z: torch.Tensor, i: int) -> torch.Tensor:             # (K, h, w) -> (K, Hg, Wg)
        uh, uw = self._u[i]
        return uh @ z @ uw.T

    def _up_adjoint(self, w: torch.Tensor, i: int) -> torch.Tensor:     # (K, Hg, Wg) -> (K, h, w)
        uh, uw = self._u[i]
        return uh.T @ w @ uw

    def sq_norms(self) -> torch.Tensor:
        return (self.norm / self.norm.clamp_min(1e-12)) ** 2 * (self.norm > 1e-12)

    def dots(self, c: list[torch.Tensor]) -> torch.Tensor:              # (N, K)
        acc = None
        for i, (m, f, cl) in enumerate(zip(self.maps, self.flat, c)):
            s = self._up((cl @ f).reshape(-1, m.shape[1], m.shape[2]), i)    # (K, Hg, Wg)
            acc = s if acc is None else acc + s
        return (acc.flatten(1) / self.norm).T

    def centre_sq_norms(self, c: list[torch.Tensor]) -> torch.Tensor:
        return sum((cl * cl).sum(1) for cl in c)

    def weighted_sums(self, w: torch.Tensor) -> list[torch.Tensor]:     # w (K, N) -> [(K, C_l)]
        w = (w / self.norm).reshape(-1, *self.grid)
        out = []
        for i, f in enumerate(self.flat):
            adj = self._up_adjoint(w, i)                                     # (K, h_l, w_l)
            out.append(adj.flatten(1) @ f.T)
        return out

    def cat(self, a: list[torch.Tensor], b: list[torch.Tensor]) -> list[torch.Tensor]:
        return [torch.cat([x, y], 0) for x, y in zip(a, b)]

    def set_row(self, c: list[torch.Tensor], k: int, v: list[torch.Tensor]) -> None:
        for cl, vl in zip(c, v):
            cl[k] = vl[0]

    def shift(self, a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
        return float(sum(((x - y) ** 2).sum() for x, y in zip(a, b)))

    def gram_of_cells(self, stride: int) -> torch.Tensor:
        """``(M, M)`` dot products of the grid's ``stride``-pooled cell means."""
        gram = None
        norm = self.norm.reshape(self.grid)
        for i, m in enumerate(self.maps):
            for c0 in range(0, m.shape[0], self.chunk):
                up = self._up(m[c0:c0 + self.chunk], i) / norm
                cells = F.avg_pool2d(up[None], stride, ceil_mode=True)[0] if stride > 1 else up
                cells = cells.flatten(1)                                      # (c, M)
                g = cells.T @ cells
                gram = g if gram is None else gram + g
        return gram


def _interp_matrix(n_in: int, n_out: int, device, align_corners: bool = True) -> torch.Tensor:
    """``(n_out, n_in)`` matrix of 1-D linear interpolation as ``F.interpolate`` does it
    (same ``align_corners``), so 2-D bilinear upsampling is ``Uh @ z @ Uw.T``."""
    eye = torch.eye(n_in, device=device)[None]                               # (1, n_in, n_in)
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=align_corners)[0].T


def _canonical(labels: torch.Tensor) -> torch.Tensor:
    """Renumber labels by order of first appearance."""
    n = int(labels.max().item()) + 1
    pos = torch.arange(labels.numel(), device=labels.device)
    first = torch.full((n,), labels.numel(), dtype=torch.long, device=labels.device)
    first.scatter_reduce_(0, labels, pos, reduce="amin")
    order = torch.argsort(first)
    lut = torch.empty_like(order)
    lut[order] = torch.arange(n, device=labels.device)
    return lut[labels]


def _as_features(x) -> DenseFeatures | FusedFeatures:
    return x if isinstance(x, (DenseFeatures, FusedFeatures)) else DenseFeatures(x)


def kmeans(x, k: int, *, iters: int = 100, seed: int = 0, tol: float = 1e-6):
    """Lloyd's K-means with k-means++ initialisation.

    ``x``: an ``(N, D)`` tensor, :class:`DenseFeatures` or :class:`FusedFeatures`.
    Deterministic for a given ``seed`` (a private CPU ``torch.Generator``; the
    global RNG is untouched).  Empty clusters are re-seeded with the point
    farthest from its centre.  Returns ``(labels (N,), centres)``; ``K = min(k, N)``.
    """
    feats = _as_features(x)
    n = feats.n
    k = max(1, min(int(k), n))
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    sq = feats.sq_norms()
    dev = sq.device

    def onehot(idx: list[int]) -> torch.Tensor:  # (len, N)
        w = torch.zeros(len(idx), n, device=dev)
        w[torch.arange(len(idx)), torch.tensor(idx, device=dev)] = 1.0
        return w

    def dist2(c) -> torch.Tensor:  # (N, K)
        return (sq[:, None] - 2.0 * feats.dots(c) + feats.centre_sq_norms(c)[None, :]).clamp_min_(0)

    first = int(torch.randint(n, (1,), generator=gen).item())
    centres = feats.weighted_sums(onehot([first]))
    d2 = dist2(centres)[:, 0]
    for _ in range(1, k):
        total = float(d2.sum())
        if total <= 0:
            idx = int(torch.randint(n, (1,), generator=gen).item())
        else:
            idx = int(torch.multinomial((d2 / total).cpu().double(), 1, generator=gen).item())
        new = feats.weighted_sums(onehot([idx]))
        centres = feats.cat(centres, new)
        d2 = torch.minimum(d2, dist2(new)[:, 0])

    for _ in range(max(1, iters)):
        d = dist2(centres)
        labels = d.argmin(1)
        counts = torch.bincount(labels, minlength=k).float()
        w = torch.zeros(k, n, device=dev)
        w[labels, torch.arange(n, device=dev)] = 1.0
        new = feats.weighted_sums(w / counts.clamp_min(1)[:, None])
        empty = (counts == 0).nonzero().flatten().tolist()
        if empty:
            far = d.gather(1, labels[:, None])[:, 0].clone()
            for c in empty:
                j = int(far.argmax().item())
                feats.set_row(new, c, feats.weighted_sums(onehot([j])))
                far[j] = -1.0
        shift = feats.shift(new, centres)
        centres = new
        if shift <= tol and not empty:
            break
    labels = dist2(centres).argmin(1)
    return _canonical(labels), centres


def agglomerative(x, grid: tuple[int, int], *, threshold: float = 0.5, max_points: int = 4096) -> torch.Tensor:
    """Average-linkage agglomerative clustering with a cosine distance threshold.

    ``x`` is ``(H*W, D)`` (or :class:`FusedFeatures`) for a ``grid = (H, W)``.
    Full pairwise linkage on every pixel is quadratic in memory, so the grid is
    first average-pooled to at most ``max_points`` cells; those are clustered
    (SciPy's C linkage on their cosine distances, merging stops at ``threshold``),
    and every pixel then joins the cluster whose mean feature is most
    cosine-similar.  Higher threshold = fewer, larger clusters.  Returns ``(H*W,)``.
    """
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    h, w = grid
    feats = _as_features(x)
    if isinstance(feats, DenseFeatures):
        feats.grid = grid
    if feats.n != h * w:
        raise ValueError(f"agglomerative: {feats.n} points, grid {h}x{w} has {h * w}")
    stride = 1
    while -(-h // stride) * -(-w // stride) > max_points and stride < max(h, w):
        stride *= 2
    if isinstance(feats, DenseFeatures):
        cells = feats.pooled(stride)
        gram = cells @ cells.T
    else:
        gram = feats.gram_of_cells(stride)                                      # (M, M)
    m = gram.shape[0]
    if m < 2:
        return torch.zeros(h * w, dtype=torch.long, device=gram.device)
    diag = gram.diagonal().clamp_min(1e-12).sqrt()
    dist = (1.0 - gram / diag[:, None] / diag[None, :]).clamp_(0.0, 2.0).double().cpu()
    dist.fill_diagonal_(0.0)
    dist = (dist + dist.T) / 2
    z = linkage(squareform(dist.numpy(), checks=False), method="average")
    cell = torch.as_tensor(fcluster(z, t=threshold, criterion="distance"), dtype=torch.long) - 1
    k = int(cell.max()) + 1
    # pixel -> its cell's cluster, then cluster means over pixels, then nearest mean by cosine
    hc, wc = -(-h // stride), -(-w // stride)
    cell_map = cell.reshape(hc, wc).repeat_interleave(stride, 0).repeat_interleave(stride, 1)[:h, :w]
    pix = cell_map.flatten().to(gram.device)
    wts = torch.zeros(k, h * w, device=gram.device)
    wts[pix, torch.arange(h * w, device=gram.device)] = 1.0
    centres = feats.weighted_sums(wts / wts.sum(1, keepdim=True).clamp_min(1))
    cos = feats.dots(centres) / feats.centre_sq_norms(centres).clamp_min(1e-12).sqrt()[None, :]
    return _canonical(cos.argmax(1))
