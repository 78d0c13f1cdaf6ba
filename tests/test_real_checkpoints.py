"""Real released checkpoints, when present: ``LIME_EDIT_SLOW=1 LIME_EDIT_CHECKPOINTS=DIR pytest -m slow``.

DIR holds the files under their release names; each missing one is skipped.  Hub copies of
the configs must be cached (or the Hub reachable) for the single files.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

RELEASES = {
    "MagicBrush-epoch-52-step-4999.ckpt": "ip2p",
    "hive_rw.ckpt": "hive",
    "hive_rw_condition.ckpt": "hive",
    "hive_v2_rw.ckpt": "hive",
    "hive_v2_rw_condition.ckpt": "hive",
    "v1-5-pruned-emaonly-adaption-task.ckpt": "instructdiffusion",
    "v1-5-pruned-emaonly-adaption-task-humanalign.ckpt": "instructdiffusion",
    "cosxl_edit.safetensors": "sdxl-ip2p",
}


@pytest.mark.slow
@pytest.mark.parametrize("name,family", sorted(RELEASES.items()))
def test_release_loads_and_localizes(name, family):
    path = Path(os.environ.get("LIME_EDIT_CHECKPOINTS", "/nonexistent")) / name
    if not path.is_file():
        pytest.skip(f"{name} not present")
    from lime_edit import LimeConfig, LimePipeline

    lp = LimePipeline.from_pretrained(str(path), allow_pickle=True)
    assert lp.backbone.name == family
    rng = np.random.RandomState(0)
    image = Image.fromarray((rng.rand(512, 512, 3) * 255).astype(np.uint8))
    fast = LimeConfig.fast()
    loc = lp.localize(image, "make the sky blue", localization_steps=fast.localization_steps,
                      capture_at=fast.capture_at)
    assert loc.mask.any()


#: the joint-attention transformers: diffusers folders under their Hub names, or Kontext's
#: transformer-only release file (its other components from the Hub's Kontext folder)
TRANSFORMER_RELEASES = {
    "FLUX.1-Kontext-dev": "kontext",
    "flux1-kontext-dev.safetensors": "kontext",
    "Qwen-Image-Edit": "qwen-image-edit",
    "Qwen-Image-Edit-2509": "qwen-image-edit",
    "Qwen-Image-Edit-2511": "qwen-image-edit",
    "FLUX.2-klein-4B": "flux2",
    "FLUX.2-klein-9B": "flux2",
}


@pytest.mark.slow
@pytest.mark.parametrize("name,family", sorted(TRANSFORMER_RELEASES.items()))
def test_transformer_release_loads_localizes_and_edits(name, family):
    path = Path(os.environ.get("LIME_EDIT_CHECKPOINTS", "/nonexistent")) / name
    if not path.exists():
        pytest.skip(f"{name} not present")
    import torch

    from lime_edit import LimePipeline

    if not torch.cuda.is_available():
        pytest.skip("a transformer release needs a GPU")
    lp = LimePipeline.from_pretrained(str(path), offload=os.environ.get("LIME_EDIT_OFFLOAD") == "1")
    assert lp.backbone.name == family and lp.pipe.transformer.dtype == torch.bfloat16
    rng = np.random.RandomState(0)
    image = Image.fromarray((rng.rand(1024, 1024, 3) * 255).astype(np.uint8))
    steps = min(8, lp.config.num_inference_steps)
    res = lp.edit(image, "make the sky blue", num_inference_steps=steps, preserve="latent")
    assert res.localization is not None and res.localization.mask.any() and res.image.size == (1024, 1024)
