"""Tiny fixtures for the harness's tests (and for trying the harness offline).

- :func:`save_tiny_backbones` saves randomly initialised CLIP, DINO-style ViT,
  OWL-ViT and LPIPS-SqueezeNet models, of the same classes as the real ones, to
  folders that ``lime-edit score --clip-model DIR ...`` loads through the same
  ``from_pretrained`` path as a Hub id.
- ``write_*_fixture`` write small datasets in each benchmark's real layout
  (MagicBrush sessions incl. a multi-turn one, PIE-Bench with RLE masks, EditVal
  ``object.json`` with COCO-named images).
Nothing here downloads anything.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from .datasets import encode_rle_mask

TINY_WORDS = ("a photo of the and with to in on dog cat car tree red blue green hat ball cup left right "
              "below above large small wheels add make it turn change sky white black").split()


def _tokenizer(folder: Path):
    from ..testing import tiny_tokenizer

    return tiny_tokenizer(folder / "_tok", TINY_WORDS)


def save_tiny_backbones(root: str | os.PathLike, seed: int = 0) -> dict[str, Path]:
    """Save tiny random backbones; returns ``{"clip", "clip_large", "dino", "dino_structure",
    "owlvit", "lpips"}`` -> folder."""
    import torch
    from transformers import (CLIPConfig, CLIPModel, OwlViTConfig, OwlViTForObjectDetection,
                              OwlViTProcessor, ViTConfig, ViTModel)
    from transformers.models.owlvit.image_processing_owlvit import OwlViTImageProcessor

    root = Path(root)
    tok = _tokenizer(root)
    out: dict[str, Path] = {}
    torch.manual_seed(seed)
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                  image_size=32, patch_size=8)
    clip = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    for name in ("clip", "clip_large"):
        d = root / name
        clip.save_pretrained(d)
        tok.save_pretrained(d)
        out[name] = d
    for name, patch in (("dino", 8), ("dino_structure", 4)):
        torch.manual_seed(seed + patch)
        vit = ViTModel(ViTConfig(hidden_size=24, num_hidden_layers=2, num_attention_heads=3,
                                 intermediate_size=48, image_size=32, patch_size=patch, qkv_bias=True),
                       add_pooling_layer=False)
        d = root / name
        vit.save_pretrained(d)
        out[name] = d
    torch.manual_seed(seed + 3)
    owl = OwlViTForObjectDetection(OwlViTConfig(
        text_config=dict(text, max_position_embeddings=16), vision_config=vision, projection_dim=32))
    d = root / "owlvit"
    owl.save_pretrained(d)
    tok.save_pretrained(root / "_tok16")
    tok16 = tok.__class__.from_pretrained(root / "_tok16", model_max_length=16)
    proc = OwlViTProcessor(image_processor=OwlViTImageProcessor(size={"height": 32, "width": 32},
                                                                crop_size={"height": 32, "width": 32}),
                           tokenizer=tok16)
    proc.save_pretrained(d)
    out["owlvit"] = d
    from .lpips import LpipsSqueeze, export_weights

    torch.manual_seed(seed + 4)
    lp = LpipsSqueeze()
    for k in range(7):  # LPIPS' lin weights are non-negative
        w = getattr(lp, f"lin{k}").model[1].weight
        w.data.abs_()
    out["lpips"] = export_weights(root / "lpips", model=lp).parent
    return out


def scene(seed: int, size: tuple[int, int] = (64, 64)) -> Image.Image:
    """A small deterministic RGB picture (smooth gradients and a rectangle)."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([xx / w, yy / h, (xx + yy) / (w + h)], -1) * rng.uniform(80, 200, 3)
    x0, y0 = rng.integers(0, w // 2), rng.integers(0, h // 2)
    base[y0:y0 + h // 3, x0:x0 + w // 3] = rng.uniform(0, 255, 3)
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")


def write_magicbrush_fixture(root: str | os.PathLike, size: tuple[int, int] = (64, 64)) -> Path:
    """``root/test/...`` with three sessions: 1 turn, 2 turns and 3 turns."""
    test = Path(root) / "test"
    sessions, local, glob_, flat = {}, {}, {}, []
    instructions = ["make the car red", "add a hat to the dog", "turn the sky green"]
    for s, (img_id, n_turns) in enumerate((("101", 1), ("202", 2), ("303", 3))):
        folder = test / "images" / img_id
        folder.mkdir(parents=True, exist_ok=True)
        scene(s * 10, size).save(folder / f"{img_id}-input.png")
        turns = []
        local[img_id], glob_[img_id] = {}, {}
        for k in range(1, n_turns + 1):
            scene(s * 10 + k, size).save(folder / f"{img_id}-output{k}.png")
            Image.fromarray((np.arange(size[0] * size[1]).reshape(size[::-1]) % 7 == 0).astype(np.uint8) * 255
                            ).save(folder / f"{img_id}-mask{k}.png")
            rec = {"input": f"{img_id}-input.png" if k == 1 else f"{img_id}-output{k - 1}.png",
                   "mask": f"{img_id}-mask{k}.png", "output": f"{img_id}-output{k}.png",
                   "instruction": instructions[(s + k) % 3]}
            turns.append(rec)
            flat.append(rec)
            local[img_id][f"{img_id}-output{k}.png"] = f"a red car and a dog {k}"
            glob_[img_id][f"{img_id}-output{k}.png"] = f"a photo {k}"
        sessions[img_id] = turns
    for name, obj in (("edit_sessions.json", sessions), ("edit_turns.json", flat),
                      ("local_descriptions.json", local), ("global_descriptions.json", glob_)):
        (test / name).write_text(json.dumps(obj, indent=1))
    return Path(root)


def piebench_fixture_masks(n: int = 4, shape: tuple[int, int] = (512, 512)) -> list[np.ndarray]:
    h, w = shape
    masks = []
    for i in range(n):
        m = np.zeros(shape, bool)
        m[h // 4 + 10 * i: h // 2 + 10 * i, w // 4: w // 2 + 5 * i] = True
        masks.append(m)
    return masks


def write_piebench_fixture(root: str | os.PathLike, n: int = 4, size: int = 512) -> Path:
    """``root/mapping_file.json`` + ``root/annotation_images/<i>_category/<id>.jpg`` (JPEG
    quality 95, as the real benchmark ships JPEGs), ``n`` items over categories 0..n-1,
    RLE masks."""
    root = Path(root)
    mapping = {}
    for i, m in enumerate(piebench_fixture_masks(n, (size, size))):
        key = f"{i:03d}000000{i}"
        rel = f"{i}_category/{key}.jpg"
        p = root / "annotation_images" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        scene(100 + i, (size, size)).save(p, quality=95)
        mapping[key] = {"image_path": rel, "original_prompt": "a [dog] on the grass",
                        "editing_prompt": "a [cat] on the grass", "editing_instruction": "make the dog a cat",
                        "editing_type_id": str(i % 10), "blended_word": "dog cat", "mask": encode_rle_mask(m)}
    (root / "mapping_file.json").write_text(json.dumps(mapping))
    return root


def write_editval_fixture(root: str | os.PathLike, size: tuple[int, int] = (80, 64)) -> Path:
    """``root/object.json`` + ``root/images/000000XXXXXX.jpg`` (COCO names; saved as
    high-quality JPEG) covering every scored edit type."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    obj = {
        "dog": {"1234": {"object_addition": {"from": [], "to": ["ball"]},
                         "positional_addition": {"from": [], "to": ["cup left"]},
                         "size": {"from": [], "to": ["large"]},
                         "color": {"from": [], "to": ["red"]}}},
        "car": {"5678": {"object_replacement": {"from": ["car"], "to": ["tree"]},
                         "position_replacement": {"from": [], "to": ["right"]},
                         "alter_parts": {"from": [], "to": ["add wheels"]}}},
    }
    for i, image_id in enumerate(("1234", "5678")):
        scene(200 + i, size).save(root / "images" / f"{int(image_id):012d}.jpg", quality=95)
    (root / "object.json").write_text(json.dumps(obj))
    return root
