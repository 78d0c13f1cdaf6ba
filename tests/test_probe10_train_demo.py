"""Probe 10: ``lime-edit train-demo`` interrupted, killed, or rerun on a damaged folder.

Each test failed before its fix:
- a garbage or empty ``pipeline_step.txt`` / ``stage_b_t2i/partial/step.txt`` was a
  ``ValueError: invalid literal for int()`` traceback;
- a truncated text-encoder checkpoint was a ``SafetensorError`` traceback;
- a kill while the VAE or the finished text-to-image stage was being written (the VAE was
  also rewritten in place on every resume) left a half-written stage that every rerun then
  failed to load;
- a missing ``stage_a_vae`` beside later stages retrained the VAE and silently reused the
  text-to-image stage and the editor trained on the old VAE's latents;
- ``--install`` removed the package's weights before copying: a copy that failed (folder not
  writable) or was interrupted lost the installed weights.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from lime_edit import cli

SETTINGS = ["--n-train", "12", "--vae-steps", "2", "--t2i-steps", "2", "--edit-steps", "2", "--batch", "2",
            "--ckpt-every", "2", "--recommend-n", "0", "--threads", "1"]


def train(out, capsys, *extra):
    threads = torch.get_num_threads()
    try:
        code = cli.main(["train-demo", "--out", str(out), *SETTINGS, *extra])
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped cli.main")
    finally:
        torch.set_num_threads(threads)
    out_, err = capsys.readouterr()
    assert "Traceback" not in err and "Traceback" not in out_
    return code, out_, err


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny run (every stage saved)."""
    out = tmp_path_factory.mktemp("td") / "base"
    threads = torch.get_num_threads()
    try:
        assert cli.main(["train-demo", "--out", str(out), *SETTINGS]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture
def folder(finished, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    return out


def _to_partial_t2i(out: Path, step_text: str) -> None:
    """The folder as a run interrupted in the text-to-image stage left it."""
    partial = out / "stage_b_t2i" / "partial"
    partial.mkdir()
    for name in ("unet", "text_encoder"):
        (out / "stage_b_t2i" / name).rename(partial / name)
    (partial / "step.txt").write_text(step_text)
    for name in ("t2i_pipeline", "pipeline"):
        shutil.rmtree(out / name)
    (out / "pipeline_step.txt").unlink()


@pytest.mark.parametrize("which", ["pipeline_step.txt", "stage_b_t2i/partial/step.txt"])
@pytest.mark.parametrize("text", ["abc", ""])
def test_a_garbled_step_file_is_one_line_naming_it(folder, capsys, which, text):
    if which.startswith("stage_b_t2i"):
        _to_partial_t2i(folder, text)
    else:
        (folder / which).write_text(text)
    code, _, err = train(folder, capsys)
    assert code == 2
    assert err.count("\n") == 1 and which.split("/")[-1] in err and str(folder) in err


@pytest.mark.parametrize("which", ["stage_b_t2i/text_encoder", "stage_b_t2i/unet", "pipeline/text_encoder",
                                   "stage_a_vae"])
def test_a_truncated_checkpoint_is_one_line_naming_its_folder(folder, capsys, which):
    f = next((folder / which).glob("*.safetensors"))
    f.write_bytes(f.read_bytes()[:100])
    code, _, err = train(folder, capsys)
    assert code == 2
    assert err.strip().count("\n") == 0 and which in err


def _killed_while_saving(cls, monkeypatch):
    """``cls.save_pretrained`` writes a truncated weights file and is then interrupted."""
    real = cls.save_pretrained

    def killed(self, folder, *a, **k):
        real(self, folder, *a, **k)
        f = next(Path(folder).glob("*.safetensors"))
        f.write_bytes(f.read_bytes()[:100])
        raise KeyboardInterrupt

    monkeypatch.setattr(cls, "save_pretrained", killed)


@pytest.mark.parametrize("model", ["vae", "t2i_unet", "t2i_text_encoder"])
def test_a_kill_while_a_stage_is_saved_leaves_nothing_a_rerun_loads(tmp_path, capsys, monkeypatch, model):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    cls = {"vae": AutoencoderKL, "t2i_unet": UNet2DConditionModel, "t2i_text_encoder": CLIPTextModel}[model]
    _killed_while_saving(cls, monkeypatch)
    assert train(tmp_path, capsys)[0] == 130
    monkeypatch.undo()
    code, out, err = train(tmp_path, capsys)
    assert code == 0, err
    assert (tmp_path / "pipeline" / "model_index.json").is_file()


def test_a_resume_does_not_rewrite_the_finished_vae(folder, capsys, monkeypatch):
    from diffusers import AutoencoderKL

    _killed_while_saving(AutoencoderKL, monkeypatch)
    train(folder, capsys)                      # a finished run, rerun and killed at any moment
    monkeypatch.undo()
    code, out, err = train(folder, capsys)
    assert code == 0, err
    assert "vae: resumed from stage_a_vae" in out


def test_a_missing_vae_beside_later_stages_is_refused(folder, capsys):
    shutil.rmtree(folder / "stage_a_vae")
    code, _, err = train(folder, capsys)
    assert code == 2
    assert err.count("\n") == 1 and "stage_a_vae" in err
    assert not (folder / "stage_a_vae").exists()        # nothing retrained over the later stages


@pytest.mark.parametrize("exc", [PermissionError(13, "Permission denied"), KeyboardInterrupt()])
def test_a_failed_or_interrupted_install_keeps_the_installed_weights(folder, capsys, monkeypatch, tmp_path, exc):
    import lime_edit.demo as demo

    weights, weights_t2i = tmp_path / "pkg" / "weights", tmp_path / "pkg" / "weights_t2i"
    for d in (weights, weights_t2i):
        d.mkdir(parents=True)
        (d / "model_index.json").write_text("installed")
    monkeypatch.setattr(demo, "WEIGHTS_DIR", weights)
    monkeypatch.setattr(demo, "T2I_WEIGHTS_DIR", weights_t2i)
    real = shutil.copytree

    def copytree(src, dst, *a, **k):            # copies part of the folder, then fails
        Path(dst).mkdir(parents=True, exist_ok=True)
        raise exc

    monkeypatch.setattr(shutil, "copytree", copytree)
    code, _, err = train(folder, capsys, "--install")
    assert code == (2 if isinstance(exc, OSError) else 130)
    assert err.count("\n") == 1
    for d in (weights, weights_t2i):
        assert (d / "model_index.json").read_text() == "installed"
    monkeypatch.setattr(shutil, "copytree", real)
    assert train(folder, capsys, "--install")[0] == 0
    assert (weights / "unet").is_dir() and (weights_t2i / "unet").is_dir()
    assert sorted(p.name for p in weights.parent.iterdir()) == ["weights", "weights_t2i"]
