"""benchmarks/demo_localization.py's miss counts (pure helpers; the full run needs the model)."""

from types import SimpleNamespace

import pytest
from conftest import load_benchmark_script


@pytest.fixture(scope="module")
def dl():
    return load_benchmark_script("demo_localization")


@pytest.mark.parametrize("reference, kind", [("circle", "shape"), ("circle on the left", "position"),
                                             ("big red circle", "size"), ("small circle", "size"),
                                             ("red circle", "colour")])
def test_reference_kind(dl, reference, kind):
    assert dl.reference_kind(SimpleNamespace(reference=reference)) == kind


def test_misses_count_scenes_whose_points_all_miss(dl):
    rows = [{"points_in_mask": 0.0, "roi_iou": 0.0}, {"points_in_mask": 0.0, "roi_iou": 0.3},
            {"points_in_mask": 0.5, "roi_iou": 0.8}, {"points_in_mask": 1.0, "roi_iou": 0.6}]
    m = dl.misses(rows, ["shape", "colour", "shape", "size"])
    assert m["all_points_miss"] == 2 and m["all_points_miss_but_overlap"] == 1
    assert m["roi_iou_where_points_hit"] == pytest.approx(0.7)
    assert m["by_reference"] == {"colour": {"scenes": 1, "all_points_miss": 1},
                                 "shape": {"scenes": 2, "all_points_miss": 1},
                                 "size": {"scenes": 1, "all_points_miss": 0}}
    assert dl.misses([{"points_in_mask": 0.0, "roi_iou": 0.0}], ["shape"])["roi_iou_where_points_hit"] is None
