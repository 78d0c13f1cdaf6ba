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
