"""k-diffusion's discrete noise schedule as a diffusers scheduler (HIVE, InstructDiffusion).

The HIVE and InstructDiffusion edit scripts sample with k-diffusion: a ``CompVisDenoiser``
around the original-LDM model, ``get_sigmas(n)`` and ``sample_euler_ancestral``.  The
schedule ``get_sigmas(n)`` gives is

* ``n`` fractional timesteps evenly spaced from ``T - 1`` down to 0 (``T`` = 1000);
* at each, the noise level interpolated **log-linearly** between the two integer
  timesteps around it, from the model's own table
  ``sigma_t = sqrt((1 - alphas_cumprod_t) / alphas_cumprod_t)``;
* a final 0 (the last step lands on the clean latent, with no noise added); no sigma is
  discarded and the levels are not quantized (``CompVisDenoiser``'s default
  ``quantize=False``), so the model is called at the fractional timestep itself.

diffusers' ``EulerAncestralDiscreteScheduler`` with ``timestep_spacing="linspace"`` has the
same timesteps, start noise (``sigma_max``), input scaling and Euler-ancestral step, but
interpolates sigma itself linearly (up to 8.5e-5 relative apart at 100 steps).  It has no
option for k-diffusion's interpolation, so this subclass replaces only that.

The table is the one the LDM checkpoint's sampler builds: for the ``linear`` /
``scaled_linear`` beta schedules the betas and their cumulative product are computed in
float64 and rounded to float32 once (as the original code stores them; diffusers' float32
cumulative product drifts from it by up to 1e-6 relative).  The interpolation is done in
float64 and rounded once, so the sigmas are within float32 rounding of k-diffusion's.
Remaining difference from the official sampler, by design: k-diffusion calls the model at
``sigma_to_t(sigma)``, which recovers the timestep from the float32 sigma with float32
round-off (up to ~1e-4 apart from the exact timestep at 50-100 steps); this scheduler calls
it at the exact timestep.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import EulerAncestralDiscreteScheduler


def ldm_alphas_cumprod(config) -> np.ndarray | None:
    """``alphas_cumprod`` as the original-LDM code computes it (float64, stored as float32),
    for the beta schedules it has; None for any other (use the scheduler's own)."""
    if config.get("trained_betas") is not None or config.get("rescale_betas_zero_snr"):
        return None
    n, b0, b1 = config.num_train_timesteps, config.beta_start, config.beta_end
    if config.beta_schedule == "scaled_linear":       # LDM's "linear": linear in sqrt(beta)
        betas = np.linspace(b0 ** 0.5, b1 ** 0.5, n, dtype=np.float64) ** 2
    elif config.beta_schedule == "linear":
        betas = np.linspace(b0, b1, n, dtype=np.float64)
    else:
        return None
    return np.cumprod(1.0 - betas).astype(np.float32)


def kdiffusion_sigmas(alphas_cumprod, num_inference_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """``(timesteps, sigmas)`` of k-diffusion's ``get_sigmas(n)`` for that table: ``n``
    timesteps from ``T - 1`` to 0 and ``n + 1`` sigmas (the last 0), in float64."""
    ac = np.asarray(alphas_cumprod, dtype=np.float64)
    log_sigmas = 0.5 * np.log((1.0 - ac) / ac)
    t = np.linspace(len(ac) - 1, 0, num_inference_steps, dtype=np.float64)
    low = np.floor(t).astype(np.int64)
    high = np.ceil(t).astype(np.int64)
    w = t - low
    sigmas = np.exp((1.0 - w) * log_sigmas[low] + w * log_sigmas[high])
    return t, np.concatenate([sigmas, [0.0]])


class KDiffusionEulerAncestralScheduler(EulerAncestralDiscreteScheduler):
    """Euler ancestral on k-diffusion's ``get_sigmas`` schedule (see the module docstring).

    ``timestep_spacing`` is not read: the timesteps are always k-diffusion's (the same as
    diffusers' ``"linspace"``); the start noise is ``sigma_max`` as k-diffusion's."""

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device = None):
        super().set_timesteps(num_inference_steps, device=device)   # counters, bookkeeping
        table = ldm_alphas_cumprod(self.config)
        if table is None:
            table = self.alphas_cumprod.numpy()
        t, sigmas = kdiffusion_sigmas(table, num_inference_steps)
        self.timesteps = torch.from_numpy(t.astype(np.float32)).to(device=device)
        self.sigmas = torch.from_numpy(sigmas.astype(np.float32))     # kept on the CPU, as diffusers does

    @property
    def init_noise_sigma(self):
        return self.sigmas.max()
