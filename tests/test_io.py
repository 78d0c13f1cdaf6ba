"""lime_edit.io: safe image/mask reading (each bad-input case of issue 2), atomic
writes (including a simulated crash mid-write), input expansion and output planning."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lime_edit import io as lio
from lime_edit.errors import InputImageError, LimeEditError


def _gradient(w: int, h: int) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None].repeat(w, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], -1).astype(np.uint8), "RGB")


def _one_line_naming(err: BaseException, path: Path) -> None:
    msg = str(err)
    assert "\n" not in msg and str(path) in msg, msg


# --------------------------------------------------------------------------- load_image
@pytest.mark.parametrize("mode,ext", [
    ("RGBA", "png"), ("LA", "png"), ("P", "png"), ("P-transparent", "png"), ("CMYK", "jpg"),
    ("I;16", "png"), ("L", "png"), ("1", "png"), ("RGB", "webp"), ("RGB", "bmp"), ("RGB", "tif"),
])
def test_load_image_converts_every_mode_to_rgb(tmp_path, mode, ext):
    base = _gradient(40, 24)
    if mode == "P-transparent":
        img = base.convert("P")
        img.info["transparency"] = 0
    elif mode == "I;16":
        arr = (np.asarray(base.convert("L"), dtype=np.uint16) * 257)
        img = Image.fromarray(arr)  # uint16 -> "I;16"
        assert img.mode == "I;16"
    elif mode == "RGBA":
        img = base.copy()
        img.putalpha(Image.new("L", base.size, 128))
    else:
        img = base.convert(mode)
    path = tmp_path / f"in.{ext}"
    img.save(path, **({"transparency": 0} if mode == "P-transparent" else {}))
    out = lio.load_image(path)
    assert out.mode == "RGB" and out.size == (40, 24)
    if mode == "I;16":  # 16-bit rescaled to 8 bits, not clipped to white
        grey = np.asarray(out)[..., 0]
        assert grey.min() < 30 and grey.max() > 220


def test_load_image_rgba_is_composited_not_passed_as_4_channels(tmp_path):
    img = Image.new("RGBA", (16, 16), (255, 0, 0, 0))  # fully transparent red
    img.save(tmp_path / "a.png")
    out = np.asarray(lio.load_image(tmp_path / "a.png"))
    assert out.shape == (16, 16, 3) and (out == 255).all()  # white background


def test_load_image_applies_exif_rotation(tmp_path):
    img = _gradient(48, 32)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    img.save(tmp_path / "r.jpg", exif=exif, quality=95)
    out = lio.load_image(tmp_path / "r.jpg")
    assert out.size == (32, 48)
    assert out.getexif().get(0x0112) in (None, 1)


@pytest.mark.parametrize("size", [(61, 37), (37, 61), (200, 8), (9, 9)])
def test_load_image_keeps_odd_and_non_square_sizes(tmp_path, size):
    _gradient(*size).save(tmp_path / "s.png")
    assert lio.load_image(tmp_path / "s.png").size == size


def test_load_image_too_small(tmp_path):
    _gradient(7, 20).save(tmp_path / "tiny.png")
    with pytest.raises(InputImageError, match="too small") as exc:
        lio.load_image(tmp_path / "tiny.png")
    _one_line_naming(exc.value, tmp_path / "tiny.png")


def test_load_image_pixel_limit(tmp_path):
    _gradient(64, 64).save(tmp_path / "big.png")
    with pytest.raises(InputImageError, match="limit of 4000") as exc:
        lio.load_image(tmp_path / "big.png", max_pixels=4000)
    _one_line_naming(exc.value, tmp_path / "big.png")
    assert lio.load_image(tmp_path / "big.png", max_pixels=None).size == (64, 64)
    assert lio.load_image(tmp_path / "big.png", max_pixels=64 * 64).size == (64, 64)


def _png_header_only(path: Path, w: int, h: int) -> None:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 8))
                     + chunk(b"IEND", b""))


def test_pixel_limit_is_checked_before_decoding(tmp_path):
    # A 30000x30000 header with almost no data: refused by size, never decoded.
    _png_header_only(tmp_path / "bomb.png", 30000, 30000)
    with pytest.raises(InputImageError, match="pixels is above the limit|decompression-bomb") as exc:
        lio.load_image(tmp_path / "bomb.png")
    _one_line_naming(exc.value, tmp_path / "bomb.png")


def test_non_image_file(tmp_path):
    p = tmp_path / "notes.png"
    p.write_text("this is not an image\n")
    with pytest.raises(InputImageError, match="not an image") as exc:
        lio.load_image(p)
    _one_line_naming(exc.value, p)


def test_empty_file(tmp_path):
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    with pytest.raises(InputImageError) as exc:
        lio.load_image(p)
    _one_line_naming(exc.value, p)


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_truncated_file(tmp_path, ext):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / f"full.{ext}")
    data = (tmp_path / f"full.{ext}").read_bytes()
    p = tmp_path / f"cut.{ext}"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputImageError, match="cannot read image") as exc:
        lio.load_image(p)
    _one_line_naming(exc.value, p)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(InputImageError, match="no such file"):
        lio.load_image(tmp_path / "nope.png")
    with pytest.raises(InputImageError, match="folder"):
        lio.load_image(tmp_path)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs a non-root POSIX user")
def test_unreadable_file(tmp_path):
    p = tmp_path / "locked.png"
    _gradient(16, 16).save(p)
    p.chmod(0)
    try:
        with pytest.raises(InputImageError, match="cannot read image") as exc:
            lio.load_image(p)
        _one_line_naming(exc.value, p)
    finally:
        p.chmod(0o644)


# --------------------------------------------------------------------------- load_mask
def test_load_mask_any_size_and_modes(tmp_path):
    m = np.zeros((20, 30), np.uint8)
    m[5:10, 10:20] = 255
    Image.fromarray(m, "L").save(tmp_path / "m.png")
    t = lio.load_mask(tmp_path / "m.png")
    assert t.dtype == torch.bool and tuple(t.shape) == (20, 30) and int(t.sum()) == 50
    # transparent mask: read by alpha
    rgba = Image.new("RGBA", (30, 20), (0, 0, 0, 0))
    rgba.paste((0, 0, 0, 255), (10, 5, 20, 10))
    rgba.save(tmp_path / "a.png")
    assert torch.equal(lio.load_mask(tmp_path / "a.png"), t)


def test_load_mask_empty_and_full(tmp_path):
    Image.new("L", (16, 16), 0).save(tmp_path / "empty.png")
    Image.new("L", (16, 16), 255).save(tmp_path / "full.png")
    assert lio.mask_coverage(lio.load_mask(tmp_path / "empty.png")) == 0.0
    assert lio.mask_coverage(lio.load_mask(tmp_path / "full.png")) == 1.0


def test_load_mask_one_pixel_is_a_whole_image_mask(tmp_path):
    # a mask is resized to its image, so 1x1 is valid (an input image must be 8x8)
    Image.new("L", (1, 1), 255).save(tmp_path / "one.png")
    assert lio.load_mask(tmp_path / "one.png").tolist() == [[True]]
    Image.new("L", (1, 1), 255).save(tmp_path / "in.png")
    with pytest.raises(InputImageError, match="too small"):
        lio.load_image(tmp_path / "in.png")


def test_load_mask_bad_file(tmp_path):
    p = tmp_path / "mask.png"
    p.write_bytes(b"\x89PNG garbage")
    with pytest.raises(LimeEditError) as exc:
        lio.load_mask(p)
    _one_line_naming(exc.value, p)


# --------------------------------------------------------------------------- atomic writes
def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_atomic_writes_roundtrip(tmp_path):
    lio.atomic_write_bytes(tmp_path / "sub" / "a.bin", b"abc")
    assert (tmp_path / "sub" / "a.bin").read_bytes() == b"abc"
    lio.atomic_write_bytes(tmp_path / "sub" / "a.bin", b"xyz")
    assert (tmp_path / "sub" / "a.bin").read_bytes() == b"xyz"
    lio.atomic_write_json(tmp_path / "r.json", {"p": tmp_path, "t": (1, 2), "x": torch.tensor(3)})
    import json
    assert json.loads((tmp_path / "r.json").read_text())["t"] == [1, 2]
    lio.atomic_save_image(tmp_path / "i.png", _gradient(10, 12))
    assert Image.open(tmp_path / "i.png").size == (10, 12)
    lio.atomic_save_image(tmp_path / "i.jpg", Image.new("RGBA", (10, 12)))
    assert Image.open(tmp_path / "i.jpg").mode == "RGB"
    assert _leftovers(tmp_path) == [] and _leftovers(tmp_path / "sub") == []
    mode = (tmp_path / "r.json").stat().st_mode & 0o777
    assert mode & 0o044  # readable by others like a normal file (mkstemp makes 0600)


@pytest.mark.parametrize("fail_at", ["write", "fsync", "replace"])
@pytest.mark.parametrize("exc", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_atomic_write_crash_leaves_old_file_and_no_temp(tmp_path, monkeypatch, fail_at, exc):
    dest = tmp_path / "out.png"
    dest.write_bytes(b"OLD")

    def boom(*a, **k):
        raise exc

    if fail_at == "write":
        real_fdopen = os.fdopen

        class Half:
            def __init__(self, fh):
                self.fh = fh

            def __enter__(self):
                return self

            def __exit__(self, *a):
                self.fh.close()

            def write(self, data):
                self.fh.write(data[: len(data) // 2])  # half the bytes reach the disk, then crash
                raise exc

        monkeypatch.setattr(lio.os, "fdopen", lambda fd, mode: Half(real_fdopen(fd, mode)))
    elif fail_at == "fsync":
        monkeypatch.setattr(lio.os, "fsync", boom)
    else:
        monkeypatch.setattr(lio.os, "replace", boom)
    with pytest.raises(type(exc)):
        lio.atomic_write_bytes(dest, b"NEW" * 1000)
    monkeypatch.undo()
    assert dest.read_bytes() == b"OLD"
    assert _leftovers(tmp_path) == []


def test_atomic_write_many_is_all_or_nothing(tmp_path, monkeypatch):
    (tmp_path / "a.png").write_bytes(b"OLD-A")
    real = lio._write_temp
    calls = []

    def flaky(path, data):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(path, data)

    monkeypatch.setattr(lio, "_write_temp", flaky)
    files = {tmp_path / "a.png": b"A", tmp_path / "b.png": b"B", tmp_path / "c.json": b"C"}
    with pytest.raises(KeyboardInterrupt):
        lio.atomic_write_many(files)
    assert (tmp_path / "a.png").read_bytes() == b"OLD-A"
    assert not (tmp_path / "b.png").exists() and not (tmp_path / "c.json").exists()
    assert _leftovers(tmp_path) == []
    monkeypatch.undo()
    lio.atomic_write_many(files)
    assert [(tmp_path / n).read_bytes() for n in ("a.png", "b.png", "c.json")] == [b"A", b"B", b"C"]


def test_process_killed_mid_write_leaves_old_file(tmp_path):
    """A real crash: the writer is SIGKILLed after half the bytes hit the disk."""
    dest = tmp_path / "out.json"
    dest.write_text("OLD")
    code = f"""
import os, signal
from lime_edit import io as lio
real = os.fdopen
class Killer:
    def __init__(self, fh): self.fh = fh
    def __enter__(self): return self
    def __exit__(self, *a): self.fh.close()
    def write(self, data):
        self.fh.write(data[: len(data) // 2]); self.fh.flush()
        os.kill(os.getpid(), signal.SIGKILL)
lio.os.fdopen = lambda fd, mode: Killer(real(fd, mode))
lio.atomic_write_bytes({str(dest)!r}, b"NEW" * 100000)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert dest.read_text() == "OLD"  # the destination is never half-written
    # the killed process could not clean up its hidden temp file; it is not an output
    assert all(n.startswith(".out.json.") for n in _leftovers(tmp_path))


# --------------------------------------------------------------------------- inputs / outputs
def test_expand_inputs_folders_globs_files(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    for name in ["b.png", "a.JPG", "c.webp", "notes.txt", ".hidden.png"]:
        (d / name).write_bytes(b"x")
    (d / "sub").mkdir()
    (d / "sub" / "z.png").write_bytes(b"x")
    other = tmp_path / "other.txt"
    other.write_bytes(b"x")

    files, problems = lio.expand_inputs([str(d)])
    assert [p.name for p in files] == ["a.JPG", "b.png", "c.webp"] and problems == []

    files, problems = lio.expand_inputs([str(d / "*"), str(d / "b.png"), str(other), str(d / "**" / "*.png")])
    assert [p.name for p in files] == ["a.JPG", "b.png", "c.webp", "other.txt", "z.png"]  # dedup, order kept
    assert problems == []

    files, problems = lio.expand_inputs([str(tmp_path / "missing.png"), str(d / "*.gif"),
                                         str(tmp_path / "imgs" / "sub" / "z.png")])
    assert [p.name for p in files] == ["z.png"]
    assert [p.message for p in problems] == ["no such file or folder", "no image file matches this pattern"]

    # globs are case-sensitive (as in the shell); a pattern that matches only by ignoring case says so
    files, problems = lio.expand_inputs([str(d / "*.jpg")])
    assert files == [] and [p.message for p in problems] == [
        "no image file matches this pattern (patterns are case-sensitive; 1 image file matches it "
        "ignoring case, e.g. a.JPG)"]


def test_plan_outputs_names_collisions_and_existing(tmp_path):
    a, b = tmp_path / "a" / "x.png", tmp_path / "b" / "x.jpg"
    out = tmp_path / "out"
    out.mkdir()
    (out / "x-2_edited.png").write_bytes(b"old")
    plans = lio.plan_outputs([a, b, tmp_path / "my photo (1).png"], out,
                             ["edited", "mask", "record"], explain=True)
    assert [p.stem for p in plans] == ["x", "x-2", "my_photo__1"]
    assert plans[0].paths["edited"] == out / "x_edited.png"
    assert plans[0].paths["record"] == out / "x.json"
    assert plans[0].existing == [] and plans[1].existing == [out / "x-2_edited.png"]
    (out / "x_attn_00_red.png").write_bytes(b"old")
    assert plans[0].find_existing() == [out / "x_attn_00_red.png"]
    assert plans[0].heatmap_path(3, "re/d</w>") == out / "x_attn_03_re_d__w.png"


def test_check_out_dir(tmp_path):
    assert lio.check_out_dir(tmp_path / "new" / "dir").is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(LimeEditError, match="not a folder"):
        lio.check_out_dir(tmp_path / "file")


# --------------------------------------------------------------------------- non-regular files
def _fifo_watchdog(fifo: Path, after_s: float = 5.0):
    """If a reader blocks on ``fifo`` (the bug), release it after ``after_s``; the
    returned list says whether a reader was found."""
    import threading

    found: list[bool] = []

    def release():
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO: nobody has it open
        except OSError:
            found.append(False)
            return
        found.append(True)
        os.close(fd)

    timer = threading.Timer(after_s, release)
    timer.start()
    return timer, found


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_named_like_an_image_is_reported_never_opened(tmp_path):
    good = tmp_path / "in" / "a.png"
    good.parent.mkdir()
    _gradient(16, 16).save(good)
    fifo = tmp_path / "in" / "x.png"
    os.mkfifo(fifo)
    timer, found = _fifo_watchdog(fifo)
    try:
        for spec, expected in ((good.parent, [good]), (fifo, []), (tmp_path / "in" / "*.png", [good])):
            files, problems = lio.expand_inputs([str(spec)])
            assert [p.spec for p in problems] == [str(fifo)] and files == expected
            assert "named pipe (FIFO), not a regular file" in problems[0].message
        for loader in (lio.load_image, lio.load_mask):
            with pytest.raises(InputImageError, match="named pipe") as exc:
                loader(fifo)
            _one_line_naming(exc.value, fifo)
    finally:
        timer.cancel()
    assert not found  # nothing ever opened the FIFO


@pytest.mark.skipif(os.name != "posix" or not os.path.exists("/dev/null"), reason="needs /dev/null")
def test_device_symlink_loop_and_dangling_link_are_reported(tmp_path):
    (tmp_path / "dev.png").symlink_to("/dev/null")
    (tmp_path / "loop1.png").symlink_to(tmp_path / "loop2.png")
    (tmp_path / "loop2.png").symlink_to(tmp_path / "loop1.png")
    (tmp_path / "gone.png").symlink_to(tmp_path / "missing.png")
    _gradient(16, 16).save(tmp_path / "ok.png")
    files, problems = lio.expand_inputs([str(tmp_path)])
    assert [p.name for p in files] == ["ok.png"]
    assert {Path(p.spec).name: p.message for p in problems} == {
        "dev.png": "is a character device, not a regular file (not opened)",
        "gone.png": "symbolic link to a missing file",
        "loop1.png": "symbolic link loop (not opened)",
        "loop2.png": "symbolic link loop (not opened)"}
    files, problems = lio.expand_inputs([str(tmp_path / "loop1.png")])
    assert files == [] and problems[0].message == "symbolic link loop (not opened)"
    with pytest.raises(InputImageError, match="character device"):
        lio.load_image(tmp_path / "dev.png")


def test_printable_escapes_control_characters():
    assert lio.printable("plain name é.png") == "plain name é.png"
    assert lio.printable("x\nerror: forged\x1b[31m.png") == "x\\nerror: forged\\x1b[31m.png"
    assert lio.printable("a\u202egnp.exe\udcff") == "a\\u202egnp.exe\\udcff"
    once = lio.printable("\r\t\x00")
    assert once == "\\r\\t\\x00" and lio.printable(once) == once


def test_a_palette_mask_with_a_transparent_index_is_read_by_its_alpha():
    from lime_edit.imageops import mask_to_tensor

    def palette_mask(transparent_index):
        a = np.zeros((8, 8), np.uint8)
        a[:4] = 1                                 # top half: index 1 (white), bottom: index 0 (black)
        m = Image.fromarray(a, "P")
        m.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
        m.info["transparency"] = transparent_index
        return m

    t = mask_to_tensor(palette_mask(0))           # black transparent: the white half is the mask
    assert t[:4].all() and not t[4:].any()
    t = mask_to_tensor(palette_mask(1))           # white transparent: the black, opaque half is
    assert not t[:4].any() and t[4:].all()


def test_a_float_image_with_nan_pixels_converts_without_warnings():
    import warnings

    from lime_edit.imageops import to_rgb

    a = np.full((8, 8), np.nan, np.float32)
    a[0, 0] = 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")                 # numpy's "invalid value encountered in cast"
        out = np.asarray(to_rgb(Image.fromarray(a, "F")))
    assert out[0, 0, 0] == 128 and out[0, 1, 0] == 0
