"""Original-LDM single files of tiny models of every family, loaded through diffusers' real
``from_single_file`` conversion with a local ``config=`` folder (offline)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lime_edit.testing_ldm import (RELEASES, tiny_sd2_ip2p_components, tiny_sdxl_ip2p_components,
                                   tiny_sdxl_ip2p_pipeline, unet_state_dict_to_ldm,
                                   write_config_folder, write_ldm_checkpoint, write_release_lookalike)

PIPELINES = {"sd1": "StableDiffusionInstructPix2PixPipeline",
             "sd2": "StableDiffusionInstructPix2PixPipeline",
             "sdxl": "StableDiffusionXLInstructPix2PixPipeline",
             "cosxl": "StableDiffusionXLInstructPix2PixPipeline"}
LAYOUT = {"sd1": "sd1", "sd2": "sd2", "sdxl": "sdxl", "cosxl": "sdxl"}
MODEL_TYPES = {"sd1": "instruct-pix2pix", "sd2": "v2", "sdxl": "xl_base", "cosxl": "xl_base"}
WEIGHTED = ("unet", "vae", "text_encoder", "text_encoder_2")


def _components(layout, tok_dir):
    if layout == "sd1":
        from lime_edit.testing import tiny_components

        comps = tiny_components(tok_dir)
        for name in WEIGHTED:  # as loaded models are (train mode shifts outputs by ~1e-6)
            if name in comps:
                comps[name].eval()
        return comps
    if layout == "sd2":
        return tiny_sd2_ip2p_components(tok_dir)
    return tiny_sdxl_ip2p_components(tok_dir, cosxl=layout == "cosxl")


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """family -> (components, config folder, {suffix: checkpoint path}), built once per module."""
    cache = {}

    def get(layout):
        if layout not in cache:
            root = tmp_path_factory.mktemp(f"ldm-{layout}")
            comps = _components(layout, root / "tok")
            folder = write_config_folder(comps, root / "config", PIPELINES[layout])
            files = {s: write_ldm_checkpoint(comps, root / f"model{s}", LAYOUT[layout])
                     for s in (".safetensors", ".ckpt")}
            cache[layout] = comps, folder, files
        return cache[layout]

    return get


def _load(layout, path, folder, **kwargs):
    import diffusers

    cls = getattr(diffusers, PIPELINES[layout])
    pipe = cls.from_single_file(str(path), config=str(folder), local_files_only=True, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _pipeline(layout, comps):
    import diffusers

    pipe = getattr(diffusers, PIPELINES[layout])(**comps)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _edit(pipe, scene):
    return pipe("make the red square blue", image=scene, num_inference_steps=2,
                generator=torch.Generator().manual_seed(0), output_type="np").images


def _assert_same_weights(a, b, name):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys(), f"{name}: {sorted(set(sa) ^ set(sb))[:5]}"
    differ = [k for k in sa if sa[k].shape != sb[k].shape or not torch.equal(sa[k], sb[k])]
    assert not differ, f"{name}: {len(differ)} tensors differ, e.g. {differ[:3]}"


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
@pytest.mark.parametrize("layout", ["sd1", "sd2", "sdxl"])
def test_single_file_round_trips_every_weight(family, layout, suffix):
    comps, folder, files = family(layout)
    pipe = _load(layout, files[suffix], folder)
    for name in WEIGHTED:
        if name in comps:
            _assert_same_weights(comps[name], getattr(pipe, name), name)
    assert type(pipe.scheduler) is type(comps["scheduler"])
    def settings(s):
        return {k: v for k, v in s.config.items() if not k.startswith("_")}

    assert settings(pipe.scheduler) == settings(comps["scheduler"])
    assert pipe.tokenizer.pad_token_id == comps["tokenizer"].pad_token_id
    if layout == "sdxl":
        assert pipe.tokenizer_2.pad_token_id == comps["tokenizer_2"].pad_token_id == 0
        assert pipe.tokenizer.pad_token_id != 0


@pytest.mark.parametrize("layout", ["sd1", "sd2", "sdxl", "cosxl"])
def test_loaded_single_file_edits_like_the_original(family, layout, scene):
    comps, folder, files = family(layout)
    expected = _edit(_pipeline(layout, comps), scene)
    got = _edit(_load(layout, files[".safetensors"], folder), scene)
    assert expected.shape == (1, 64, 64, 3)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("layout", ["sd1", "sd2", "sdxl", "cosxl"])
def test_diffusers_recognises_the_family(family, layout):
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type, load_single_file_checkpoint

    _, _, files = family(layout)
    for path in files.values():
        sd = load_single_file_checkpoint(str(path))
        assert infer_diffusers_model_type(sd) == MODEL_TYPES[layout]
        # CosXL's only mark in the file: EDM v-prediction scalars at the top level
        assert ("edm_vpred.sigma_max" in sd) == (layout == "cosxl")


def test_cosxl_settings_come_from_the_config_folder(family):
    comps, folder, files = family("cosxl")
    pipe = _load("cosxl", files[".safetensors"], folder)
    assert pipe.is_cosxl_edit is True
    assert type(pipe.scheduler).__name__ == "EDMEulerScheduler"
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.scheduler.config.sigma_max == 120.0


def test_ldm_key_layout_matches_the_original_names(family):
    from safetensors.torch import load_file

    sd = load_file(str(family("sd1")[2][".safetensors"]))
    assert sd["model.diffusion_model.input_blocks.0.0.weight"].shape[1] == 8
    assert "model.diffusion_model.input_blocks.1.1.proj_in.weight" in sd
    assert "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight" in sd
    assert sd["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4  # 1x1 conv, as in LDM
    assert "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight" in sd

    sd2 = load_file(str(family("sd2")[2][".safetensors"]))
    assert sd2["model.diffusion_model.input_blocks.1.1.proj_in.weight"].ndim == 2  # linear projection
    qkv = sd2["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"]
    assert qkv.shape == (3 * 1024, 1024)
    assert not any(k.startswith("cond_stage_model.transformer.") for k in sd2)

    sdxl = load_file(str(family("sdxl")[2][".safetensors"]))
    comps = family("sdxl")[0]
    proj = comps["text_encoder_2"].text_projection.weight  # (projection_dim, width)
    assert torch.equal(sdxl["conditioner.embedders.1.model.text_projection"], proj.T)
    assert "model.diffusion_model.label_emb.0.0.weight" in sdxl
    assert "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight" in sdxl
    # SDXL's first level has no attention: input block 1 is a bare resnet
    assert not any(k.startswith("model.diffusion_model.input_blocks.1.1.") for k in sdxl)


def test_ckpt_is_a_lightning_style_pickle_and_instructdiffusion_style_has_only_state_dict(family, tmp_path):
    comps, folder, files = family("sd1")
    lightning = torch.load(files[".ckpt"], map_location="cpu", weights_only=True)
    assert set(lightning) == {"state_dict", "global_step"}
    # InstructDiffusion's release (scripts/convert_ckpt.py) is {"state_dict": params} only.
    path = write_ldm_checkpoint(comps, tmp_path / "v1-5-pruned-emaonly-adaption-task.ckpt", "sd1",
                                global_step=None)
    released = torch.load(path, map_location="cpu", weights_only=True)
    assert set(released) == {"state_dict"}
    assert not any(k.startswith("model_ema") for k in released["state_dict"])
    pipe = _load("sd1", path, folder)
    _assert_same_weights(comps["unet"], pipe.unet, "unet")


@pytest.mark.parametrize("layout", ["sd1", "sd2"])
def test_training_checkpoint_with_ema_and_buffers_loads(family, layout, tmp_path):
    """IP2P / MagicBrush / HIVE training checkpoints (use_ema: true) carry LitEma copies the
    authors sample with, DDPM schedule buffers and CLIP position ids; diffusers skips the extras
    and takes the EMA U-Net with ``extract_ema=True``, the raw one otherwise."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    comps, folder, _ = family(layout)
    torch.manual_seed(123)
    ema = UNet2DConditionModel.from_config(comps["unet"].config)
    path = write_ldm_checkpoint(comps, tmp_path / "train.ckpt", layout, ema_unet=ema,
                                training_extras=True, global_step=22000)
    sd = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    assert "model_ema.diffusion_modelinput_blocks00weight" in sd
    reference = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    torch.testing.assert_close(sd["alphas_cumprod"], reference.alphas_cumprod)
    raw = _load(layout, path, folder)
    for name in ("unet", "vae", "text_encoder"):
        _assert_same_weights(comps[name], getattr(raw, name), name)
    _assert_same_weights(ema, _load(layout, path, folder, extract_ema=True).unet, "ema unet")


def test_writer_refuses_what_it_cannot_name(family, tmp_path):
    comps, _, _ = family("sd1")
    with pytest.raises(ValueError, match="suffix"):
        write_ldm_checkpoint(comps, tmp_path / "model.bin", "sd1")
    with pytest.raises(ValueError, match="layout"):
        write_ldm_checkpoint(comps, tmp_path / "model.ckpt", "sd3")
    with pytest.raises(ValueError, match="text_encoder_2"):
        write_ldm_checkpoint(comps, tmp_path / "model.ckpt", "sdxl")
    with pytest.raises(ValueError, match="training_extras"):
        write_ldm_checkpoint(family("sdxl")[0], tmp_path / "model.ckpt", "sdxl", training_extras=True)
    assert list(tmp_path.iterdir()) == []  # nothing half-written

    from diffusers import UNet2DConditionModel

    uneven = UNet2DConditionModel(sample_size=8, in_channels=8, out_channels=4, block_out_channels=(8, 8),
                                  layers_per_block=(1, 2), norm_num_groups=4, cross_attention_dim=8,
                                  down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=2)
    with pytest.raises(ValueError, match="layers_per_block"):
        unet_state_dict_to_ldm(uneven)


def test_config_folder_holds_no_weights(family):
    import json

    comps, folder, _ = family("sdxl")
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLInstructPix2PixPipeline"
    assert index["text_encoder_2"] == ["transformers", "CLIPTextModelWithProjection"]
    assert index["force_zeros_for_empty_prompt"] is True
    weights = [p for p in folder.rglob("*") if p.suffix in (".safetensors", ".bin", ".ckpt", ".pt")]
    assert weights == []


def test_sd2_tiny_model_has_sd2_layout(family):
    comps = family("sd2")[0]
    unet, text = comps["unet"], comps["text_encoder"]
    assert unet.config.use_linear_projection and unet.config.in_channels == 8
    assert unet.config.cross_attention_dim == text.config.hidden_size == 1024
    assert text.config.hidden_act == "gelu"
    attn = [m for n, m in unet.named_modules() if n.endswith("attn2")]
    assert attn and all(m.inner_dim // m.heads == 64 for m in attn)
    assert comps["tokenizer"].pad_token == "!" and comps["tokenizer"].pad_token_id == 0
    assert comps["scheduler"].config.prediction_type == "epsilon"


def test_sdxl_tiny_model_has_sdxl_layout(family):
    comps = family("sdxl")[0]
    unet = comps["unet"]
    assert unet.config.addition_embed_type == "text_time"
    assert unet.config.cross_attention_dim == (comps["text_encoder"].config.hidden_size
                                               + comps["text_encoder_2"].config.hidden_size)
    assert unet.config.projection_class_embeddings_input_dim == (
        6 * unet.config.addition_time_embed_dim + comps["text_encoder_2"].config.projection_dim)
    assert not hasattr(unet.down_blocks[0], "attentions")
    depth = [len(b.attentions[0].transformer_blocks) for b in unet.down_blocks[1:]]
    assert depth == [2, 3] and len(unet.mid_block.attentions[0].transformer_blocks) == 3


def test_tiny_sdxl_pipeline_edits(tmp_path, scene):
    pipe = tiny_sdxl_ip2p_pipeline(tmp_path / "tok")
    assert pipe.watermark is None
    out = _edit(pipe, scene)
    assert out.shape == (1, 64, 64, 3) and np.isfinite(out).all()


def test_release_lookalikes_have_each_release_format(family, tmp_path):
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type, load_single_file_checkpoint

    family_of = {"sd1": "sd1", "sd2": "sd2", "sdxl": "cosxl"}
    names = [n for n in RELEASES if n != "hive_v2_rw.ckpt"]  # one SD2 file is enough (~70 MB each)
    for name in names:
        spec = RELEASES[name]
        fam = family_of[spec["layout"]]
        path = write_release_lookalike(name, family(fam)[0], tmp_path)
        assert path.name == name
        sd = load_single_file_checkpoint(str(path))
        assert infer_diffusers_model_type(sd) == MODEL_TYPES[fam], name
        assert any(k.startswith("model_ema.") for k in sd) == spec["training"], name
        assert ("alphas_cumprod" in sd) == spec["training"], name
        if path.suffix == ".ckpt":
            top = torch.load(path, map_location="cpu", weights_only=True)
            assert set(top) == ({"state_dict", "global_step"} if spec["training"] else {"state_dict"}), name
        path.unlink()
    with pytest.raises(ValueError, match="CosXL"):
        write_release_lookalike("cosxl_edit.safetensors", family("sdxl")[0], tmp_path)
