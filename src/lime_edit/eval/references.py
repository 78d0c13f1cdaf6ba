"""The papers' published numbers, QUOTED (not computed here), for the printed tables.

Sources: MagicBrush single/multi-turn rows from the MagicBrush paper (Zhang et al.
2023) and LIME (Simsar et al., arXiv:2312.09256, Tab. 1/3); PIE-Bench rows from
LIME's supplementary Tab. 4; EditVal rows from LIME's supplementary Tab. 5 (other
methods' numbers there are taken from the EditVal paper).
"""

from __future__ import annotations

# metric order of each table
MAGICBRUSH_METRICS = ("l1", "l2", "clip_i", "dino", "clip_t")
PIEBENCH_METRICS = ("structure_distance_x1e3", "psnr", "lpips_x1e3", "mse_x1e4", "ssim_x1e2",
                    "clip_whole", "clip_edited")
EDITVAL_METRICS = ("object_addition", "object_replacement", "position_replacement", "positional_addition",
                   "size", "alter_parts", "average")

_MB = {
    # method: (single-turn L1, L2, CLIP-I, DINO, CLIP-T), (multi-turn ...)
    "IP2P": ((0.112, 0.037, 0.852, 0.743, 0.276), (0.158, 0.060, 0.792, 0.618, 0.273)),
    "IP2P + LIME": ((0.058, 0.017, 0.935, 0.906, 0.293), (0.094, 0.033, 0.883, 0.817, 0.284)),
    "IP2P w/ MB": ((0.063, 0.020, 0.933, 0.899, 0.278), (0.096, 0.035, 0.892, 0.827, 0.275)),
    "IP2P w/ MB + LIME": ((0.056, 0.017, 0.939, 0.911, 0.297), (0.088, 0.030, 0.894, 0.835, 0.294)),
    "HIVE": ((0.109, 0.034, 0.852, 0.750, 0.275), (0.152, 0.056, 0.800, 0.646, 0.267)),
    "HIVE + LIME": ((0.051, 0.016, 0.940, 0.909, 0.293), (0.080, 0.029, 0.894, 0.829, 0.283)),
    "HIVE w/ MB": ((0.066, 0.022, 0.919, 0.866, 0.281), (0.097, 0.037, 0.879, 0.789, 0.280)),
    "HIVE w/ MB + LIME": ((0.053, 0.016, 0.939, 0.906, 0.300), (0.080, 0.028, 0.899, 0.829, 0.295)),
}

PIEBENCH = {
    "InstructDiffusion": (75.44, 20.28, 155.66, 349.66, 75.53, 23.26, 21.34),
    "DirectInversion + P2P": (11.65, 27.22, 54.55, 32.86, 84.76, 25.02, 22.10),
    "IP2P": (57.91, 20.82, 158.63, 227.78, 76.26, 23.61, 21.64),
    "IP2P + LIME": (32.80, 21.36, 110.69, 159.93, 80.20, 23.73, 21.11),
    "IP2P w/ MB": (22.25, 27.68, 47.61, 40.03, 85.82, 23.83, 21.26),
    "IP2P w/ MB + LIME": (10.81, 28.80, 41.08, 27.80, 86.51, 23.54, 20.90),
    "HIVE": (56.37, 21.76, 142.97, 159.10, 76.73, 23.30, 21.52),
    "HIVE + LIME": (37.05, 22.90, 112.99, 107.17, 78.67, 23.41, 21.12),
    "HIVE w/ MB": (34.91, 20.85, 158.12, 227.18, 76.47, 23.90, 21.75),
    "HIVE w/ MB + LIME": (26.98, 26.09, 68.28, 63.70, 84.58, 23.96, 21.36),
}

EDITVAL = {
    "SINE": (0.47, 0.59, 0.02, 0.16, 0.46, 0.30, 0.33),
    "Null-Text": (0.35, 0.48, 0.00, 0.20, 0.52, 0.34, 0.32),
    "IP2P": (0.38, 0.39, 0.07, 0.25, 0.51, 0.25, 0.31),
    "Imagic": (0.36, 0.49, 0.03, 0.08, 0.49, 0.21, 0.28),
    "SDEdit": (0.35, 0.06, 0.04, 0.18, 0.47, 0.33, 0.24),
    "DreamBooth": (0.39, 0.32, 0.11, 0.08, 0.28, 0.22, 0.24),
    "Textual Inversion": (0.43, 0.19, 0.00, 0.00, 0.00, 0.21, 0.14),
    "DiffEdit": (0.34, 0.26, 0.00, 0.00, 0.00, 0.07, 0.11),
    "IP2P + LIME": (0.48, 0.49, 0.21, 0.34, 0.49, 0.28, 0.38),
}


def reference_rows(benchmark: str, protocol: str | None = None) -> dict[str, dict[str, float]]:
    """``{method: {metric: value}}`` in the paper's units."""
    if benchmark == "magicbrush":
        i = 0 if protocol in (None, "single") else 1
        return {m: dict(zip(MAGICBRUSH_METRICS, v[i])) for m, v in _MB.items()}
    if benchmark == "piebench":
        return {m: dict(zip(PIEBENCH_METRICS, v)) for m, v in PIEBENCH.items()}
    if benchmark == "editval":
        return {m: dict(zip(EDITVAL_METRICS, v)) for m, v in EDITVAL.items()}
    raise ValueError(f"unknown benchmark {benchmark!r}")


def table_metrics(benchmark: str) -> tuple[str, ...]:
    return {"magicbrush": MAGICBRUSH_METRICS, "piebench": PIEBENCH_METRICS,
            "editval": EDITVAL_METRICS}[benchmark]
