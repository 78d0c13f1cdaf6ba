"""Where LIME's extra time goes: localization U-Net steps, clustering + RoI, edit pass.

    python benchmarks/profile_stages.py --device cuda --dtype fp16 --size 512 --full-sd

Same random SD1.5-shaped model as ``speed_memory.py``. Prints the median over
``--repeats`` of each stage (CUDA-synchronised), for the reference and the fast
schedule.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed_memory import sd15_like_pipeline  # noqa: E402

from lime_edit import LimeConfig, LimePipeline  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--full-sd", action="store_true")
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args(argv)
    dev = torch.device(a.device)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, None: None}[a.dtype]
    if dtype is None:
        dtype = torch.float16 if dev.type == "cuda" else torch.float32

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    with tempfile.TemporaryDirectory() as tmp:
        pipe = sd15_like_pipeline(a.full_sd, tmp).to(dev, dtype)
        pipe.set_progress_bar_config(disable=True)
        import numpy as np
        from PIL import Image

        image = Image.fromarray((np.random.RandomState(0).rand(a.size, a.size, 3) * 255).astype(np.uint8))
        instr = "make the red car blue"
        for name, cfg in (("reference", LimeConfig(num_inference_steps=a.steps)),
                          ("fast", LimeConfig.fast().replace(num_inference_steps=a.steps))):
            lp = LimePipeline(pipe, config=cfg)
            stages = {"run_pass": [], "clustering_roi": []}
            orig_run, orig_loc = lp._run, lp._localizations

            def timed(fn, key):
                def wrapper(*args, **kw):
                    sync()
                    t = time.perf_counter()
                    out = fn(*args, **kw)
                    sync()
                    stages[key].append(time.perf_counter() - t)
                    return out
                return wrapper

            lp._run = timed(orig_run, "run_pass")
            lp._localizations = timed(orig_loc, "clustering_roi")
            totals, plains, loc_pass, edit_pass, clus = [], [], [], [], []
            for r in range(a.repeats + 1):             # the first round is a warm-up
                sync(); t = time.perf_counter()
                lp.edit(image, instr, mask=None, seed=0)
                sync(); plains.append(time.perf_counter() - t)
                for v in stages.values():
                    v.clear()
                sync(); t = time.perf_counter()
                lp.edit(image, instr, mask="auto", seed=0)
                sync(); totals.append(time.perf_counter() - t)
                loc_pass.append(stages["run_pass"][0]); edit_pass.append(stages["run_pass"][1])
                clus.append(stages["clustering_roi"][0])
            med = statistics.median
            print(f"[{name}] plain {med(plains[1:]):.3f}s | LIME total {med(totals[1:]):.3f}s = "
                  f"localization pass {med(loc_pass[1:]):.3f}s + clustering/RoI {med(clus[1:]):.3f}s "
                  f"+ edit pass {med(edit_pass[1:]):.3f}s (+ rest)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
