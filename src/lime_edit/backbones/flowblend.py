"""``preserve="latent"`` on the flow-matching editors whose transformer sees
``[target latents ; context latents]`` (FLUX.1 Kontext, FLUX.2 [klein], Qwen-Image-Edit
when its context grid is the target's).

A flow-matching sampler moves ``x_t = (1 - sigma) x0 + sigma * noise`` from noise
(``sigma = 1``) to the image (``sigma = 0``).  The input image's own latents ``x0`` are the
context tokens the pipeline feeds the transformer, and the noise is the target latents
of the first forward; after every step the target tokens outside the region LIME
regularized are set to the input's point on that line at the scheduler's new sigma.  The
last sigma is 0, so the final latents outside the region ARE the input's latents: the
decoded result is the input after the VAE round trip there (up to the decoder's reach
across the region's edge), and inside the region the edit blends into it without a seam
(unlike ``preserve="outside"``'s pixel composite, which is exact but hard-edged).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from ..errors import LimeEditError


@contextlib.contextmanager
def flow_match_blend(pipe, state) -> Iterator[Callable[[int, torch.Tensor], torch.Tensor]]:
    """Yields ``blend(i, latents) -> latents`` for the step callback (see the module
    docstring); ``state`` is the pass's :class:`~lime_edit.processors.PassState` (its
    ``roi``, read at every step, so a single-pass schedule's RoI applies from its capture
    step on; an item without a region is left alone)."""
    h, w = state.latent_hw
    n = h * w
    seen: dict[str, torch.Tensor] = {}

    def grab(module, args, kwargs):
        if "noise" in seen:
            return None
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        if hidden is None or hidden.shape[1] < 2 * n:
            raise LimeEditError(f"preserve='latent': the transformer sees {0 if hidden is None else hidden.shape[1]} "
                                f"image tokens, not {n} target + {n} context tokens")
        seen["noise"] = hidden[:, :n].detach().clone()
        seen["x0"] = hidden[:, n:2 * n].detach().clone()
        return None

    handle = pipe.transformer.register_forward_pre_hook(grab, with_kwargs=True)

    def blend(i: int, latents: torch.Tensor) -> torch.Tensor:
        if state.roi is None or "x0" not in seen or not state.roi.any():
            return latents
        sched = pipe.scheduler
        sigma = sched.sigmas[sched.step_index].to(latents.device, torch.float32)       # after step i
        ref = (1 - sigma) * seen["x0"].float() + sigma * seen["noise"].float()
        roi = F.interpolate(state.roi[:, None].float(), size=(h, w), mode="nearest")[:, 0] > 0.5
        has = state.roi.flatten(1).any(1)
        keep = (~roi.flatten(1) & has[:, None]).to(latents.device)[..., None]            # (B, N, 1)
        return torch.where(keep, ref.to(latents.dtype), latents)

    try:
        yield blend
    finally:
        handle.remove()
