"""Benchmark harness: MagicBrush, PIE-Bench and EditVal, scored the way their own code scores them.

Two steps, kept apart (``lime-edit eval`` and ``lime-edit score``):

- :mod:`lime_edit.eval.generate` runs :class:`lime_edit.LimePipeline` (LIME or plain
  IP2P) on a benchmark and writes each edited image in the layout that benchmark's
  scorer expects, plus a manifest.
- :mod:`lime_edit.eval.score` scores any method's outputs in that layout: per-sample
  CSV rows, a JSON report and the paper's table with its quoted reference rows.

Building blocks: :mod:`.datasets` (readers for the three data layouts, RLE masks),
:mod:`.metrics` (pure metric functions and the EditVal rules), :mod:`.extractors`
(CLIP / DINO / OWL-ViT feature extractors with one loading interface),
:mod:`.lpips` (LPIPS-SqueezeNet in plain torch, no torchvision), :mod:`.runner`
(resumable atomic per-sample work, sharding under ``accelerate launch``) and
:mod:`.references` (the published numbers, quoted).

Nothing heavy is imported here.
"""

BENCHMARKS = ("magicbrush", "piebench", "editval")

__all__ = ["BENCHMARKS"]
