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
* ``"demo"``: the small editor bundled with this package (see ``lime_edit.demo``);
  ``"demo-t2i"``: its text-to-image pre-training stage (a ``StableDiffusionPipeline``,
  what Prompt-to-Prompt runs on offline).

Safetensors are preferred everywhere and a pickle file is never unpickled
unless ``allow_pickle=True``.  Every failure raises :class:`ModelLoadError` with
a one-line, actionable message.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import torch

from .errors import LimeEditError, ModelLoadError

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
    """``"demo"`` / ``"demo-t2i"`` -> the bundled model folders; anything else unchanged."""
    if str(model) == "demo":
        from .demo import bundled_model_path

        return str(bundled_model_path())
    if str(model) == "demo-t2i":
        from .demo import bundled_t2i_path

        return str(bundled_t2i_path())
    return str(model)


#: optional file in a model folder: ``{"backbone": NAME, "lime_config": {LimeConfig fields},
#: "can_edit": "one sentence: what the model can edit"}`` (other keys are notes)
MODEL_SETTINGS_FILE = "lime_edit.json"

_SDXL_KEYS = ("conditioner.embedders.1.model.positional_embedding",
              "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias")


def checkpoint_shapes(path: Path, allow_pickle: bool) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a single-file checkpoint, without loading its tensors
    (safetensors header; pickle files through ``torch.load(weights_only=True, mmap=True)``
    and only with ``allow_pickle``)."""
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        except Exception as err:  # noqa: BLE001 - SafetensorError (no public class) for a bad file
            raise ModelLoadError(f"{path}: not a readable .safetensors file ({_short(err)}): empty, "
                                 "truncated or not a safetensors file") from None
    if not allow_pickle:
        raise ModelLoadError(f"{path}: is a pickle checkpoint, which can run code when loaded; "
                             "convert it to .safetensors, or pass --allow-pickle if you trust it")
    import zipfile

    try:
        # mmap works only on the zip format torch.save writes since PyTorch 1.6; older
        # (legacy) checkpoints are read whole
        sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as err:  # noqa: BLE001 - UnpicklingError, EOFError, RuntimeError, OSError ...
        text = " ".join(str(err).split())
        what = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if what:
            raise ModelLoadError(f"{path}: holds Python objects besides tensors ({what.group(1)}), which the "
                                 "safe (weights-only) loader refuses; convert it to .safetensors") from None
        why = re.search(r"WeightsUnpickler error: (.*?)(?: Check the documentation|$)", text)
        raise ModelLoadError(f"{path}: not a readable PyTorch checkpoint "
                             f"({why.group(1).strip() if why else _short(err)}): empty, truncated "
                             "or not a checkpoint") from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ModelLoadError(f"{path}: not a checkpoint (no state dict inside)")
    return {k: tuple(v.shape) for k, v in sd.items() if hasattr(v, "shape")}


def detect_family(path: Path, shapes: dict[str, tuple[int, ...]]) -> tuple[str, str]:
    """``(family, why)`` for an original-LDM single file, from its keys, then its name."""
    from .backbones import family_list
    from .backbones.base import SD_UNET_IN as _UNET_IN

    name = path.name.lower()
    flux = _flux_transformer_kind(shapes)
    if flux == "flux1":
        if "kontext" in name:
            return "kontext", "a FLUX.1 transformer, file name says Kontext"
        raise ModelLoadError(f"{path}: a FLUX.1 transformer, but its name does not say Kontext (FLUX.1 [dev] "
                             "is not an editor); pass --backbone kontext if it is FLUX.1 Kontext")
    if flux == "flux2":
        raise ModelLoadError(f"{path}: a FLUX.2 transformer; single-file FLUX.2 checkpoints are not supported: "
                             "pass the diffusers folder or Hub id (black-forest-labs/FLUX.2-klein-4B)")
    in_shape = shapes.get(_UNET_IN)
    if in_shape is None:
        raise ModelLoadError(f"{path}: not a Stable Diffusion U-Net checkpoint (no {_UNET_IN}); "
                             f"supported families: {family_list()}")
    if len(in_shape) != 4:
        raise ModelLoadError(f"{path}: not a Stable Diffusion U-Net checkpoint ({_UNET_IN} has shape "
                             f"{tuple(in_shape)}, not that of a convolution)")
    in_ch = in_shape[1]
    if in_ch != 8:
        hint = " (a text-to-image model: edit it by captions with `lime-edit p2p` / backbone='p2p')" \
            if in_ch == 4 else ""
        raise ModelLoadError(f"{path}: not an instruction editor: its U-Net takes {in_ch} input channels, "
                             f"LIME needs 8 (noisy latent + image latent){hint}; supported families: {family_list()}")
    if any(k in shapes for k in _SDXL_KEYS):
        return "sdxl-ip2p", "SDXL text encoders and an 8-channel U-Net"
    if "hive" in name:
        return "hive", "8-channel SD U-Net, file name says HIVE"
    if "instructdiffusion" in name or "adaption-task" in name:
        return "instructdiffusion", "8-channel SD U-Net, file name says InstructDiffusion"
    return "ip2p", "8-channel SD U-Net"


def _flux_transformer_kind(shapes: dict[str, tuple[int, ...]]) -> str | None:
    """"flux1" / "flux2" for a FLUX transformer file (Black Forest Labs' own key layout, as
    the releases ship, or diffusers'), else None."""
    keys = {k.removeprefix("model.diffusion_model.") for k in shapes}
    if "double_blocks.0.img_attn.norm.key_norm.scale" in keys:          # BFL layout
        return "flux2" if any(k.startswith("double_stream_modulation") for k in keys) else "flux1"
    if any(k.startswith("single_transformer_blocks.0.") for k in keys) and "x_embedder.weight" in keys:
        return "flux2" if any("to_qkv_mlp_proj" in k for k in keys) else "flux1"
    return None


def read_model_settings(folder: Path) -> dict:
    """The ``lime_edit.json`` of a model folder (``{}`` if there is none)."""
    f = folder / MODEL_SETTINGS_FILE
    if not f.is_file():
        return {}
    try:
        data = json.loads(f.read_text())
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"{f}: unreadable ({' '.join(str(err).split())[:120]})") from None
    if not isinstance(data, dict) or not isinstance(data.get("lime_config", {}), dict):
        raise ModelLoadError(f"{f}: expected {{\"backbone\": NAME, \"lime_config\": {{...}}}}")
    import difflib

    from .backbones import FAMILIES, family_list
    from .config import LimeConfig

    for key in ("lime_config", "backbone", "can_edit"):   # other top-level keys are notes (the demo's has scores)
        near = difflib.get_close_matches(key, [k for k in data if k != key], n=1, cutoff=0.8)
        if key not in data and near:
            raise ModelLoadError(f"{f}: {near[0]!r} is not a key of this file; did you mean {key!r}?")
    can_edit = data.get("can_edit")
    if can_edit is not None and (not isinstance(can_edit, str) or not can_edit.strip()):
        raise ModelLoadError(f"{f}: can_edit: expected one sentence saying what the model can edit, "
                             f"got {can_edit!r}")
    name = data.get("backbone")
    if name is not None and (not isinstance(name, str) or name.lower() not in FAMILIES):
        raise ModelLoadError(f"{f}: backbone: unknown family {name!r} (known: {family_list()})")
    known = {fld.name for fld in dataclasses.fields(LimeConfig)}
    unknown = sorted(set(data.get("lime_config", {})) - known)
    if unknown:
        near = difflib.get_close_matches(unknown[0], known, n=1)
        raise ModelLoadError(f"{f}: lime_config: unknown setting(s) {', '.join(map(repr, unknown))}"
                             f"{f' (did you mean {near[0]!r}?)' if near else ''}; see LimeConfig for the names")
    try:
        LimeConfig(**data.get("lime_config", {}))
    except (TypeError, ValueError) as err:
        raise ModelLoadError(f"{f}: lime_config: {' '.join(str(err).split())}") from None
    return data


def _read_json_object(f: Path, expected: str) -> dict:
    try:
        data = json.loads(f.read_text())
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"{f}: not valid JSON ({_short(err, 120)})") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{f}: expected {expected}, got a JSON {type(data).__name__}")
    return data


def read_model_index(folder: Path) -> dict:
    """A diffusers folder's ``model_index.json``, checked before diffusers reads it: a JSON
    object whose ``_class_name`` is a string, every component it lists (``[library, class]``)
    present as a subfolder, and that subfolder's ``config.json`` / ``scheduler_config.json``
    (if any) a JSON object; each failure is one line naming the file or folder."""
    f = folder / "model_index.json"
    if not f.is_file():
        raise ModelLoadError(f"{folder}: not a diffusers model folder (no model_index.json)")
    index = _read_json_object(f, "a JSON object (\"_class_name\": a pipeline class, and its components)")
    if not isinstance(index.get("_class_name", ""), str):
        raise ModelLoadError(f"{f}: _class_name must be a pipeline class name, got {index['_class_name']!r}")
    for name, value in index.items():
        if name.startswith("_") or not (isinstance(value, list) and len(value) == 2 and all(value)):
            continue
        sub = folder / name
        if not sub.is_dir():
            raise ModelLoadError(f"{folder}: no {name}/ folder (model_index.json lists a {name}: "
                                 f"{' '.join(map(str, value))})")
        for cfg in ("config.json", "scheduler_config.json"):
            if (sub / cfg).is_file():
                _read_json_object(sub / cfg, "a JSON object of settings")
    return index


def _family_of_index(index: dict, where: str) -> str:
    from .backbones import PIPELINE_FAMILIES, family_list

    cls = str(index.get("_class_name", ""))
    if cls in PIPELINE_FAMILIES:
        return PIPELINE_FAMILIES[cls]
    if cls == "":
        return "ip2p"
    raise ModelLoadError(f"{where}: a {cls}, not an instruction editor LIME supports "
                         f"(families: {family_list()}); pass --backbone NAME if it is one")


def load_backbone(model: str | os.PathLike, *, backbone: str | None = None,
                  torch_dtype: str | torch.dtype | None = None, device: str | torch.device | None = None,
                  allow_pickle: bool = False, local_files_only: bool | None = None,
                  model_config: str | None = None, variant: str | None = None, offload: bool = False,
                  **backbone_options):
    """Load ``model`` and return ``(backbone, recommended_settings)``.

    The family is ``backbone`` if given, else recognised: a folder's ``lime_edit.json``
    or its ``model_index.json`` class, a Hub id's ``model_index.json``, a single
    file's keys (then its name: "hive", "instructdiffusion"/"adaption-task").  The
    pipeline is on ``device`` (default: CUDA, then MPS, then CPU) in ``torch_dtype``
    (default: the family's CUDA dtype on CUDA, float16 or bfloat16 for the transformers,
    float32 elsewhere); ``offload=True`` calls ``enable_model_cpu_offload`` instead of
    moving the whole pipeline (components go to ``device`` one at a time: for models
    larger than the GPU's memory).  ``model_config``: for a single file,
    a diffusers folder or Hub id with the same architecture to take configs from
    (default: the family's choice, see the backbones).  ``backbone_options`` go to the
    backbone (e.g. ``prompt_suffix`` for HIVE).  The family's scheduler
    (:meth:`Backbone.family_scheduler`: k-diffusion's Euler ancestral for HIVE and
    InstructDiffusion) replaces the model's own however it is loaded."""
    from .backbones import get_family

    device = torch.device(device) if device is not None else torch.device(default_device())
    if device.type == "meta":      # moving there "works", but holds no weights: every call would fail
        raise ModelLoadError("--device meta: cannot run the model there (a meta device holds no data)")
    dtype = parse_dtype(torch_dtype)
    if not isinstance(model, (str, os.PathLike)) or not str(model).strip():
        got = repr(model) if isinstance(model, str) else type(model).__name__
        raise ModelLoadError(f"model (--model): expected a Hub id, a model folder or a checkpoint file, got {got}")
    spec = resolve_model(model)
    path = Path(spec).expanduser()
    kwargs: dict = {}

    def with_dtype(family) -> dict:
        kwargs[_dtype_kwarg()] = dtype or (family.cuda_dtype() if device.type == "cuda" else torch.float32)
        return kwargs
    if variant:
        kwargs["variant"] = variant
    recommended: dict = {}
    can_edit: str | None = None
    if model_config and not path.is_file():      # a folder or Hub id brings its own configs
        raise ModelLoadError(f"model_config {model_config} (--model-config): only for a single checkpoint file (.safetensors, "
                             f".ckpt); {spec} is a model folder or Hub id with its own configs")
    if model_config is not None:
        model_config = _check_model_config(model_config)
    try:
        if path.is_file():
            suffix = path.suffix.lower()
            if suffix not in SINGLE_FILE_SUFFIXES:
                raise ModelLoadError(f"{path}: not a checkpoint file (expected {', '.join(SINGLE_FILE_SUFFIXES)})")
            if suffix == ".safetensors" and path.suffix != suffix:
                # diffusers tells the formats apart by the exact suffix: it would unpickle this one
                raise ModelLoadError(f"{path}: diffusers reads a safetensors file only by its lower-case suffix; "
                                     f"rename it to {path.stem}.safetensors")
            shapes = checkpoint_shapes(path, allow_pickle)
            name = backbone or detect_family(path, shapes)[0]
            family = get_family(name)
            pipe = _load_single_file(family, path, shapes, with_dtype(family), model_config, local_files_only)
            options = dict(family.default_options(str(path)))
        elif path.is_dir():
            index = read_model_index(path)
            settings = read_model_settings(path)
            recommended = dict(settings.get("lime_config", {}))
            can_edit = settings.get("can_edit")
            name = backbone or settings.get("backbone") or _family_of_index(index, str(path))
            family = get_family(name)
            pipe = _pipeline_class(family).from_pretrained(
                str(path), use_safetensors=None if allow_pickle else True, **with_dtype(family))
            options = dict(family.default_options(str(path)))
        elif _looks_like_path(spec):
            raise ModelLoadError(f"{spec}: no such file or folder")
        else:
            cls = _pipeline_class(get_family(backbone)) if backbone else None
            if cls is None:
                from diffusers import DiffusionPipeline

                index = DiffusionPipeline.load_config(spec, local_files_only=bool(local_files_only))
                family = get_family(_family_of_index(index, spec))
            else:
                family = get_family(backbone)
            pipe = _pipeline_class(family).from_pretrained(
                spec, use_safetensors=None if allow_pickle else True,
                local_files_only=bool(local_files_only), **with_dtype(family))
            options = dict(family.default_options(spec))
    except (ModelLoadError, LimeEditError):
        raise
    except Exception as err:  # noqa: BLE001 - turned into one actionable line
        raise ModelLoadError(_explain(spec, err, allow_pickle, single_file=path.is_file(),
                                      model_config=model_config)) from err
    if not path.is_file():                   # a single file got it in _load_single_file
        sched = family.family_scheduler(pipe.scheduler)
        if sched is not None:
            pipe.scheduler = sched
    options.update(backbone_options)
    try:
        bb = family(pipe, **options)
    except LimeEditError as err:
        raise ModelLoadError(f"{spec}: {err}") from None
    if can_edit:
        bb.can_edit = " ".join(can_edit.split())
    try:
        if offload:
            pipe.enable_model_cpu_offload(device=device)
        else:
            pipe.to(device)
    except (RuntimeError, AssertionError, ValueError, ImportError, NotImplementedError) as err:
        raise ModelLoadError(f"--device {device}: cannot move the model there "
                             f"({' '.join(str(err).split())[:200]})") from err
    return bb, recommended


def _check_model_config(model_config) -> str | None:
    """``model_config`` (``--model-config``) as ``from_single_file`` takes it: a Hub id, or a
    local diffusers config folder (``~`` expanded), checked like a model folder."""
    if not isinstance(model_config, (str, os.PathLike)):
        raise ModelLoadError(f"model_config (--model-config): expected a diffusers folder or Hub id, got "
                             f"{type(model_config).__name__}")
    text = str(model_config)
    if not text.strip():
        return None
    folder = Path(text).expanduser()
    if not (folder.exists() or _looks_like_path(text)):
        return text                                  # a Hub id
    if not folder.exists():
        raise ModelLoadError(f"--model-config {text}: no such folder")
    if not folder.is_dir():
        raise ModelLoadError(f"--model-config {text}: a file, not a diffusers config folder (one with a "
                             "model_index.json and the components' configs)")
    try:
        read_model_index(folder)
    except ModelLoadError as err:
        raise ModelLoadError(f"--model-config: {err}") from None
    return str(folder)


def load_ip2p(model: str | os.PathLike, **kwargs):
    """The diffusers pipeline of :func:`load_backbone` (kept for callers that want only the pipeline)."""
    return load_backbone(model, **kwargs)[0].pipe


def _pipeline_class(family):
    import diffusers

    return getattr(diffusers, family.pipeline_class)


def _load_single_file(family, path: Path, shapes: dict, kwargs: dict, config: str | None,
                      local_files_only: bool | None):
    """``from_single_file`` with the family's config and scheduler (original-LDM layout), or
    the family's own single-file loader (:meth:`Backbone.load_single_file`)."""
    own = family.load_single_file(path, dict(kwargs), config, local_files_only)
    if own is not None:
        return own
    cls = _pipeline_class(family)
    single = dict(kwargs)
    if local_files_only is not None:
        single["local_files_only"] = local_files_only
    extra = family.single_file_kwargs(path, shapes, config)
    if family.extract_ema(shapes):
        single["extract_ema"] = True
    if config:
        single["config"] = config
    single.update(extra.pop("pipeline", {}))
    for comp, loader in extra.pop("components", {}).items():
        single[comp] = loader(single)
    pipe = cls.from_single_file(str(path), **single)
    sched = family.single_file_scheduler(pipe.scheduler, path, shapes)
    if sched is not None:
        pipe.scheduler = sched
    return pipe


def _short(err: BaseException, limit: int = 160) -> str:
    """An exception's message on one line, shortened (no internal class name)."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _dtype_kwarg() -> str:
    """diffusers renamed ``torch_dtype`` to ``dtype`` (it warns about the old name)."""
    from diffusers.pipelines import pipeline_utils

    return "dtype" if hasattr(pipeline_utils, "_resolve_dtype") else "torch_dtype"


def _looks_like_path(spec: str) -> bool:
    """Hub ids are ``name`` or ``owner/name``; anything else was meant as a path."""
    return (spec.startswith((".", "/", "~")) or "\\" in spec or spec.count("/") > 1
            or spec.lower().endswith(SINGLE_FILE_SUFFIXES))


def _explain(spec: str, err: Exception, allow_pickle: bool, single_file: bool = False,
             model_config: str | None = None) -> str:
    text = " ".join(str(err).split())
    low = text.lower()
    if single_file and ("not fully cached" in low or "couldn't connect" in low or "connection" in low
                        or "offline" in low or "local_files_only" in low or "cached snapshot" in low):
        # the file is here; what the Hub was asked for is the configs of its architecture
        where = (f"the configs of --model-config {model_config}" if model_config else
                 "the configs of its architecture (diffusers' default for this kind of checkpoint)")
        return (f"{spec}: {where} are not cached locally and the Hugging Face Hub cannot be reached; "
                "pass --model-config FOLDER (a local diffusers folder of the same architecture), or "
                "download the configs once with network access")
    if "safetensors" in low and not allow_pickle and ("not found" in low or "no file" in low or "could not" in low):
        return (f"{spec}: no .safetensors weights found; convert the model, or pass --allow-pickle to load "
                ".bin/.ckpt weights you trust")
    if ("not fully cached" in low or "couldn't connect" in low or "connection" in low
            or "offline" in low or "name or service" in low or "local_files_only" in low):
        return (f"{spec}: cannot reach the Hugging Face Hub and no complete local copy is cached; "
                "download it once with network access (then HF_HUB_OFFLINE=1 works), or pass a local folder")
    if "does not appear to have a file named model_index.json" in low and not _looks_like_path(spec):
        # what diffusers (0.3x-0.4x) says for a Hub id it could neither find cached nor download
        return (f"{spec}: no local copy of this model, and the Hugging Face Hub did not provide one (no network, "
                "HF_HUB_OFFLINE set, or no diffusers model under that id); download it once with network "
                "access, or pass a local folder")
    if "repository not found" in low or "404" in low or "is not a valid model identifier" in low:
        return f"{spec}: no such model on the Hugging Face Hub (check the id, or pass a local folder)"
    first = text[:300]
    return f"{spec}: could not load the model ({type(err).__name__}: {first})"
