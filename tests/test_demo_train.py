"""`lime-edit train-demo`'s driver on a few steps: every stage runs, the editor's input
pass runs from its step, a rerun resumes from the last checkpoint, the report carries both
attention measurements (input-noised and target-noised latents), and the recommended levels and K are
written where ``LimePipeline.from_pretrained`` reads it."""

import json

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
        for key in ("share_in_mask_by_grid", "share_in_mask_by_grid_target_noised"):
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
        assert round(scores[f"levels={','.join(map(str, levels))} K={k}"], 3) == round(max(scores.values()), 3)
        assert lp.settings().num_clusters == k and lp.settings().feature_levels == levels

        assert _run(tmp_path, 4) == 0              # a longer rerun continues from step 3
        log = (tmp_path / "train.log").read_text()
        assert "vae: resumed" in log and "t2i: resumed" in log
        assert "resumed from the pipeline checkpoint at step 3" in log
        assert (tmp_path / "pipeline_step.txt").read_text().strip() == "4"
    finally:
        torch.set_num_threads(threads)
