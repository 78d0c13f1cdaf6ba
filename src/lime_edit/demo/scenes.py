"""Seeded synthetic scenes for localized colour edits, with exact ground truth.

A scene is 2-4 flat-coloured objects (circle, square, triangle, star, diamond,
hexagon), each with a named colour, a size class (small / big) and a position,
some overlapping, on a flat, gradient or simply textured neutral background.
An edit asks to recolour one object, referred to in one of many phrasings:
colour + shape ("make the red circle blue"), shape only ("turn the square
green"), size ("paint the small star orange"), position ("change the colour of
the triangle on the left to yellow").  Scenes often contain a second object of
the target's colour or shape, so that the reference must bind attributes.

Rendering is 4x supersampled: every object's *coverage* of each output pixel is
known exactly, so the target image (same scene, one object recoloured) differs
from the input only on the pixels the object covers, and the ground-truth mask
(the object's visible footprint before and after the edit; a recolour does not
move it) is ``coverage > 0``.

Training pairs imitate how InstructPix2Pix's pairs were generated (by a
text-to-image model with Prompt-to-Prompt, which often changes more than the
instruction asks).  With ``noisy=True`` (the default for ``split="train"``):

* with probability ``P_OTHER_RECOLOUR`` = 0.30 one *other* object is also
  recoloured (to a random colour);
* independently, with probability ``P_GLOBAL_TINT`` = 0.25 the whole target
  image gets a global tint (blend with a random colour, strength 0.08-0.22).

So about 47.5 % of training pairs carry an off-target change.  Evaluation pairs
(``split="test"``) are always clean.  Train and test are disjoint by seed: the
random stream of a sample is ``numpy.random.default_rng((split_id, seed))``
with a different ``split_id`` per split, and the two splits use disjoint seed
ranges as well (train seeds >= 0 are offset by ``TRAIN_SEED_OFFSET``).

Captions for text-to-image pre-training describe the scene
("a red circle and a small blue square on a grey background") and come with the
owner (object index, or ``BACKGROUND``) of every word, so per-word masks exist.

Every word any instruction or caption uses is in ``VOCAB``; the demo tokenizer
spells each of them as one token, so word ``i`` is token ``i + 1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

SUPERSAMPLE = 4
#: scene side in pixels (the demo models' training and native size) and objects per scene
SCENE_SIZE = 64
N_OBJECTS = (2, 4)
P_OTHER_RECOLOUR = 0.30
P_GLOBAL_TINT = 0.25
TRAIN_SEED_OFFSET = 10_000_000
SPLIT_IDS = {"train": 1, "test": 2}
#: validation scenes (for choosing a model's settings, or between trained models): train-split
#: seeds from here on, never generated for training (``train.generate_data`` uses seeds ``0 .. n_train - 1``),
#: with clean targets; never the held-out test split that ``bench synthetic`` reports by default
VALIDATION_SEED0 = 50_000
#: the scene sets a benchmark can score (:func:`split_edits`)
BENCH_SPLITS = ("test", "validation")
BACKGROUND = -1

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (240, 215, 40),
    "orange": (245, 140, 25),
    "purple": (140, 60, 190),
    "pink": (245, 130, 190),
    "cyan": (40, 205, 215),
}
COLOUR_NAMES = tuple(COLOURS)
SHAPES = ("circle", "square", "triangle", "star", "diamond", "hexagon")
SIZES = ("small", "big")
# Neutral backgrounds, so that no background is confused with an object colour.
BG_TONES: dict[str, tuple[int, int, int]] = {
    "grey": (128, 128, 128),
    "white": (235, 235, 232),
    "black": (28, 28, 30),
    "beige": (205, 190, 160),
}
BG_KINDS = ("flat", "gradient", "striped", "checkered", "noisy")

# Instruction templates: {ref} is the object reference, {c} the new colour.
TEMPLATES = (
    "make the {ref} {c}",
    "turn the {ref} {c}",
    "turn the {ref} into a {c} one",
    "change the colour of the {ref} to {c}",
    "change the color of the {ref} to {c}",
    "change the {ref} to {c}",
    "paint the {ref} {c}",
    "colour the {ref} {c}",
    "color the {ref} {c}",
    "make the {ref} {c} please",
    "the {ref} should be {c}",
    "let the {ref} be {c}",
    "give the {ref} a {c} colour",
)
POSITIONS = ("left", "right", "top", "bottom")

VOCAB = tuple(sorted(set(
    " ".join(TEMPLATES).replace("{ref}", " ").replace("{c}", " ").split()
    + list(COLOUR_NAMES) + list(SHAPES) + list(SIZES) + list(BG_TONES) + list(POSITIONS)
    + "a an and on the of in background gradient striped checkered noisy one".split()
)))


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    size: str            # "small" | "big"
    cx: float            # centre, pixels
    cy: float
    r: float             # circumradius, pixels
    angle: float         # rotation, radians (polygons)
    rgb: tuple[int, int, int]


@dataclass(frozen=True)
class Scene:
    size: int
    background: dict
    objects: tuple[Obj, ...]   # drawing order: later objects are on top


@dataclass
class EditSample:
    """One edit with ground truth.

    image / target: PIL RGB ``size x size``; ``target`` is the clean target for
    test samples and the (possibly noisy) training target for train samples;
    ``clean_target`` is always clean.
    mask: ``(size, size)`` bool ground-truth edit mask (object footprint).
    instruction: the edit instruction; ``focus_words``: word positions in it
    that name the object or the new colour (token index = word index + 1).
    caption / caption_owners: scene caption and the owner of each word
    (object index, ``BACKGROUND``, or ``None`` for function words).
    """

    seed: int
    split: str
    scene: Scene
    image: Image.Image
    target: Image.Image
    clean_target: Image.Image
    mask: np.ndarray
    object_index: int
    source_colour: str
    target_colour: str
    instruction: str
    focus_words: list[int]
    reference: str
    caption: str
    caption_owners: list[int | None]
    object_masks: np.ndarray            # (n_objects, size, size) bool, visible footprints
    off_target: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- generation
def _rng(seed: int, split: str) -> np.random.Generator:
    if split not in SPLIT_IDS:
        raise ValueError(f"split must be one of {sorted(SPLIT_IDS)}, got {split!r}")
    if seed < 0:
        raise ValueError("seed must be >= 0")
    s = seed + TRAIN_SEED_OFFSET if split == "train" else seed
    return np.random.default_rng((SPLIT_IDS[split], s))


def _jitter(rng: np.random.Generator, rgb: tuple[int, int, int], amount: int = 12) -> tuple[int, int, int]:
    return tuple(int(np.clip(v + rng.integers(-amount, amount + 1), 0, 255)) for v in rgb)  # type: ignore


def make_scene(seed: int, split: str = "test", size: int = SCENE_SIZE,
               rng: np.random.Generator | None = None) -> Scene:
    """A random scene (2-4 objects); deterministic in ``(seed, split, size)``."""
    rng = rng or _rng(seed, split)
    k = size / 64.0
    bg_kind = BG_KINDS[rng.integers(len(BG_KINDS))]
    tones = list(BG_TONES)
    t1 = tones[rng.integers(len(tones))]
    t2 = tones[rng.integers(len(tones))]
    while t2 == t1:
        t2 = tones[rng.integers(len(tones))]
    background = {"kind": bg_kind, "tone": t1, "tone2": t2,
                  "rgb": _jitter(rng, BG_TONES[t1], 10), "rgb2": _jitter(rng, BG_TONES[t2], 10),
                  "angle": float(rng.uniform(0, 2 * math.pi)),
                  "period": int(rng.integers(6, 13)), "contrast": float(rng.uniform(0.15, 0.35)),
                  "noise_seed": int(rng.integers(1 << 31))}
    n = int(rng.integers(N_OBJECTS[0], N_OBJECTS[1] + 1))
    objs: list[Obj] = []
    shapes = list(SHAPES)
    for i in range(n):
        for _attempt in range(60):
            shape = shapes[rng.integers(len(shapes))]
            colour = COLOUR_NAMES[rng.integers(len(COLOUR_NAMES))]
            # distractors: often reuse an earlier object's colour or shape
            if objs and rng.random() < 0.35:
                colour = objs[rng.integers(len(objs))].colour
            elif objs and rng.random() < 0.25:
                shape = objs[rng.integers(len(objs))].shape
            sz = SIZES[rng.integers(2)]
            r = (rng.uniform(8.0, 10.0) if sz == "small" else rng.uniform(12.5, 15.5)) * k
            if shape in ("triangle", "star"):
                r *= 1.15
            cx = float(rng.uniform(r * 0.8, size - r * 0.8))
            cy = float(rng.uniform(r * 0.8, size - r * 0.8))
            # overlap allowed, but centres must be apart so every object stays visible
            ok = all(math.hypot(cx - o.cx, cy - o.cy) > 0.75 * (r + o.r) for o in objs)
            # the same (size, shape, colour) twice would make references ambiguous
            ok = ok and not any(o.shape == shape and o.colour == colour and o.size == sz for o in objs)
            if ok:
                objs.append(Obj(shape, colour, sz, cx, cy, float(r),
                                float(rng.uniform(-0.35, 0.35)) if shape != "circle" else 0.0,
                                _jitter(rng, COLOURS[colour])))
                break
        if len(objs) < i + 1 and len(objs) >= 2:
            break
    if len(objs) < 2:  # pragma: no cover - practically unreachable
        return make_scene(seed + 7919, split, size)
    return Scene(size=size, background=background, objects=tuple(objs))


def _background(scene: Scene) -> np.ndarray:
    b = scene.background
    s = scene.size
    c1 = np.array(b["rgb"], np.float32)
    c2 = np.array(b["rgb2"], np.float32)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / max(s - 1, 1)
    a = b["angle"]
    kind = b["kind"]
    if kind == "flat":
        return np.broadcast_to(c1, (s, s, 3)).copy()
    if kind == "gradient":
        t = (xx - 0.5) * math.cos(a) + (yy - 0.5) * math.sin(a)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        return c1 * (1 - t[..., None]) + c2 * t[..., None]
    mix = b["contrast"]
    px = (xx * (s - 1))
    py = (yy * (s - 1))
    if kind == "striped":
        t = ((px * math.cos(a) + py * math.sin(a)) // (b["period"] / 2)) % 2
    elif kind == "checkered":
        p = b["period"]
        t = ((px // p) + (py // p)) % 2
    else:  # noisy: smooth value noise
        g = np.random.default_rng(b["noise_seed"]).random((s // 8 + 2, s // 8 + 2)).astype(np.float32)
        t = np.asarray(Image.fromarray((g * 255).astype(np.uint8)).resize((s, s), Image.BICUBIC),
                       np.float32) / 255.0
    t = t.astype(np.float32)[..., None] * mix
    return c1 * (1 - t) + c2 * t


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        pts = [(math.pi / 4 + j * math.pi / 2, r * 0.95) for j in range(4)]
    elif shape == "diamond":
        pts = [(j * math.pi / 2, r) if j % 2 == 0 else (j * math.pi / 2, r * 0.75) for j in range(4)]
    elif shape == "triangle":
        pts = [(-math.pi / 2 + j * 2 * math.pi / 3, r) for j in range(3)]
    elif shape == "hexagon":
        pts = [(j * math.pi / 3, r) for j in range(6)]
    elif shape == "star":
        pts = [(-math.pi / 2 + j * math.pi / 5, r if j % 2 == 0 else r * 0.45) for j in range(10)]
    else:
        raise ValueError(shape)
    return [(cx + rr * math.cos(t + angle), cy + rr * math.sin(t + angle)) for t, rr in pts]


def coverage(scene: Scene) -> np.ndarray:
    """``(n_objects, size, size)`` float32 visible coverage of each object (0..1)."""
    s, f = scene.size, SUPERSAMPLE
    hs = s * f
    label = np.full((hs, hs), -1, np.int16)
    for i, o in enumerate(scene.objects):
        if o.shape == "circle":
            yy, xx = np.mgrid[0:hs, 0:hs]
            m = ((xx + 0.5) / f - o.cx) ** 2 + ((yy + 0.5) / f - o.cy) ** 2 <= o.r ** 2
        else:
            im = Image.new("L", (hs, hs), 0)
            pts = [(x * f, y * f) for x, y in _polygon(o.shape, o.cx, o.cy, o.r, o.angle)]
            ImageDraw.Draw(im).polygon(pts, fill=255)
            m = np.asarray(im) > 0
        label[m] = i
    cov = np.stack([(label == i).reshape(s, f, s, f).mean(axis=(1, 3))
                    for i in range(len(scene.objects))]).astype(np.float32)
    return cov


def render(scene: Scene, cov: np.ndarray | None = None,
           colours: dict[int, tuple[int, int, int]] | None = None) -> np.ndarray:
    """``(size, size, 3)`` uint8 image; ``colours`` overrides object RGBs by index."""
    cov = coverage(scene) if cov is None else cov
    img = _background(scene) * (1.0 - cov.sum(0))[..., None]
    for i, o in enumerate(scene.objects):
        rgb = np.array((colours or {}).get(i, o.rgb), np.float32)
        img = img + cov[i][..., None] * rgb
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def caption(scene: Scene, rng: np.random.Generator | None = None) -> tuple[str, list[int | None]]:
    """Scene caption and the owner of every word (object index, BACKGROUND or None)."""
    rng = rng or np.random.default_rng(0)
    words: list[str] = []
    owners: list[int | None] = []
    order = list(range(len(scene.objects)))
    rng.shuffle(order)
    for j, i in enumerate(order):
        o = scene.objects[i]
        if j:
            words.append("and")
            owners.append(None)
        words.append("a")
        owners.append(None)
        if rng.random() < 0.5:
            words.append(o.size)
            owners.append(i)
        words += [o.colour, o.shape]
        owners += [i, i]
    b = scene.background
    bg_word = b["tone"] if b["kind"] in ("flat",) else b["kind"]
    words += ["on", "a", bg_word, "background"]
    owners += [None, None, BACKGROUND, BACKGROUND]
    return " ".join(_articles(words)), owners


def caption_pair(e: EditSample) -> tuple[str, str]:
    """Source and target captions of an edit, for caption editing (Prompt-to-Prompt).

    The source is the scene caption ``e.caption``; the target is the same caption with
    the edited object's colour word (the word owned by ``e.object_index`` whose text is
    ``e.source_colour``) replaced by ``e.target_colour``, articles fixed ("an orange
    circle" -> "a green circle").  Both have the same number of words, and only that
    word (and possibly its article) differs, so P2P sees a word swap.
    """
    words = e.caption.split()
    hits = [k for k, (w, o) in enumerate(zip(words, e.caption_owners))
            if o == e.object_index and w == e.source_colour]
    if len(words) != len(e.caption_owners) or len(hits) != 1:
        raise ValueError(f"edit {e.seed} ({e.split}): the caption {e.caption!r} does not name object "
                         f"{e.object_index}'s colour {e.source_colour!r} exactly once")
    plain = ["a" if w == "an" else w for w in words]     # undo the articles, then redo them
    plain[hits[0]] = e.target_colour
    return e.caption, " ".join(_articles(plain))


def _articles(words: list[str]) -> list[str]:
    """"a" -> "an" before a vowel (keeps one word per position)."""
    return ["an" if w == "a" and i + 1 < len(words) and words[i + 1][0] in "aeiou" else w
            for i, w in enumerate(words)]


def _references(scene: Scene, i: int) -> list[tuple[list[str], list[bool]]]:
    """Unambiguous references to object ``i``: (words, is_focus_word)."""
    objs = scene.objects
    o = objs[i]
    others = [p for j, p in enumerate(objs) if j != i]
    refs: list[tuple[list[str], list[bool]]] = []
    same_shape = [p for p in others if p.shape == o.shape]
    if not same_shape:
        refs.append(([o.shape], [True]))
    if not any(p.colour == o.colour for p in same_shape):
        refs.append(([o.colour, o.shape], [True, True]))
    if same_shape and not any(p.size == o.size for p in same_shape):
        refs.append(([o.size, o.shape], [True, True]))
    if not any(p.colour == o.colour and p.size == o.size for p in same_shape):
        refs.append(([o.size, o.colour, o.shape], [True, True, True]))
    if same_shape:
        # position among objects of the same shape, by a clear margin
        for pos, key, sign in (("left", "cx", 1), ("right", "cx", -1), ("top", "cy", 1), ("bottom", "cy", -1)):
            if all(sign * (getattr(p, key) - getattr(o, key)) > 10 for p in same_shape):
                refs.append(([o.shape, "on", "the", pos], [True, False, False, True]))
    return refs


def split_seeds(split: str, n: int) -> list[int]:
    """The seeds of the first ``n`` scenes of a benchmark split (:func:`split_edits`), without
    making the scenes."""
    if split == "test":
        return list(range(n))
    if split == "validation":
        return [VALIDATION_SEED0 + i for i in range(n)]
    raise ValueError(f"split: expected one of {', '.join(BENCH_SPLITS)}, got {split!r}")


def split_edits(split: str, n: int) -> list[EditSample]:
    """The first ``n`` scenes of a benchmark split: ``"test"``, the held-out scenes (seeds
    ``0 .. n-1``), or ``"validation"``, train-split seeds from :data:`VALIDATION_SEED0` with
    clean targets. Each sample's ``seed`` is also its sampler seed."""
    return [make_edit(s, "test") if split == "test" else make_edit(s, "train", noisy=False)
            for s in split_seeds(split, n)]


def make_edit(seed: int, split: str = "test", size: int = SCENE_SIZE, noisy: bool | None = None) -> EditSample:
    """One edit sample; deterministic in ``(seed, split, size, noisy)``."""
    rng = _rng(seed, split)
    noisy = (split == "train") if noisy is None else noisy
    scene = make_scene(seed, split, size, rng=rng)
    cov = coverage(scene)
    n = len(scene.objects)
    visible = [float(cov[i].sum()) for i in range(n)]
    # the edited object must be clearly visible (at least 60 % of its largest possible area)
    candidates = [i for i in range(n) if visible[i] >= 0.6 * max(visible) and _references(scene, i)]
    if not candidates:
        candidates = [i for i in range(n) if _references(scene, i)] or [int(np.argmax(visible))]
    i = candidates[rng.integers(len(candidates))]
    o = scene.objects[i]
    refs = _references(scene, i) or [([o.size, o.colour, o.shape], [True, True, True])]
    # shape-only references when available about a third of the time
    ref_words, ref_focus = refs[rng.integers(len(refs))]
    new_colour = o.colour
    while new_colour == o.colour:
        new_colour = COLOUR_NAMES[rng.integers(len(COLOUR_NAMES))]
    template = TEMPLATES[rng.integers(len(TEMPLATES))]
    pre, rest = template.split("{ref}")
    mid, post = rest.split("{c}")
    words = pre.split() + ref_words + mid.split() + [new_colour] + post.split()
    focus = [len(pre.split()) + j for j, f in enumerate(ref_focus) if f]
    focus.append(len(pre.split()) + len(ref_words) + len(mid.split()))
    instruction = " ".join(_articles(words))
    new_rgb = _jitter(rng, COLOURS[new_colour])
    img = render(scene, cov)
    clean = render(scene, cov, {i: new_rgb})
    target = clean
    off: list[str] = []
    if noisy:
        colours = {i: new_rgb}
        if n > 1 and rng.random() < P_OTHER_RECOLOUR:
            j = int(rng.choice([k for k in range(n) if k != i]))
            c = COLOUR_NAMES[rng.integers(len(COLOUR_NAMES))]
            colours[j] = _jitter(rng, COLOURS[c])
            off.append(f"object {j} recoloured {c}")
        target_f = render(scene, cov, colours).astype(np.float32)
        if rng.random() < P_GLOBAL_TINT:
            tint = rng.integers(0, 256, 3).astype(np.float32)
            a = float(rng.uniform(0.08, 0.22))
            target_f = target_f * (1 - a) + tint * a
            off.append(f"global tint {a:.2f}")
        target = np.clip(target_f + 0.5, 0, 255).astype(np.uint8) if off else clean
    cap, owners = caption(scene, rng)
    return EditSample(
        seed=seed, split=split, scene=scene,
        image=Image.fromarray(img), target=Image.fromarray(target), clean_target=Image.fromarray(clean),
        mask=cov[i] > 0, object_index=i, source_colour=o.colour, target_colour=new_colour,
        instruction=instruction, focus_words=focus, reference=" ".join(ref_words),
        caption=cap, caption_owners=owners, object_masks=cov > 0, off_target=off)


def can_edit() -> str:
    """What an editor trained on these scenes can edit, in one sentence, from this module's
    shapes, colours, sizes, positions and templates (the demo editor's ``lime_edit.json``
    ``can_edit``, which lime-edit adds to the warnings of an input outside it)."""
    def listed(words) -> str:
        return f"{', '.join(words[:-1])} or {words[-1]}"

    example = TEMPLATES[0].format(ref=f"{COLOUR_NAMES[0]} {SHAPES[0]}", c=COLOUR_NAMES[2])
    return (f"recolouring one of {N_OBJECTS[0]}-{N_OBJECTS[1]} flat shapes ({listed(SHAPES)}) in a "
            f"{SCENE_SIZE}x{SCENE_SIZE} synthetic scene on a neutral background to {listed(COLOUR_NAMES)}, the "
            f"shape named by its colour, shape, size ({listed(SIZES)}) or position ({listed(POSITIONS)}), "
            f"as in \"{example}\"; photographs and other edits are outside what it learned")


def nearest_colour(rgb) -> str:
    """Name of the palette colour nearest (Euclidean RGB) to ``rgb``."""
    v = np.asarray(rgb, np.float32)
    names = list(COLOURS)
    d = [float(((v - np.array(COLOURS[c], np.float32)) ** 2).sum()) for c in names]
    return names[int(np.argmin(d))]


__all__ = ["COLOURS", "SHAPES", "TEMPLATES", "VOCAB", "P_OTHER_RECOLOUR", "P_GLOBAL_TINT",
           "Obj", "Scene", "EditSample", "make_scene", "make_edit", "render", "coverage", "caption",
           "caption_pair", "nearest_colour", "can_edit", "BACKGROUND", "VALIDATION_SEED0", "BENCH_SPLITS", "split_edits"]
