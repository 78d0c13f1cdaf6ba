"""`lime-edit train-demo`'s driver on a few steps: every stage runs, the editor's input
pass runs from its step, a rerun resumes from the last checkpoint, the report carries both
attention measurements (input-noised and target-noised latents), and the recommended levels and K are
written where ``LimePipeline.from_pretrained`` reads it."""

import json

import numpy as np
import pytest
import torch

from lime_edit.demo import train as T


def _run(out, edit_steps):
    return T.run(out, n_train=12, vae_steps=2, t2i_steps=2, edit_steps=edit_steps, batch=2,
                 attn_loss=0.5, seed=0, threads=1, ckpt_every=2, install_to=None, input_pass_from=2,
                 recommend_n=2)


def test_train_demo_runs_resumes_and_reports(tmp_path):
    threads = torch.get_num_threads()
    try:
        assert _run(tmp_path, 3) == 0
        assert (tmp_path / "pipeline" / "model_index.json").is_file()
        assert (tmp_path / "t2i_pipeline" / "model_index.json").is_file()
        assert (tmp_path / "pipeline_step.txt").read_text().strip() == "3"
        log = (tmp_path / "train.log").read_text()
        steps = [ln for ln in log.splitlines() if "edit step " in ln]
        assert "input_pass" not in steps[0]        # step 0: before --input-pass-from
        assert "input_pass" in steps[-1]           # step 2: the input pass ran
        rep = json.loads((tmp_path / "report.json").read_text())
        assert rep["args"]["input_pass_from"] == 2
        for key in ("share_in_mask_by_grid", "share_in_mask_by_grid_target_noised", "penalized_share_by_grid"):
            assert set(rep[key]) >= {"8", "16", "32"}
            assert all(0.0 <= v <= 1.0 for v in rep[key].values())

        # the recommended levels and K, chosen on validation scenes, are read back as the
        # pipeline's defaults; every (level set, K) pair's score is recorded
        rec = json.loads((tmp_path / "pipeline" / "lime_edit.json").read_text())
        from lime_edit import LimePipeline
        lp = LimePipeline.from_pretrained(str(tmp_path / "pipeline"))
        sets = T.validation_level_sets(lp)
        assert sets[0] == tuple(lp.backbone.default_levels()[0]) and (min(lp.backbone.levels),) in sets
        scores = rec["validation_roi_iou"]
        assert len(scores) == len(sets) * len(T.VALIDATION_KS)
        k = rec["lime_config"]["num_clusters"]
        levels = tuple(rec["lime_config"].get("feature_levels", sets[0]))
        assert k in T.VALIDATION_KS and levels in sets
        # one-standard-error rule: the chosen pair is among those near the best, and no near pair
        # has the default levels where the chosen one has not, or (same preference) a larger K
        near = rec["within_one_standard_error"]
        chosen = f"levels={','.join(map(str, levels))} K={k}"
        best = max(scores, key=scores.get)
        assert chosen in near and best in near
        for other in near:
            lv, kk = other.split(" K=")
            o_default = lv == "levels=" + ",".join(map(str, sets[0]))
            assert (o_default, int(kk)) <= (levels == sets[0], k)
        assert lp.settings().num_clusters == k and lp.settings().feature_levels == levels

        assert _run(tmp_path, 4) == 0              # a longer rerun continues from step 3
        log = (tmp_path / "train.log").read_text()
        assert "vae: resumed" in log and "t2i: resumed" in log
        assert "resumed from the pipeline checkpoint at step 3" in log
        assert (tmp_path / "pipeline_step.txt").read_text().strip() == "4"
    finally:
        torch.set_num_threads(threads)


def test_moving_average_of_the_weights_is_saved_and_resumed(tmp_path):
    """With --ema-decay the pipeline holds the average (from --ema-from), the trained weights go
    to edit_raw, and a rerun continues both: the average at step 4 is the step-3 average moved
    towards the step-4 weights by (1 - decay)."""
    from safetensors.torch import load_file

    def run(steps):
        return T.run(tmp_path, n_train=12, vae_steps=2, t2i_steps=2, edit_steps=steps, batch=2,
                     attn_loss=0.5, seed=0, threads=1, ckpt_every=1, install_to=None, input_pass_from=2,
                     recommend_n=0, ema_decay=0.5, ema_from=1)

    def unet(folder):
        return load_file(str(next((tmp_path / folder / "unet").glob("*.safetensors"))))

    threads = torch.get_num_threads()
    try:
        assert run(3) == 0
        avg3, raw3 = unet("pipeline"), unet("edit_raw")
        assert set(avg3) == set(raw3)
        assert any(not torch.equal(avg3[k], raw3[k]) for k in avg3)
        assert run(4) == 0
        assert "moving average from pipeline" in (tmp_path / "train.log").read_text()
        avg4, raw4 = unet("pipeline"), unet("edit_raw")
        for k in avg4:
            torch.testing.assert_close(avg4[k], avg3[k] + 0.5 * (raw4[k] - avg3[k]), rtol=1e-5, atol=1e-6)
    finally:
        torch.set_num_threads(threads)


def test_ema_swaps_the_average_in_and_back():
    p = [torch.nn.Parameter(torch.zeros(3))]
    ema = T.Ema(p, 0.75)
    with ema.swapped():                             # nothing to swap before the average starts
        assert torch.equal(p[0].detach(), torch.zeros(3))
    ema.start()
    with torch.no_grad():
        p[0].fill_(4.0)
    ema.update()
    assert torch.allclose(ema.shadow[0], torch.ones(3))
    with ema.swapped():
        assert torch.allclose(p[0].detach(), torch.ones(3))
    assert torch.equal(p[0].detach(), torch.full((3,), 4.0))


def test_an_interrupted_text_to_image_stage_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    threads = torch.get_num_threads()
    calls = {"n": 0}
    real_share = T.attention_share

    def stop_at_step_3(*a, **k):             # the t2i loss runs once per step
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real_share(*a, **k)

    def run(t2i_steps):
        return T.run(tmp_path, n_train=12, vae_steps=2, t2i_steps=t2i_steps, edit_steps=2, batch=2,
                     attn_loss=0.5, seed=0, threads=1, ckpt_every=2, install_to=None, recommend_n=0)

    try:
        monkeypatch.setattr(T, "attention_share", stop_at_step_3)
        try:
            run(5)
        except KeyboardInterrupt:
            pass
        else:
            raise AssertionError("the stage was not interrupted")
        partial = tmp_path / "stage_b_t2i" / "partial"
        assert (partial / "step.txt").read_text() == "2"
        assert not (tmp_path / "stage_b_t2i" / "unet").exists()
        monkeypatch.setattr(T, "attention_share", real_share)
        assert run(5) == 0
        log = (tmp_path / "train.log").read_text()
        assert "t2i: resumed from its checkpoint at step 2" in log
        resumed = log.split("t2i: resumed from its checkpoint")[1]
        steps = [int(ln.split("t2i step ")[1].split()[0]) for ln in resumed.splitlines() if "t2i step " in ln]
        assert steps[0] == 2 and steps[-1] == 4        # it continued, and did not start over
        assert (tmp_path / "stage_b_t2i" / "unet" / "config.json").is_file() and not partial.exists()
    finally:
        torch.set_num_threads(threads)


def test_penalized_share_averages_each_object_pixels_attention_on_the_zeroed_positions():
    # a 4x4 grid, 3 token positions; position 0 is zeroed (keep False); the object is the
    # left half: there pixels give 0.75 of their attention to position 0, elsewhere 0.25
    p = torch.zeros(1, 16, 3)
    left = torch.tensor([c < 2 for r in range(4) for c in range(4)])
    p[0, left] = torch.tensor([0.75, 0.25, 0.0])
    p[0, ~left] = torch.tensor([0.25, 0.5, 0.25])
    mask = np.zeros((8, 8), bool)
    mask[:, :4] = True
    keep = torch.tensor([False, True, True])
    assert T.penalized_share([p], mask, keep) == {4: pytest.approx(0.75)}



def test_weak_edit_targets_blend_the_input_and_the_target():
    """--weak-edits: that share of the pairs gets ``input + a * (target - input)`` with ``a`` in
    ``[0, --weak-strength]``, fixed by the seed; the other targets are untouched."""
    g = torch.Generator().manual_seed(0)
    inp = torch.randint(0, 256, (400, 4, 4, 3), generator=g, dtype=torch.uint8)
    tgt = torch.randint(0, 256, (400, 4, 4, 3), generator=g, dtype=torch.uint8)
    assert torch.equal(T.weak_targets(inp, tgt, 0.0, 1.0), tgt)
    assert torch.equal(T.weak_targets(inp, tgt, 1.0, 0.0), inp)
    w = T.weak_targets(inp, tgt, 0.5, 0.5, seed=3)
    assert torch.equal(w, T.weak_targets(inp, tgt, 0.5, 0.5, seed=3))
    x, y, z = inp.double(), tgt.double(), w.double()
    a = ((z - x) * (y - x)).sum((1, 2, 3)) / ((y - x) ** 2).sum((1, 2, 3))   # the blend of each sample
    untouched = (w == tgt).flatten(1).all(1)
    assert 0.35 < 1 - untouched.double().mean() < 0.65
    assert (a[~untouched] <= 0.5 + 0.01).all() and (a[~untouched] >= -0.01).all()


def test_weak_edits_enter_the_editor_from_their_step(tmp_path):
    threads = torch.get_num_threads()
    try:
        assert T.run(tmp_path, n_train=12, vae_steps=2, t2i_steps=2, edit_steps=3, batch=2, attn_loss=0.5, seed=0,
                     threads=1, ckpt_every=2, install_to=None, input_pass_from=2, recommend_n=0,
                     weak_edits=0.5, weak_strength=0.8, weak_from=1) == 0
        log = (tmp_path / "train.log").read_text()
        assert "weak-edit targets for 50% of the pairs (strength up to 0.8) from step 1" in log
        rep = json.loads((tmp_path / "report.json").read_text())
        assert (rep["args"]["weak_edits"], rep["args"]["weak_strength"], rep["args"]["weak_from"]) == (0.5, 0.8, 1)
    finally:
        torch.set_num_threads(threads)
