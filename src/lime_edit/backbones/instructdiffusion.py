"""InstructDiffusion (Geng et al., CVPR 2024): ``v1-5-pruned-emaonly-adaption-task[-humanalign].ckpt``.

An SD1.5-layout 8-channel U-Net with its own classifier-free guidance.  With
``e_c`` = instruction + image, ``e_i`` = empty text + image, ``e_t`` = instruction +
no image (zero image latent)::

    eps = 0.5 * (e_i + e_t) + s_T * (e_c - e_i) + s_I * (e_c - e_t)

Composition around the stock pipeline (no fork of the denoising loop): the stock
InstructPix2Pix pipeline already builds rows ``[instruction+image, empty+image,
empty+no image]``; a forward pre-hook on the U-Net swaps the text of the third row
for the instruction's (giving ``[e_c, e_i, e_t]``), and a forward hook returns the
combination above in all three rows.  The stock formula is an affine combination of
the rows whose weights sum to one, so it hands the combination through unchanged
(exactly, in floating point: ``T + s*(T - T) = T``).

Which rows LIME uses, and why:

* localization reads cross-attention in row 0 (``e_c``, instruction + image) and
  clusters row 1 (``e_i``, image only): the same roles as in IP2P, and ``e_i`` is
  the only row that sees the image without the instruction;
* regularization applies to all three rows with the instruction's token positions,
  as the reference does for IP2P: ``e_c`` and ``e_t`` carry the instruction, and
  ``e_i`` (empty text) gets the same positional mask so that the differences
  ``e_c - e_i`` and ``e_c - e_t`` in the formula compare predictions made under
  the same attention constraint inside the RoI.

Sampler defaults are InstructDiffusion's (its edit script): 100 steps, text 5.0,
image 1.25, Euler ancestral on k-diffusion's schedule (:mod:`lime_edit.backbones.kdiffusion`,
however the model is loaded).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from .base import Backbone


def instructdiffusion_combine(e_c: torch.Tensor, e_i: torch.Tensor, e_t: torch.Tensor,
                              text_scale: float, image_scale: float) -> torch.Tensor:
    """InstructDiffusion's guidance formula (see module docstring)."""
    return 0.5 * (e_i + e_t) + text_scale * (e_c - e_i) + image_scale * (e_c - e_t)


class InstructDiffusionBackbone(Backbone):
    name = "instructdiffusion"
    description = "InstructDiffusion (v1-5-pruned-emaonly-adaption-task[-humanalign].ckpt)"
    pipeline_class = "StableDiffusionInstructPix2PixPipeline"
    sampler_defaults = {"num_inference_steps": 100, "guidance_scale": 5.0, "image_guidance_scale": 1.25,
                        "localization_guidance_scale": 5.0}
    scheduler = "euler_ancestral"
    #: scales handed to the stock pipeline: any values that make it run three rows
    _STOCK_SCALES = {"guidance": 2.0, "image_guidance": 1.0}

    @contextlib.contextmanager
    def guidance(self, guidance: float, image_guidance: float, batch: int) -> Iterator[dict]:
        unet = self.pipe.unet

        def pre(module, args, kwargs):
            ehs = kwargs.get("encoder_hidden_states")
            if ehs is None or ehs.shape[0] != 3 * batch:
                raise RuntimeError(f"InstructDiffusion guidance: expected {3 * batch} U-Net rows, "
                                   f"got {None if ehs is None else ehs.shape[0]}")
            c, i, _ = ehs.chunk(3)
            kwargs["encoder_hidden_states"] = torch.cat([c, i, c])        # rows: e_c, e_i, e_t
            return args, kwargs

        def post(module, args, kwargs, output):
            pred = output[0] if isinstance(output, tuple) else output.sample
            e_c, e_i, e_t = pred.chunk(3)
            comb = instructdiffusion_combine(e_c, e_i, e_t, guidance, image_guidance)
            out = torch.cat([comb, comb, comb])
            if isinstance(output, tuple):
                return (out,) + tuple(output[1:])
            output.sample = out
            return output

        h1 = unet.register_forward_pre_hook(pre, with_kwargs=True)
        h2 = unet.register_forward_hook(post, with_kwargs=True)
        try:
            yield dict(self._STOCK_SCALES)
        finally:
            h1.remove()
            h2.remove()
