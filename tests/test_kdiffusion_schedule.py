"""HIVE and InstructDiffusion sample on k-diffusion's schedule, as their official edit scripts.

The reference here is written from the definition (not from the scheduler): the LDM
model's noise table (betas linear in sqrt(beta), cumulative product in float64, stored
as float32), ``n`` timesteps evenly from 999 to 0, log-sigma interpolated linearly
between the integer timesteps around each, then a final 0.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lime_edit import LimePipeline
from lime_edit.backbones import HIVE_CONDITION, HiveBackbone, InstructDiffusionBackbone
from lime_edit.testing_ldm import write_config_folder, write_ldm_checkpoint

FAMILIES = [HiveBackbone, InstructDiffusionBackbone]
STEP_COUNTS = [10, 20, 50, 100, 37]


def reference_sigmas(n: int) -> np.ndarray:
    sqrt_betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000)
    table = np.cumprod(1.0 - sqrt_betas ** 2).astype(np.float32).astype(np.float64)
    out = []
    for t in np.linspace(999.0, 0.0, n):
        i = int(t)
        j = min(i + 1, 999)
        frac = t - i
        log_lo = np.log(np.sqrt((1 - table[i]) / table[i]))
        log_hi = np.log(np.sqrt((1 - table[j]) / table[j]))
        out.append(np.exp(log_lo + frac * (log_hi - log_lo)))
    return np.array(out + [0.0])


def _sd_euler(**kw):
    from diffusers import EulerAncestralDiscreteScheduler

    return EulerAncestralDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", **kw)


def _check_schedule(sched, n):
    sched.set_timesteps(n)
    ref = reference_sigmas(n)
    got = sched.sigmas.double().numpy()
    assert got.shape == ref.shape and got[-1] == 0.0                       # the final 0 appended
    assert np.abs(got[:-1] / ref[:-1] - 1).max() < 2e-7                     # float32 rounding
    assert np.allclose(sched.timesteps.double().numpy(), np.linspace(999, 0, n), rtol=0, atol=1e-4)
    assert float(sched.init_noise_sigma) == float(sched.sigmas[0])          # k-diffusion: randn * sigmas[0]


def test_the_reference_tells_the_interpolations_apart():
    """diffusers' linear interpolation is 8.5e-5 relative away at 100 steps: far beyond the tolerance."""
    sched = _sd_euler(timestep_spacing="linspace")
    sched.set_timesteps(100)
    rel = np.abs(sched.sigmas[:-1].double().numpy() / reference_sigmas(100)[:-1] - 1)
    assert rel.max() > 5e-5 and rel[4] > 3e-6


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
@pytest.mark.parametrize("n", STEP_COUNTS)
@pytest.mark.parametrize("spacing", ["leading", "linspace"])
def test_family_scheduler_is_kdiffusions(family, n, spacing):
    """From whatever Euler / config the model brings (here SD1.5's, "leading" or "linspace")."""
    _check_schedule(family.family_scheduler(_sd_euler(timestep_spacing=spacing)), n)
    _check_schedule(family.single_file_scheduler(_sd_euler(timestep_spacing=spacing), None, {}), n)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """The tiny SD1.5-layout editor as a HIVE / InstructDiffusion single file, and as a folder."""
    from lime_edit.testing import tiny_components

    root = tmp_path_factory.mktemp("kd")
    comps = tiny_components(root / "tok")
    for name in ("unet", "vae", "text_encoder"):
        comps[name].eval()
    config = write_config_folder(comps, root / "config", "StableDiffusionInstructPix2PixPipeline")
    files = {fam: write_ldm_checkpoint(comps, root / name, "sd1") for fam, name in (
        ("hive", "hive_rw.safetensors"), ("instructdiffusion", "v1-5-pruned-emaonly-adaption-task.safetensors"))}
    folder = root / "hive-folder"                    # the same model as a diffusers folder
    from diffusers import StableDiffusionInstructPix2PixPipeline

    StableDiffusionInstructPix2PixPipeline(**comps).save_pretrained(str(folder))
    return config, files, folder


def _from(loaded, how, family):
    config, files, folder = loaded
    if how == "single file":
        lp = LimePipeline.from_pretrained(str(files[family]), model_config=str(config), device="cpu",
                                          local_files_only=True)
    else:
        lp = LimePipeline.from_pretrained(str(folder), backbone=family, device="cpu")
    assert lp.backbone.name == family
    lp.pipe.set_progress_bar_config(disable=True)
    return lp


@pytest.mark.parametrize("how", ["single file", "folder"])
@pytest.mark.parametrize("family", ["hive", "instructdiffusion"])
def test_loaded_pipeline_samples_on_kdiffusions_schedule(loaded, how, family):
    lp = _from(loaded, how, family)
    for n in (100, 37):
        _check_schedule(lp.pipe.scheduler, n)


def _kdiffusion_euler_ancestral(pipe, image, prompt, n, text_scale, image_scale, seed):
    """A k-diffusion-style Euler-ancestral loop on the reference sigmas, IP2P guidance,
    drawing the noise in the pipeline's order (start latent, then one draw per step)."""
    sigmas = torch.tensor(reference_sigmas(n), dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    tok, te = pipe.tokenizer, pipe.text_encoder

    def enc(text):
        ids = tok(text, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids
        return te(ids)[0]
    c, e = enc(prompt), enc("")
    z_img = pipe.vae.encode(pipe.image_processor.preprocess(image)).latent_dist.mode()
    x = torch.randn((1, 4, *z_img.shape[-2:]), generator=gen) * sigmas[0]
    for i, t in enumerate(np.linspace(999.0, 0.0, n)):
        s, s_next = sigmas[i], sigmas[i + 1]
        inp = torch.cat([x] * 3) / (s ** 2 + 1) ** 0.5
        inp = torch.cat([inp, torch.cat([z_img, z_img, torch.zeros_like(z_img)])], 1)
        e_txt, e_img, e_unc = pipe.unet(inp, torch.tensor(t, dtype=torch.float32),
                                        encoder_hidden_states=torch.cat([c, e, e])).sample.chunk(3)
        eps = e_unc + text_scale * (e_txt - e_img) + image_scale * (e_img - e_unc)
        denoised = x - s * eps
        up = torch.minimum(s_next, (s_next ** 2 * (s ** 2 - s_next ** 2) / s ** 2) ** 0.5)
        down = (s_next ** 2 - up ** 2) ** 0.5
        x = x + (x - denoised) / s * (down - s)
        noise = torch.randn(x.shape, generator=gen)
        if s_next > 0:
            x = x + noise * up
    return x


@torch.no_grad()
def test_loaded_hive_trajectory_is_kdiffusions(loaded, scene):
    lp = _from(loaded, "folder", "hive")
    n, prompt = 37, "make the red square blue"
    got = lp.pipe(prompt, image=scene, num_inference_steps=n, guidance_scale=7.5, image_guidance_scale=1.5,
                  generator=torch.Generator().manual_seed(5), output_type="latent").images
    ref = _kdiffusion_euler_ancestral(lp.pipe, scene, prompt, n, 7.5, 1.5, 5)
    assert torch.allclose(got, ref, rtol=0, atol=2e-5), (got - ref).abs().max()


@pytest.mark.parametrize("name,on", [
    ("hive_rw_condition.ckpt", True), ("hive_v2_rw_condition.ckpt", True),     # the released ones
    ("hive_rw_label.ckpt", True), ("hive-rw-label.safetensors", True),         # rw_label scripts' default
    ("hive_rw.ckpt", False), ("hive_v2_rw.ckpt", False), ("hive.ckpt", False),  # edit_cli.py's
])
def test_hive_reward_suffix_follows_the_official_scripts(name, on):
    assert HiveBackbone.default_options(f"/x/{name}")["prompt_suffix"] == (HIVE_CONDITION if on else "")
