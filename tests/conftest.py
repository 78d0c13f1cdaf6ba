"""Shared fixtures: tiny IP2P components built in code (nothing downloaded)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def cli_edits(folder, image, tmp_path, instruction: str) -> list[str]:
    """``lime-edit edit`` on ``image`` (saved as in.png) with the model folder ``folder``,
    2 steps on the CPU; asserts it exits 0 and returns the PNG names it wrote."""
    from lime_edit.cli import main

    src = tmp_path / "in.png"
    image.save(src)
    out = tmp_path / "out"
    code = main(["edit", str(src), "--instruction", instruction, "--model", str(folder), "-o", str(out),
                 "--steps", "2", "--device", "cpu"])
    assert code == 0
    return sorted(p.name for p in out.iterdir() if p.suffix == ".png")


def load_benchmark_script(name: str):
    """A script of ``benchmarks/`` (not a package) imported as a module, for its pure helpers."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def tiny_pipe(tmp_path_factory):
    from lime_edit.testing import tiny_pipeline

    return tiny_pipeline(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_pipe):
    """The tiny pipeline saved with save_pretrained: the real loading path."""
    path = tmp_path_factory.mktemp("model") / "tiny-ip2p"
    tiny_pipe.save_pretrained(str(path))
    return path


@pytest.fixture()
def no_model_load(monkeypatch):
    """Fail loudly if a command gets as far as loading a model."""
    from lime_edit import pipeline

    def refuse(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(pipeline.LimePipeline, "from_pretrained", classmethod(lambda cls, *a, **k: refuse()))


@pytest.fixture()
def scene():
    """A 64x64 RGB test image: two coloured blocks on a gradient."""
    rng = np.random.RandomState(0)
    arr = np.zeros((64, 64, 3), np.uint8)
    arr[..., 0] = np.linspace(40, 200, 64)[None, :]
    arr[..., 2] = 90
    arr[10:30, 8:28] = (220, 30, 30)
    arr[36:58, 34:60] = (30, 40, 220)
    arr = np.clip(arr.astype(int) + rng.randint(-8, 8, arr.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)

@pytest.fixture(scope="module")
def one_torch_thread():
    """The tiny model's ops are far too small to gain from threads; on a busy
    machine two threads wait on each other (a 2-step edit: 2 s vs 0.4 s)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def scene_file(tmp_path_factory):
    """The ``scene`` picture saved as a PNG file (what the web demo uploads)."""
    arr = np.zeros((64, 64, 3), np.uint8)
    arr[..., 0] = np.linspace(40, 200, 64)[None, :]
    arr[..., 2] = 90
    arr[10:30, 8:28] = (220, 30, 30)
    arr[36:58, 34:60] = (30, 40, 220)
    path = tmp_path_factory.mktemp("scene") / "scene.png"
    Image.fromarray(arr).save(path)
    return path


def pytest_collection_modifyitems(config, items):
    """``slow`` tests (real checkpoints, GPU) run only with LIME_EDIT_SLOW=1."""
    if os.environ.get("LIME_EDIT_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: set LIME_EDIT_SLOW=1 (and LIME_EDIT_CHECKPOINTS) to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
