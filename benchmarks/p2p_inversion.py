"""How well DDIM inversion alone (no Direct Inversion) comes back: invert held-out synthetic
scenes under their captions, sample back with plain DDIM (guidance 1), and report the mean
relative L1 between the start latent and the result.

    python benchmarks/p2p_inversion.py --model /path/to/t2i_pipeline      # default: demo-t2i
    python benchmarks/p2p_inversion.py --model FOLDER --n 8 --steps 50

For a v-prediction model it also reports the former step (v read at the lower noise level, as
diffusers' ``DDIMInverseScheduler`` does), which is not the inverse of ``DDIMScheduler.step``;
``lime_edit.p2p_control.ddim_step_forward`` is.  P2P's source branch does not depend on this
(Direct Inversion puts it back on the trajectory every step); its target branch starts from the
inverted latent.
"""

from __future__ import annotations

import argparse

import torch


def lower_level_v_step(scheduler, out: torch.Tensor, t: int, x: torch.Tensor) -> torch.Tensor:
    """The former v-prediction inversion step: x and v read at the lower noise level."""
    ratio = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    ac = scheduler.alphas_cumprod
    a_p = ac[t - ratio] if t - ratio >= 0 else scheduler.final_alpha_cumprod
    a_t = ac[t]
    x0 = a_p.sqrt() * x - (1 - a_p).sqrt() * out
    eps = a_p.sqrt() * out + (1 - a_p).sqrt() * x
    return a_t.sqrt() * x0 + (1 - a_t).sqrt() * eps


def main(argv=None) -> int:
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from lime_edit.demo.scenes import make_edit
    from lime_edit.loading import resolve_model
    from lime_edit.p2p_control import ddim_step_forward

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="demo-t2i", help="text-to-image pipeline folder (default demo-t2i)")
    ap.add_argument("--n", type=int, default=8, help="held-out scenes (default 8)")
    ap.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50, P2P's)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = StableDiffusionPipeline.from_pretrained(resolve_model(args.model), safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scenes = [make_edit(s, "test") for s in range(args.n)]
    rows = [("exact inverse of the DDIM step (lime-edit)", ddim_step_forward)]
    if pipe.scheduler.config.prediction_type == "v_prediction":
        rows.append(("v read at the lower noise level (former)", lower_level_v_step))
    with torch.no_grad():
        x = pipe.image_processor.preprocess([e.image for e in scenes])
        z0 = pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor
        emb = pipe.encode_prompt([e.caption for e in scenes], "cpu", 1, do_classifier_free_guidance=False)[0]
        print(f"{args.model}: prediction_type {pipe.scheduler.config.prediction_type}, {args.n} held-out scenes, "
              f"{args.steps} DDIM steps, guidance 1")
        for name, step in rows:
            pipe.scheduler.set_timesteps(args.steps)
            z = z0
            for t in pipe.scheduler.timesteps.flip(0):
                z = step(pipe.scheduler, pipe.unet(z, t, encoder_hidden_states=emb).sample, int(t), z)
            back = pipe(prompt_embeds=emb, latents=z, num_inference_steps=args.steps, guidance_scale=1.0,
                        output_type="latent").images
            err = (back - z0).abs().mean((1, 2, 3)) / z0.abs().mean((1, 2, 3))
            print(f"  {name}: relative latent L1 {float(err.mean()):.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
