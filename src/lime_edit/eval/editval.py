"""EditVal's automatic (OWL-ViT) scoring rules, as intended, and how they differ from
the published code (``deep-ml-research/editval_code``, ``auto_eval.py``).

Kept as published: the detector (``google/owlvit-base-patch32``), the query template
"a photo of a {obj}", the score threshold (``>= 0.1``), which image each rule looks
at, the joint query sets (``[new object, class]`` on the edited image for object
addition/replacement, alter parts and positional addition; ``[class]`` on the original
and on the edited image for position replacement and size), the success conditions
and the 200 px margin of position replacement.

Deviations (each fixes a bug or an ambiguity; every one is applied on purpose):

1. Box format. ``post_process`` returns corner boxes ``(x0, y0, x1, y1)``; the code
   unpacked them as ``(cx, cy, w, h)``. Here boxes are corners, centres are
   ``((x0 + x1) / 2, (y0 + y1) / 2)`` and areas ``(x1 - x0) * (y1 - y0)``.
2. Which box. The code kept the *last* box above the threshold in the detector's
   output order (an arbitrary one); here the highest-scoring box per query is used.
3. Above/below. Image y grows downwards; the code counted "below" when the new
   object's y was *smaller* (higher up) and "top" when larger. Here "above/top" means
   a smaller centre y and "below/bottom/under" a larger one.
4. Size. The code compared against an undefined variable (``img_``) and so could not
   run; the intended rule (the class's box on the edited image is larger for
   "large", smaller for "small") is implemented.
5. Frames. Original COCO images and edited outputs can differ in size (e.g. 640x480
   vs 512x512); for the two rules that compare boxes across the two images (position
   replacement, size) the edited box is first scaled to the original's pixel frame,
   so the 200 px margin and the areas are in original-image pixels.
6. Parsing ``to``. Positional addition took the first word as the object and the last
   as the position; here the object is the first word that is not an article or a
   position and the position the last position word (left/right/top/above/below/
   bottom/under...). Alter-parts values read "add <part>"; the detector is asked for
   "<part>" (the prompt side already dropped "add ").
7. Dispatch. The published ``main()`` called an undefined ``evaluate_position_replacement``
   and keyed positional addition as "positional-addition"; each type here has its rule.

Official mode (``lime-edit score editval --protocol official``; :func:`decide` with
``protocol="official"``): the published EditVal numbers (EditVal's paper, and the rows
LIME's supplementary Tab. 5 quotes from it) were computed with the published code, so
this mode reproduces the decisions of ``auto_eval.py``'s six ``evaluate_*`` functions bug
for bug: deviations 1-6 are undone (boxes rounded to 2 decimals as there, then read as
centre/size; the last box at or above 0.1 in output order; "below" when the new box's y0
is smaller, "top" when larger, and no other position word; ``to`` compared verbatim
with "left"/"right"/"large"/"small"; the two images' raw pixel frames compared; the
query texts built as there, e.g. "a photo of a add sweater" for alter parts and the
first word of ``to`` for positional addition). Size crashes there on every sample
(``img_`` is undefined), so in official mode every size sample is a failed row naming
that crash (:class:`OfficialCrash`), the run goes on, the size column is empty and the
average is over the other five types (the table says so). The published size column
cannot have come from ``auto_eval.py``; ``evaluate_edits.py``'s ``size()`` runs (its
``img_`` is the loop's edited image) and compares the products x1 * y1 of the last boxes
(the centre/size misread of the area); that rule is not offered here.
Not reproduced: deviation 7, ``main()``'s dispatch (it would crash on every position
replacement and score no positional addition); the published numbers cannot have come
through it, so each type calls its ``evaluate_*`` function, as they must have.
The position rule followed is ``auto_eval.py``'s (x0 moved by more than 200 px, x only);
``evaluate_edits.py`` (the per-method batch script of the same release) uses another one
(x0 AND y0 both smaller for "left", both larger for "right", no margin), and builds the
positional-addition query differently (all words but the position); neither is used.
Official mode changes scoring only: generation (``lime-edit eval editval``) writes the
same images under both modes (its IP2P instruction for alter parts is "{to} to {class}",
e.g. "add sweater to dog", in both).

Unchanged limitation: a rule only sees boxes, so "the dog got bigger" is judged by its
box, and a rule that needs a detection scores 0 when OWL-ViT finds nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

#: OWL-ViT score threshold (EditVal, "default from OWL-ViT paper").
OWL_THRESHOLD = 0.1
#: Position replacement: the object's centre must move by more than this many pixels
#: of the ORIGINAL image (EditVal's ``delta = 200``).
POSITION_DELTA = 200.0


@dataclass(frozen=True)
class Detection:
    """One OWL-ViT box: ``label`` = index of the query, ``box`` = (x0, y0, x1, y1) in pixels."""

    label: int
    score: float
    box: tuple[float, float, float, float]

    @property
    def center(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2.0, (y0 + y1) / 2.0

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.box
        return max(x1 - x0, 0.0) * max(y1 - y0, 0.0)

    def scaled(self, sx: float, sy: float) -> "Detection":
        x0, y0, x1, y1 = self.box
        return Detection(self.label, self.score, (x0 * sx, y0 * sy, x1 * sx, y1 * sy))


def best_detection(dets: Sequence[Detection], label: int, threshold: float = OWL_THRESHOLD
                   ) -> Detection | None:
    """The highest-scoring box of ``label`` with ``score >= threshold`` (EditVal kept
    the *last* such box in output order: deviation 2)."""
    cands = [d for d in dets if d.label == label and d.score >= threshold]
    return max(cands, key=lambda d: d.score) if cands else None


POSITIONS = {"left": "left", "right": "right", "top": "above", "above": "above", "up": "above",
             "over": "above", "below": "below", "bottom": "below", "under": "below", "beneath": "below",
             "underneath": "below", "down": "below"}
_ARTICLES = {"a", "an", "the", "some"}


def parse_positional(to: str) -> tuple[str, str | None]:
    """``to`` of a positional addition -> (object, position in {left, right, above,
    below} or None). EditVal took the first and last words; we take the first word
    that is not an article and the last word that names a position."""
    words = [w.strip(".,").lower() for w in to.split()]
    obj = next((w for w in words if w not in _ARTICLES and w not in POSITIONS), words[0] if words else "")
    pos = next((POSITIONS[w] for w in reversed(words) if w in POSITIONS), None)
    return obj, pos


def part_query(to: str) -> str:
    """Alter-parts ``to`` values read "add <part>": the detector is asked for the part."""
    t = to.strip()
    return t[4:].strip() if t.lower().startswith("add ") else t


def rule_object_addition(edited: Sequence[Detection]) -> int:
    """Queries ``[to, class]`` on the edited image: both present."""
    return int(best_detection(edited, 0) is not None and best_detection(edited, 1) is not None)


def rule_object_replacement(edited: Sequence[Detection]) -> int:
    """Queries ``[to, class]`` on the edited image: new object present, original gone."""
    return int(best_detection(edited, 0) is not None and best_detection(edited, 1) is None)


def rule_alter_parts(edited: Sequence[Detection]) -> int:
    """Queries ``[part, class]``: both present and the part's centre inside the
    object's box (boxes read as corners, which EditVal's code misread as centre/size)."""
    part, obj = best_detection(edited, 0), best_detection(edited, 1)
    if part is None or obj is None:
        return 0
    cx, cy = part.center
    x0, y0, x1, y1 = obj.box
    return int(x0 < cx < x1 and y0 < cy < y1)


def rule_positional_addition(edited: Sequence[Detection], position: str | None) -> int:
    """Queries ``[object, class]``: both present and the new object's centre on the
    asked side of the class's centre. Image y grows downwards, so "above" means a
    smaller y (EditVal's code had above/below inverted)."""
    add, obj = best_detection(edited, 0), best_detection(edited, 1)
    if add is None or obj is None or position is None:
        return 0
    (ax, ay), (ox, oy) = add.center, obj.center
    return int({"left": ax < ox, "right": ax > ox, "above": ay < oy, "below": ay > oy}[position])


def rule_position_replacement(original: Sequence[Detection], edited: Sequence[Detection], to: str,
                              scale: tuple[float, float] = (1.0, 1.0), delta: float = POSITION_DELTA) -> int:
    """Query ``[class]`` on both images: the object's centre moved left/right by more
    than ``delta`` pixels. ``scale`` maps edited-image pixels to original-image pixels."""
    a, b = best_detection(original, 0), best_detection(edited, 0)
    if a is None or b is None:
        return 0
    b = b.scaled(*scale)
    side = POSITIONS.get(to.strip().lower().split()[-1] if to.strip() else "", None)
    if side == "left":
        return int(b.center[0] < a.center[0] - delta)
    if side == "right":
        return int(b.center[0] > a.center[0] + delta)
    return 0


def rule_size(original: Sequence[Detection], edited: Sequence[Detection], to: str,
              scale: tuple[float, float] = (1.0, 1.0)) -> int:
    """Query ``[class]`` on both images: box area grew ("large"/"big") or shrank ("small")."""
    a, b = best_detection(original, 0), best_detection(edited, 0)
    if a is None or b is None:
        return 0
    b = b.scaled(*scale)
    t = to.strip().lower()
    if t in ("large", "big", "bigger", "larger"):
        return int(b.area > a.area)
    if t in ("small", "smaller", "tiny"):
        return int(b.area < a.area)
    return 0


# --------------------------------------------------------------------------- protocols
#: ``fixed``: the intended rules above (the default); ``official``: auto_eval.py's decisions.
PROTOCOLS = ("fixed", "official")
PROTOCOL_NOTES = {
    "fixed": "the intended rules, auto_eval.py's bugs fixed (lime_edit.eval.editval lists each deviation)",
    "official": "auto_eval.py's decisions bug for bug (as the published numbers); its size rule crashes "
                "on every sample (failed rows)",
}


class OfficialCrash(Exception):
    """Where EditVal's ``auto_eval.py`` raises: in official mode the sample is a failed row."""


def _q(obj: object) -> str:
    return "a photo of a " + str(obj)          # EditVal's query template, as written there


def queries(edit_type: str, to: str, cls: str, protocol: str = "fixed") -> tuple[list[str], list[str] | None]:
    """The OWL-ViT text queries: ``(on the edited image, on the original or None)``."""
    if edit_type in ("position_replacement", "size"):
        return [_q(cls)], [_q(cls)]
    if protocol == "official":
        # auto_eval.py: ``to`` verbatim ("a photo of a add sweater"); positional addition
        # asks for ``to.split(' ')[0]``
        obj = to.split(" ")[0] if edit_type == "positional_addition" else to
        return [_q(obj), _q(cls)], None
    if edit_type == "alter_parts":
        return [_q(part_query(to)), _q(cls)], None
    if edit_type == "positional_addition":
        return [_q(parse_positional(to)[0]), _q(cls)], None
    return [_q(to), _q(cls)], None


def decide(edit_type: str, to: str, edited: Sequence[Detection], original: Sequence[Detection] | None = None,
           scale: tuple[float, float] = (1.0, 1.0), protocol: str = "fixed") -> int:
    """0/1 for one edit from the detections of :func:`queries`' texts (``scale``: edited
    pixels -> original pixels, used by the fixed rules only). ``protocol="official"``
    raises :class:`OfficialCrash` where auto_eval.py crashes."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol {protocol!r}: choose from {', '.join(PROTOCOLS)}")
    if protocol == "official":
        rule = {"object_addition": lambda: official_object_addition(edited),
                "object_replacement": lambda: official_object_replacement(edited),
                "alter_parts": lambda: official_alter_parts(edited),
                "positional_addition": lambda: official_positional_addition(edited, to),
                "position_replacement": lambda: official_position_replacement(original or [], edited, to),
                "size": lambda: official_size(original or [], edited, to)}
    else:
        rule = {"object_addition": lambda: rule_object_addition(edited),
                "object_replacement": lambda: rule_object_replacement(edited),
                "alter_parts": lambda: rule_alter_parts(edited),
                "positional_addition": lambda: rule_positional_addition(edited, parse_positional(to)[1]),
                "position_replacement": lambda: rule_position_replacement(original or [], edited, to, scale),
                "size": lambda: rule_size(original or [], edited, to, scale)}
    if edit_type not in rule:
        raise ValueError(f"edit type {edit_type!r} is not scored automatically")
    return int(rule[edit_type]())


# ----------------------------------------------------- official: auto_eval.py, bug for bug
def official_last_box(dets: Sequence[Detection], label: int) -> tuple[int, list[float] | None]:
    """auto_eval.py's loop: how many boxes of ``label`` score >= 0.1, and the LAST of them
    in the detector's output order, its corners rounded to 2 decimals (later misread as
    ``(cx, cy, w, h)``)."""
    count, box = 0, None
    for d in dets:
        if d.score >= OWL_THRESHOLD and d.label == label:
            count += 1
            box = [round(v, 2) for v in d.box]
    return count, box


def official_object_addition(edited: Sequence[Detection]) -> int:
    return int(official_last_box(edited, 0)[0] > 0 and official_last_box(edited, 1)[0] > 0)


def official_object_replacement(edited: Sequence[Detection]) -> int:
    return int(official_last_box(edited, 1)[0] == 0 and official_last_box(edited, 0)[0] > 0)


def official_alter_parts(edited: Sequence[Detection]) -> int:
    """The part's (x0, y0), read as its centre, inside the class's box read as
    ``(cx, cy, w, h)`` = its (x0, y0, x1, y1)."""
    (n_part, part), (n_obj, obj) = official_last_box(edited, 0), official_last_box(edited, 1)
    if not (n_obj > 0 and n_part > 0):
        return 0
    cx, cy = part[0], part[1]
    ocx, ocy, ow, oh = obj
    return int(ocx - ow / 2 < cx < ocx + ow / 2 and ocy - oh / 2 < cy < ocy + oh / 2)


def _official_mean(c: float, size: float) -> float:
    # the mean of the four corner coordinates built from (c, size) as auto_eval.py sums them
    vals = [c - size / 2, c + size / 2, c + size / 2, c - size / 2]
    return sum(vals) / len(vals)


def official_positional_addition(edited: Sequence[Detection], to: str) -> int:
    """The position is ``to.split(' ')[-1]``: "below" counts a SMALLER y (higher up),
    "top" a larger one, "left"/"right" compare x; any other word scores 0."""
    (n_add, add), (n_obj, obj) = official_last_box(edited, 0), official_last_box(edited, 1)
    pos = to.split(" ")[-1]
    if not (n_obj > 0 and n_add > 0):
        return 0
    ax, ay = _official_mean(add[0], add[2]), _official_mean(add[1], add[3])
    ox, oy = _official_mean(obj[0], obj[2]), _official_mean(obj[1], obj[3])
    if pos == "below":
        return int(ay < oy)
    if pos == "top":
        return int(ay > oy)
    if pos == "left":
        return int(ax < ox)
    if pos == "right":
        return int(ax > ox)
    return 0


def official_position_replacement(original: Sequence[Detection], edited: Sequence[Detection], to: str,
                                  delta: float = POSITION_DELTA) -> int:
    """The box's x0 (read as its centre) moved by more than 200 px, each image in its
    own pixel frame; ``to`` must be exactly "left" or "right"."""
    (n_old, old), (n_new, new) = official_last_box(original, 0), official_last_box(edited, 0)
    if not (n_new > 0 and n_old > 0):
        return 0
    if to == "left":
        return int(new[0] < old[0] - delta)
    if to == "right":
        return int(new[0] > old[0] + delta)
    return 0


def official_size(original: Sequence[Detection], edited: Sequence[Detection], to: str) -> int:
    """auto_eval.py's ``evaluate_size`` opens the edited image as ``Image.open(img_)``, a
    name defined nowhere: it raises NameError on every sample, before any decision."""
    raise OfficialCrash("EditVal's auto_eval.py crashes on every size sample (evaluate_size: "
                        "NameError: name 'img_' is not defined); official mode has no size decision")
