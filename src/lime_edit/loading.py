"""Load an InstructPix2Pix-family pipeline the way diffusers users do.

``model`` may be

* a Hub id (``"timbrooks/instruct-pix2pix"``, a MagicBrush-finetuned IP2P, ...),
  through ``from_pretrained`` (cached copies work offline with ``HF_HUB_OFFLINE=1``
  or ``local_files_only=True``);
* a local diffusers folder (``model_index.json`` + components);
* a single-file checkpoint (``.safetensors``; ``.ckpt``/``.pt``/``.bin`` only with
  ``allow_pickle=True``) of an IP2P-style model (MagicBrush, HIVE,
  InstructDiffusion releases), through ``from_single_file``; ``config`` names a
  diffusers folder or Hub id with the same architecture to take configs from
  (default: diffusers' own inference of the checkpoint type);
* ``"demo"``: the small model bundled with this package (see ``lime_edit.demo``).

Safetensors are preferred everywhere and a pickle file is never unpickled
unless ``allow_pickle=True``.  Every failure raises :class:`ModelLoadError` with
a one-line, actionable message.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import ModelLoadError

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
SINGLE_FILE_SUFFIXES = (".safetensors",) + PICKLE_SUFFIXES

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
          "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return None
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ModelLoadError(f"--dtype: unknown dtype {dtype!r} (use one of {', '.join(DTYPES)})") from None


def default_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_model(model: str | os.PathLike) -> str:
    """``"demo"`` -> the bundled model folder; anything else unchanged."""
    if str(model) == "demo":
        from .demo import bundled_model_path

        return str(bundled_model_path())
    return str(model)


def load_ip2p(model: str | os.PathLike, *, torch_dtype: str | torch.dtype | None = None,
              device: str | torch.device | None = None, allow_pickle: bool = False,
              local_files_only: bool | None = None, config: str | None = None, variant: str | None = None):
    """Return a ``StableDiffusionInstructPix2PixPipeline`` on ``device`` (default:
    CUDA, then MPS, then CPU) in ``torch_dtype`` (default: float16 on CUDA,
    float32 elsewhere)."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    device = torch.device(device) if device is not None else torch.device(default_device())
    dtype = parse_dtype(torch_dtype)
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    spec = resolve_model(model)
    path = Path(spec).expanduser()
    kwargs: dict = {_dtype_kwarg(): dtype}
    if variant:
        kwargs["variant"] = variant
    try:
        if path.is_file():
            suffix = path.suffix.lower()
            if suffix not in SINGLE_FILE_SUFFIXES:
                raise ModelLoadError(f"{path}: not a checkpoint file (expected {', '.join(SINGLE_FILE_SUFFIXES)})")
            if suffix in PICKLE_SUFFIXES and not allow_pickle:
                raise ModelLoadError(f"{path}: is a pickle checkpoint, which can run code when loaded; "
                                     "convert it to .safetensors, or pass --allow-pickle if you trust it")
            single_kwargs = dict(kwargs)
            if config:
                single_kwargs["config"] = config
            if local_files_only is not None:
                single_kwargs["local_files_only"] = local_files_only
            pipe = StableDiffusionInstructPix2PixPipeline.from_single_file(str(path), **single_kwargs)
        elif path.is_dir():
            if not (path / "model_index.json").is_file():
                raise ModelLoadError(f"{path}: not a diffusers model folder (no model_index.json)")
            pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(
                str(path), use_safetensors=None if allow_pickle else True, **kwargs)
        elif _looks_like_path(spec):
            raise ModelLoadError(f"{spec}: no such file or folder")
        else:
            pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(
                spec, use_safetensors=None if allow_pickle else True,
                local_files_only=bool(local_files_only), **kwargs)
    except ModelLoadError:
        raise
    except Exception as err:  # noqa: BLE001 - turned into one actionable line
        raise ModelLoadError(_explain(spec, err, allow_pickle)) from err
    in_ch = pipe.unet.config.in_channels
    if in_ch != 8:
        raise ModelLoadError(f"{spec}: not an InstructPix2Pix-family model: its U-Net takes {in_ch} input "
                             "channels, LIME needs 8 (noisy latent + image latent)")
    try:
        pipe.to(device)
    except (RuntimeError, AssertionError, ValueError) as err:
        raise ModelLoadError(f"--device {device}: cannot move the model there "
                             f"({' '.join(str(err).split())[:200]})") from err
    return pipe


def _dtype_kwarg() -> str:
    """diffusers renamed ``torch_dtype`` to ``dtype`` (it warns about the old name)."""
    from diffusers.pipelines import pipeline_utils

    return "dtype" if hasattr(pipeline_utils, "_resolve_dtype") else "torch_dtype"


def _looks_like_path(spec: str) -> bool:
    """Hub ids are ``name`` or ``owner/name``; anything else was meant as a path."""
    return (spec.startswith((".", "/", "~")) or "\\" in spec or spec.count("/") > 1
            or spec.lower().endswith(SINGLE_FILE_SUFFIXES))


def _explain(spec: str, err: Exception, allow_pickle: bool) -> str:
    text = " ".join(str(err).split())
    low = text.lower()
    if "safetensors" in low and not allow_pickle and ("not found" in low or "no file" in low or "could not" in low):
        return (f"{spec}: no .safetensors weights found; convert the model, or pass --allow-pickle to load "
                ".bin/.ckpt weights you trust")
    if ("not fully cached" in low or "couldn't connect" in low or "connection" in low
            or "offline" in low or "name or service" in low or "local_files_only" in low):
        return (f"{spec}: cannot reach the Hugging Face Hub and no complete local copy is cached; "
                "download it once with network access (then HF_HUB_OFFLINE=1 works), or pass a local folder")
    if "repository not found" in low or "404" in low or "is not a valid model identifier" in low:
        return f"{spec}: no such model on the Hugging Face Hub (check the id, or pass a local folder)"
    first = text[:300]
    return f"{spec}: could not load the model ({type(err).__name__}: {first})"
