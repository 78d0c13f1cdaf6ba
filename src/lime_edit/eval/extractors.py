"""Metric backbones with one interface: ``Cls.load(source, device, local_files_only)``.

``source`` is a Hub id (the default for each) or a local folder saved with
``save_pretrained``; both go through the same transformers ``from_pretrained``
call, so the tests' tiny random models exercise the real code path.

Preprocessing is done here in PIL/torch (not by a transformers image processor)
so that it is exactly the benchmark's, whatever the transformers version:

==================  ======================================  =========================================
extractor           default source                          preprocessing (benchmark)
==================  ======================================  =========================================
ClipEncoder         openai/clip-vit-base-patch32 (MB)       resize short side 224 bicubic, centre crop
                    openai/clip-vit-large-patch14 (PIE)     224, CLIP mean/std (OpenAI ``clip.load``)
DinoEncoder         facebook/dino-vits16 (MB)               resize 256 bicubic, centre crop 224,
                                                            ImageNet mean/std; CLS after final LN
DinoKeyEncoder      facebook/dino-vitb8 (PIE structure)     QUIRK: pixels in [0, 255] (not /255), resize
                                                            short side 224 (long side <= 480) bilinear
                                                            WITHOUT antialias (torchvision 0.13.1, see
                                                            :func:`structure_resize`), ImageNet
                                                            mean/std; keys of the last block
OwlVitDetector      google/owlvit-base-patch32 (EditVal)    the model's own OwlViT processor
==================  ======================================  =========================================

Sizes scale with the model's ``image_size`` (224 for the real ones), so tiny test
models with 32 px inputs use the same code.

Captions longer than CLIP's 77 tokens are handled per benchmark (``long_text`` of
:meth:`ClipEncoder.encode_text`), each as that benchmark's own scorer would:

- ``"keep_end"`` (MagicBrush CLIP-T): OpenAI ``clip.tokenize(text, truncate=True)``:
  the first 76 tokens, then the end token at position 76, whose state is the
  embedding. MagicBrush's script calls ``clip.tokenize(text)`` (``truncate=False``),
  which raises on such a caption, so its published numbers contain none; we score
  the turn (rather than stop) and warn.
- ``"drop_end"`` (PIE-Bench CLIP similarity): torchmetrics' ``CLIPScore`` (>= 1.1,
  still in 1.9) slices the token ids to the first 77, dropping the end token. The
  CLIP text model pools at ``input_ids.argmax`` (OpenAI's rule; transformers keeps
  it for configs with the legacy ``eos_token_id`` 2, and its newer first-end-token
  rule also lands on position 0 when no end token is left): the highest id left is
  the START token at position 0, so every such caption gets the same,
  text-independent embedding. Matched (that is what the published numbers did),
  warned.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import ModelLoadError
from .editval import Detection

CLIP_B32 = "openai/clip-vit-base-patch32"
CLIP_L14 = "openai/clip-vit-large-patch14"
DINO_S16 = "facebook/dino-vits16"
DINO_B8 = "facebook/dino-vitb8"
OWLVIT_B32 = "google/owlvit-base-patch32"

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------- preprocessing
def resize_short_side(image: Image.Image, size: int, resample=Image.Resampling.BICUBIC) -> Image.Image:
    """torchvision ``Resize(size)`` on a PIL image: short side -> ``size``, long side
    ``int(size * long / short)``."""
    w, h = image.size
    if w <= h:
        ow, oh = size, int(size * h / w)
    else:
        oh, ow = size, int(size * w / h)
    return image if (ow, oh) == (w, h) else image.resize((ow, oh), resample)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """torchvision ``CenterCrop(size)`` (offsets rounded as torchvision does)."""
    w, h = image.size
    if w < size or h < size:  # torchvision pads; never happens after resize_short_side
        image = image.resize((max(w, size), max(h, size)), Image.Resampling.BICUBIC)
        w, h = image.size
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def _normalize(t: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=t.dtype)[:, None, None]
    s = torch.tensor(std, dtype=t.dtype)[:, None, None]
    return (t - m) / s


def _as_pil(image: Image.Image | np.ndarray) -> Image.Image:
    return image.convert("RGB") if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, np.uint8))


def _to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0


def _load(what: str, fn, source: str, **kw):
    try:
        return fn(source, **kw)
    except (OSError, ValueError, EnvironmentError) as err:
        msg = " ".join(str(err).split())[:300]
        raise ModelLoadError(f"{what} {source}: cannot load ({msg})") from None


def _kw(local_files_only: bool | None) -> dict:
    return {} if local_files_only is None else {"local_files_only": bool(local_files_only)}


def _first_tensor(out) -> torch.Tensor:
    """transformers 4 returns a tensor from ``get_*_features``; 5 returns an output
    object whose ``pooler_output`` is the projected embedding."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


# --------------------------------------------------------------------------- CLIP
#: how a caption longer than the context is cut, per benchmark (warning text of each)
LONG_TEXT = {
    "keep_end": "truncated to the first {ctx} keeping the end token, as clip.tokenize(truncate=True) "
                "(MagicBrush's own script stops with an error on such a caption)",
    "drop_end": "cut to the first {ctx} as torchmetrics' CLIPScore does (end token dropped, so the "
                "embedding is the start token's, the same for every such caption), as PIE-Bench's scorer",
}


class TextEncoding(NamedTuple):
    features: torch.Tensor          # (D,) projected, not normalised
    n_tokens: int                   # before any cut, start and end tokens included
    warning: str | None             # set when the caption was cut


class ClipEncoder:
    """CLIP image and text embeddings (projected, not normalised)."""

    def __init__(self, model, tokenizer, source: str, device: str | torch.device = "cpu"):
        self.model, self.tokenizer, self.source = model.eval().to(device), tokenizer, source
        self.device = torch.device(device)
        self.image_size = int(model.config.vision_config.image_size)

    @classmethod
    def load(cls, source: str = CLIP_B32, device: str | torch.device = "cpu",
             local_files_only: bool | None = None) -> "ClipEncoder":
        from transformers import AutoTokenizer, CLIPModel

        model = _load("CLIP model", CLIPModel.from_pretrained, source, **_kw(local_files_only))
        tok = _load("CLIP tokenizer", AutoTokenizer.from_pretrained, source, **_kw(local_files_only))
        return cls(model, tok, source, device)

    def preprocess(self, image: Image.Image | np.ndarray) -> torch.Tensor:
        img = center_crop(resize_short_side(_as_pil(image), self.image_size), self.image_size)
        return _normalize(_to_tensor(img), CLIP_MEAN, CLIP_STD)

    @torch.no_grad()
    def image_features(self, images: Sequence[Image.Image | np.ndarray]) -> torch.Tensor:
        x = torch.stack([self.preprocess(im) for im in images]).to(self.device)     # (B, 3, S, S)
        return _first_tensor(self.model.get_image_features(pixel_values=x)).float().cpu()  # (B, D)

    @property
    def context_length(self) -> int:
        """Tokens the text model takes, start and end tokens included (77 for CLIP)."""
        return min(int(getattr(self.tokenizer, "model_max_length", 77) or 77),
                   int(self.model.config.text_config.max_position_embeddings))

    def token_ids(self, text: str, long_text: str = "keep_end") -> tuple[list[int], int]:
        """The ids the text model gets for ``text`` and the full count before any cut
        (start and end tokens included); see the module docstring for ``long_text``."""
        if long_text not in LONG_TEXT:
            raise ValueError(f"long_text must be one of {', '.join(LONG_TEXT)}, not {long_text!r}")
        ids = list(self.tokenizer(text, truncation=False, verbose=False)["input_ids"])
        n, ctx = len(ids), self.context_length
        if n > ctx:
            ids = ids[:ctx]
            if long_text == "keep_end":
                ids[-1] = int(self.tokenizer.eos_token_id)
        return ids, n

    @torch.no_grad()
    def encode_text(self, text: str, long_text: str = "keep_end") -> "TextEncoding":
        """Projected text embedding ``(D,)`` of one caption, pooled at the highest token
        id (OpenAI CLIP's rule: the end token, unless a cut removed it), and a warning
        when the caption was longer than the context."""
        ids, n = self.token_ids(text, long_text)
        x = torch.tensor([ids], device=self.device)                                # (1, T)
        hidden = self.model.text_model(input_ids=x, attention_mask=torch.ones_like(x)).last_hidden_state
        pooled = hidden[0, int(x[0].argmax())]                                      # (W,) after final LN
        features = self.model.text_projection(pooled).float().cpu()                 # (D,)
        warning = None
        if n > self.context_length:
            warning = (f"caption has {n} tokens, more than CLIP's {self.context_length}: "
                       + LONG_TEXT[long_text].format(ctx=self.context_length))
        return TextEncoding(features, n, warning)

    def text_features(self, texts: Sequence[str], long_text: str = "keep_end") -> torch.Tensor:
        """``(B, D)`` projected text embeddings (see :meth:`encode_text`)."""
        return torch.stack([self.encode_text(t, long_text).features for t in texts])


# --------------------------------------------------------------------------- DINO
#: what each ``antialias`` setting of the structure-distance resize reproduces (recorded in reports)
STRUCTURE_RESIZE = {
    False: "bilinear without antialias (torchvision 0.13.1 tensor Resize, pinned by PnP-Inversion; "
           "their published numbers)",
    True: "bilinear with antialias (torchvision >= 0.17 tensor Resize default)",
}


def structure_resize(t: torch.Tensor, size: int, max_size: int | None = None,
                     antialias: bool = False) -> torch.Tensor:
    """torchvision ``Resize(size, max_size=max_size)`` of a float ``(C, H, W)`` tensor.

    Short side -> ``size``, long side ``int(size * long / short)``; if that exceeds
    ``max_size``, long -> ``max_size`` and short ``int(max_size * size / long)``;
    unchanged size returns the input. Bilinear, half-pixel centres
    (``align_corners=False``), no rounding or clamping of the float result.

    ``antialias=False`` (default) is torchvision 0.13.1's tensor path, where
    ``antialias=None`` means off: the version PnP-Inversion's README pins and the one
    PIE-Bench's published structure distances were computed with. ``antialias=True``
    is torchvision >= 0.17's default for tensors (issue 13 found 1.8-3.1% per sample
    between the two with the official scorer).
    """
    h, w = int(t.shape[-2]), int(t.shape[-1])
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = int(size), int(size * long / short)
    if max_size is not None:
        if max_size <= size:
            raise ValueError(f"max_size ({max_size}) must be greater than size ({size})")
        if new_long > max_size:
            new_short, new_long = int(max_size * new_short / new_long), int(max_size)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) == (w, h):
        return t
    return F.interpolate(t[None], size=(new_h, new_w), mode="bilinear", align_corners=False,
                         antialias=bool(antialias))[0]


def _load_vit(source: str, local_files_only: bool | None, layer_norm_eps: float | None):
    from transformers import ViTModel

    kw = _kw(local_files_only)
    if layer_norm_eps is not None:
        kw["layer_norm_eps"] = layer_norm_eps
    return _load("DINO model", ViTModel.from_pretrained, source, add_pooling_layer=False, **kw)


class DinoEncoder:
    """DINO v1 CLS token after the final layer norm (MagicBrush's DINO score).

    The original DINO ViTs use LayerNorm eps 1e-6; the converted transformers
    configs say 1e-12, so ``layer_norm_eps=1e-6`` is set on load (BENCHMARKS.md)."""

    def __init__(self, model, source: str, device: str | torch.device = "cpu"):
        self.model, self.source, self.device = model.eval().to(device), source, torch.device(device)
        self.image_size = int(model.config.image_size)
        self.resize = int(round(self.image_size * 256 / 224))

    @classmethod
    def load(cls, source: str = DINO_S16, device: str | torch.device = "cpu",
             local_files_only: bool | None = None, layer_norm_eps: float | None = 1e-6) -> "DinoEncoder":
        return cls(_load_vit(source, local_files_only, layer_norm_eps), source, device)

    def preprocess(self, image: Image.Image | np.ndarray) -> torch.Tensor:
        img = center_crop(resize_short_side(_as_pil(image), self.resize), self.image_size)
        return _normalize(_to_tensor(img), IMAGENET_MEAN, IMAGENET_STD)

    @torch.no_grad()
    def image_features(self, images: Sequence[Image.Image | np.ndarray]) -> torch.Tensor:
        x = torch.stack([self.preprocess(im) for im in images]).to(self.device)     # (B, 3, S, S)
        return self.model(pixel_values=x).last_hidden_state[:, 0].float().cpu()    # (B, D) CLS


class DinoKeyEncoder:
    """Keys of the last block's self-attention, heads concatenated, and their cosine
    self-similarity (PIE-Bench's structure distance, after Splice-ViT).

    In transformers the key projection of the last layer outputs exactly the
    concatenated per-head keys of DINO's fused ``qkv`` layer (same head order)."""

    def __init__(self, model, source: str, device: str | torch.device = "cpu", max_size: int = 480,
                 antialias: bool = False):
        self.model, self.source, self.device = model.eval().to(device), source, torch.device(device)
        self.image_size = int(model.config.image_size)
        self.max_size = max(int(round(max_size * self.image_size / 224)), self.image_size + 1)
        self.antialias = bool(antialias)
        # named_modules() walks the layers in order: the last key projection is the last block's
        # ("encoder.layer.N.attention.attention.key" in transformers 4, "layers.N.attention.k_proj" in 5).
        keys = [m for n, m in model.named_modules() if n.split(".")[-1] in ("k_proj", "key")]
        self._key = keys[-1] if keys else None
        if self._key is None:
            raise ModelLoadError(f"DINO model {source}: no key projection found in the last layer")

    @classmethod
    def load(cls, source: str = DINO_B8, device: str | torch.device = "cpu",
             local_files_only: bool | None = None, layer_norm_eps: float | None = 1e-6,
             antialias: bool = False) -> "DinoKeyEncoder":
        return cls(_load_vit(source, local_files_only, layer_norm_eps), source, device, antialias=antialias)

    def preprocess(self, image: Image.Image | np.ndarray) -> torch.Tensor:
        """QUIRK (PIE-Bench): ``Normalize(ImageNet)`` applied to pixel values in [0, 255],
        after :func:`structure_resize` (no antialias unless ``antialias=True``)."""
        arr = np.asarray(_as_pil(image), dtype=np.float32)
        t = torch.from_numpy(arr.copy()).permute(2, 0, 1)                           # (3, H, W) in [0, 255]
        t = structure_resize(t, self.image_size, self.max_size, antialias=self.antialias)
        return _normalize(t, IMAGENET_MEAN, IMAGENET_STD)

    @torch.no_grad()
    def keys(self, image: Image.Image | np.ndarray) -> torch.Tensor:
        x = self.preprocess(image)[None].to(self.device)                            # (1, 3, H, W)
        captured: list[torch.Tensor] = []
        handle = self._key.register_forward_hook(lambda m, i, o: captured.append(o))
        try:
            interp = tuple(x.shape[2:]) != (self.image_size, self.image_size)
            self.model(pixel_values=x, interpolate_pos_encoding=interp)
        finally:
            handle.remove()
        return captured[-1][0].float().cpu()                                        # (N tokens, D)

    def self_similarity(self, image: Image.Image | np.ndarray) -> torch.Tensor:
        from .metrics import self_similarity

        return self_similarity(self.keys(image))                                    # (N, N)


# --------------------------------------------------------------------------- OWL-ViT
class OwlVitDetector:
    """Open-vocabulary boxes for text queries; ``detect`` returns every box with its
    best query label and sigmoid score, in pixel corners of the given image, in the
    model's output order (as EditVal's ``post_process`` loop sees them: its official
    mode keeps the LAST box over the threshold, so this order must not be changed)."""

    def __init__(self, model, processor, source: str, device: str | torch.device = "cpu"):
        self.model, self.processor, self.source = model.eval().to(device), processor, source
        self.device = torch.device(device)

    @classmethod
    def load(cls, source: str = OWLVIT_B32, device: str | torch.device = "cpu",
             local_files_only: bool | None = None) -> "OwlVitDetector":
        import warnings

        from transformers import OwlViTForObjectDetection, OwlViTProcessor

        model = _load("OWL-ViT model", OwlViTForObjectDetection.from_pretrained, source, **_kw(local_files_only))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            proc = _load("OWL-ViT processor", OwlViTProcessor.from_pretrained, source, **_kw(local_files_only))
        return cls(model, proc, source, device)

    @torch.no_grad()
    def detect(self, image: Image.Image | np.ndarray, queries: Sequence[str]) -> list[Detection]:
        img = _as_pil(image)
        inputs = self.processor(text=[list(queries)], images=img, return_tensors="pt").to(self.device)
        outputs = self.model(**inputs)
        post = getattr(self.processor, "image_processor", self.processor)
        res = post.post_process_object_detection(outputs, threshold=0.0,
                                                 target_sizes=torch.tensor([[img.size[1], img.size[0]]]))[0]
        return [Detection(int(lab), float(sc), tuple(float(v) for v in box))  # type: ignore[arg-type]
                for box, sc, lab in zip(res["boxes"].cpu(), res["scores"].cpu(), res["labels"].cpu())]
