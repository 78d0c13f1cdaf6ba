"""LPIPS with the SqueezeNet 1.1 backbone (version 0.1), in plain torch: no torchvision.

Computes what ``torchmetrics``' ``LearnedPerceptualImagePatchSimilarity(net_type="squeeze")``
computes (PIE-Bench's LPIPS), which itself is Zhang et al.'s ``lpips`` package:
inputs in [-1, 1] -> fixed scaling layer -> SqueezeNet 1.1 ``features`` tapped after
layers 1, 4, 7, 9, 10, 11, 12 -> unit-normalise channels -> squared difference ->
1x1 "lin" conv per tap (no bias) -> spatial mean -> sum over taps.

Weights: the ImageNet SqueezeNet 1.1 backbone (published by torchvision) and the
LPIPS v0.1 ``lin`` layers (shipped inside the ``lpips`` and ``torchmetrics``
packages as ``squeeze.pth``). :func:`load_lpips` takes

- ``None`` (default): the backbone from torchvision's download URL through
  ``torch.hub.load_state_dict_from_url`` (hash-checked, cached in the torch hub
  cache; torchvision itself is not needed) and the ``lin`` layers from the
  ``squeeze.pth`` inside the installed ``torchmetrics``; both read with
  ``torch.load(weights_only=True)``. With ``local_files_only`` only the cached
  copy is used; without one that is a :class:`ModelLoadError` naming ``--lpips-model``.
- a local folder holding ``model.safetensors``, or a ``.safetensors`` file, with the
  tensors under their original names (**the documented layout**)::

      features.0.weight, features.0.bias                       # conv 3->64, 3x3 stride 2
      features.{3,4,6,7,9,10,11,12}.{squeeze,expand1x1,expand3x3}.{weight,bias}   # Fire modules
      lin{0..6}.model.1.weight                                  # (1, C, 1, 1), C = 64,128,256,384,384,512,512

  i.e. torchvision's ``squeezenet1_1().features`` state dict with the prefix
  ``features.`` plus the ``lpips`` package's ``squeeze.pth`` unchanged.
  :func:`export_weights` writes such a folder from the two original files.
- a Hub repository id holding that ``model.safetensors``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ModelLoadError

#: torchvision's SqueezeNet 1.1 ImageNet weights (the hash prefix is checked on download).
SQUEEZENET_URL = "https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth"
CHANNELS = (64, 128, 256, 384, 384, 512, 512)
_TAPS = ((0, 2), (2, 5), (5, 8), (8, 10), (10, 11), (11, 12), (12, 13))
WEIGHTS_NAME = "model.safetensors"


class Fire(nn.Module):
    def __init__(self, inplanes: int, squeeze: int, e1: int, e3: int):
        super().__init__()
        self.squeeze = nn.Conv2d(inplanes, squeeze, 1)
        self.expand1x1 = nn.Conv2d(squeeze, e1, 1)
        self.expand3x3 = nn.Conv2d(squeeze, e3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.squeeze(x))
        return torch.cat([F.relu(self.expand1x1(x)), F.relu(self.expand3x3(x))], 1)


def squeezenet_features() -> nn.Sequential:
    """SqueezeNet 1.1 ``features`` with torchvision's module indices (so state dicts match)."""
    pool = lambda: nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)  # noqa: E731
    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=3, stride=2), nn.ReLU(),            # 0, 1
        pool(), Fire(64, 16, 64, 64), Fire(128, 16, 64, 64),              # 2, 3, 4
        pool(), Fire(128, 32, 128, 128), Fire(256, 32, 128, 128),         # 5, 6, 7
        pool(), Fire(256, 48, 192, 192), Fire(384, 48, 192, 192),         # 8, 9, 10
        Fire(384, 64, 256, 256), Fire(512, 64, 256, 256),                 # 11, 12
    )


class _Lin(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        # Index 0 is LPIPS' (eval-time no-op) dropout; kept so the weight is "model.1.weight".
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class LpipsSqueeze(nn.Module):
    """``forward(a, b)`` -> ``(B,)`` LPIPS distances; ``a``, ``b``: ``(B, 3, H, W)`` in [-1, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.features = squeezenet_features()
        for k, c in enumerate(CHANNELS):
            self.add_module(f"lin{k}", _Lin(c))
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None],
                             persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None],
                             persistent=False)
        self.eval()
        self.requires_grad_(False)

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x - self.shift) / self.scale
        outs = []
        for lo, hi in _TAPS:
            for i in range(lo, hi):
                x = self.features[i](x)
            outs.append(x)
        return outs

    @torch.no_grad()
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        total = 0.0
        for k, (fa, fb) in enumerate(zip(self.taps(a), self.taps(b))):
            fa = fa / torch.sqrt(1e-8 + (fa ** 2).sum(1, keepdim=True))     # unit-normalise channels
            fb = fb / torch.sqrt(1e-8 + (fb ** 2).sum(1, keepdim=True))
            d = getattr(self, f"lin{k}")((fa - fb) ** 2)                    # (B, 1, h, w)
            total = total + d.mean(dim=(2, 3))
        return total.reshape(-1)                                             # (B,)

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # typed alias
        return super().__call__(a, b)


def _torch_load(path: str | os.PathLike) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _cached_squeezenet() -> Path:
    """Where ``torch.hub.load_state_dict_from_url`` keeps the SqueezeNet download."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(SQUEEZENET_URL)


def _default_state(local_files_only: bool | None = None) -> dict[str, torch.Tensor]:
    try:
        import torchmetrics
    except ImportError:
        raise ModelLoadError("LPIPS: the default weights need torchmetrics (pip install 'lime-edit[eval]'), "
                             "or pass --lpips-model FOLDER with model.safetensors") from None
    lin_path = Path(torchmetrics.__file__).parent / "functional" / "image" / "lpips_models" / "squeeze.pth"
    if not lin_path.is_file():
        raise ModelLoadError(f"LPIPS: {lin_path} not found in this torchmetrics; pass --lpips-model")
    cached = _cached_squeezenet()
    if local_files_only and not cached.is_file():    # as the Hub backbones: no download
        raise ModelLoadError(f"LPIPS: --local-files-only and the SqueezeNet 1.1 weights are not in the torch hub "
                             f"cache ({cached}); pass --lpips-model FOLDER with model.safetensors (see "
                             "lime_edit.eval.lpips), or run once without --local-files-only")
    try:
        if local_files_only:
            backbone = _torch_load(cached)
        else:  # the cached copy when there is one (load_state_dict_from_url's own rule)
            backbone = torch.hub.load_state_dict_from_url(SQUEEZENET_URL, map_location="cpu", check_hash=True,
                                                          progress=False, weights_only=True)
    except Exception as err:  # network, hash
        raise ModelLoadError(f"LPIPS: cannot get the SqueezeNet 1.1 weights from {SQUEEZENET_URL} ({err}); "
                             "pass --lpips-model FOLDER (see lime_edit.eval.lpips)") from None
    state = {k: v for k, v in backbone.items() if k.startswith("features.")}
    state.update(_torch_load(lin_path))
    return state


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def load_lpips(source: str | os.PathLike | None = None, device: str | torch.device = "cpu",
               local_files_only: bool | None = None) -> LpipsSqueeze:
    """LPIPS-SqueezeNet from ``source`` (see the module docstring for what it may be)."""
    if source is None:
        state = _default_state(local_files_only)
        name = "squeezenet1_1(torchvision)+lpips-v0.1-lin(torchmetrics)"
    else:
        p = Path(source)
        if p.is_dir():
            p = p / WEIGHTS_NAME
            if not p.is_file():
                raise ModelLoadError(f"LPIPS: {p} not found (expected the layout in lime_edit.eval.lpips)")
        elif not p.is_file():
            try:
                from huggingface_hub import hf_hub_download

                p = Path(hf_hub_download(str(source), WEIGHTS_NAME, local_files_only=bool(local_files_only)))
            except Exception as err:
                raise ModelLoadError(f"LPIPS: {source} is neither a folder, a file nor a reachable Hub "
                                     f"repository with {WEIGHTS_NAME} ({type(err).__name__})") from None
        state = _read_safetensors(p) if p.suffix == ".safetensors" else _torch_load(p)
        name = str(source)
    model = LpipsSqueeze()
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelLoadError(f"LPIPS weights {name}: missing {sorted(missing)[:4]}, "
                             f"unexpected {sorted(unexpected)[:4]} (see lime_edit.eval.lpips for the layout)")
    model.source = name  # type: ignore[attr-defined]
    return model.to(device)


def export_weights(folder: str | os.PathLike, backbone: str | os.PathLike | None = None,
                   lin: str | os.PathLike | None = None, model: LpipsSqueeze | None = None) -> Path:
    """Write ``folder/model.safetensors`` in the documented layout: from ``model``, or
    from torchvision's ``squeezenet1_1-*.pth`` (``backbone``) and the LPIPS
    ``squeeze.pth`` (``lin``), or (both None) from the default download."""
    from safetensors.torch import save_file

    if model is not None:
        state = model.state_dict()
    elif backbone is None and lin is None:
        state = _default_state()
    else:
        if backbone is None or lin is None:
            raise ValueError("give both backbone and lin files")
        state = {k: v for k, v in _torch_load(backbone).items() if k.startswith("features.")}
        state.update(_torch_load(lin))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / WEIGHTS_NAME
    save_file({k: v.contiguous() for k, v in state.items()}, str(out))
    return out
