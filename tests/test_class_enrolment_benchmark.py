"""benchmarks/class_enrolment.py: the scene size it regenerates the synthetic splits at, read from a checkpoint's
saved image processor (current processors resize the short side; older ones saved height/width)."""

import pytest

from benchmarks.class_enrolment import scene_size
from training.preprocessing import IMAGENET_NORMALIZATION, build_image_processor


def test_scene_size_reads_the_saved_processor_short_side() -> None:
    processor = build_image_processor(IMAGENET_NORMALIZATION, base_size=96)  # what training saves
    assert processor.size == {"shortest_edge": 96}
    assert scene_size(processor) == 96


def test_scene_size_reads_an_older_height_width_processor() -> None:
    processor = build_image_processor(IMAGENET_NORMALIZATION, base_size=None)
    processor.size = {"height": 64, "width": 64}
    assert scene_size(processor) == 64


def test_scene_size_without_a_resize_size_names_the_processor_size() -> None:
    processor = build_image_processor(IMAGENET_NORMALIZATION, base_size=None)
    processor.size = {}
    with pytest.raises(ValueError, match="no resize size"):
        scene_size(processor)
