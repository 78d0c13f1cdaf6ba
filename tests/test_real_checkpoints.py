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
