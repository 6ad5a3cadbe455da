import numpy as np

from desertmind.data.classes import (
    CLASS_NAMES,
    CLASSES,
    IGNORE_INDEX,
    RAW_IDS,
    RAW_TO_TRAIN,
    TRAIN_TO_RAW,
    remap,
)


def test_table_has_the_ten_duality_classes_in_raw_id_order():
    assert RAW_IDS == (100, 200, 300, 500, 550, 600, 700, 800, 7100, 10000)
    assert [c.train_id for c in CLASSES] == list(range(10))
    assert "Flowers" in CLASS_NAMES and "Background" not in CLASS_NAMES
    assert len({c.color for c in CLASSES}) == 10


def test_lookup_table_maps_known_ids_and_ignores_everything_else():
    assert RAW_TO_TRAIN.shape == (65536,) and RAW_TO_TRAIN.dtype == np.uint8
    for c in CLASSES:
        assert RAW_TO_TRAIN[c.raw_id] == c.train_id
    unknown = np.setdiff1d(np.arange(65536), RAW_IDS)
    assert (RAW_TO_TRAIN[unknown] == IGNORE_INDEX).all()
    # the classic bug: 0 (no Background class) must not become Trees (train id 0)
    assert RAW_TO_TRAIN[0] == IGNORE_INDEX


def test_remap_round_trips_through_train_to_raw():
    raw = np.array([[100, 600, 10000], [7100, 4242, 0]], dtype=np.uint16)
    train = remap(raw)
    assert train.tolist() == [[0, 5, 9], [8, 255, 255]]
    known = train != IGNORE_INDEX
    assert (TRAIN_TO_RAW[train[known]] == raw[known]).all()


def test_every_two_class_colours_can_be_told_apart():
    import itertools

    import cv2

    from desertmind.data.classes import CLASSES

    def lab(rgb):  # OpenCV's 8-bit Lab, scaled back to L in 0-100 and a, b around 0
        v = cv2.cvtColor(np.uint8([[rgb]]), cv2.COLOR_RGB2LAB)[0, 0].astype(float)
        return v * [100 / 255, 1, 1] - [0, 128, 128]

    for a, b in itertools.combinations(CLASSES, 2):
        assert np.linalg.norm(lab(a.color) - lab(b.color)) >= 30, (a.name, b.name)
