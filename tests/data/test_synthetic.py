"""The synthetic "Shapes with Attributes" renderer: determinism, exact counterfactuals, masks, attributes."""

from __future__ import annotations

import numpy as np
import pytest

from sane.data.synthetic import (
    ATTRIBUTES,
    BACKGROUNDS,
    CLASSES,
    COLOUR_RGB,
    COLOURS,
    PATTERNS,
    SHAPES,
    SIZES,
    Scene,
    counterfactual,
    counterfactual_variants,
    pick_test_classes,
    position_range,
    random_scene,
    render,
    scene_attributes,
)

SIZE = 96


def scene(**changes) -> Scene:
    """A fixed textured scene on a textured background, with some fields overridden."""
    base = Scene("star", "blue", "striped", "medium", 0.4, 0.6, "noise", seed=1234)
    return base.replace(**changes)


def pixels(s: Scene) -> np.ndarray:
    """Rendered RGB pixels as int array."""
    return np.asarray(render(s, SIZE).image, dtype=np.int64)


def centroid(mask: np.ndarray) -> np.ndarray:
    """(x, y) centroid of a mask as image fractions."""
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()]) / mask.shape[0]


def test_constants_and_attribute_names():
    assert len(SHAPES) == 6 and len(COLOURS) == 7 and len(PATTERNS) == 4 and len(SIZES) == 3
    assert len(BACKGROUNDS) == 4
    assert len(CLASSES) == 42 and len(set(CLASSES)) == 42
    assert CLASSES[:2] == ["red_circle", "orange_circle"] and CLASSES[7] == "red_square"
    assert len(set(ATTRIBUTES)) == len(ATTRIBUTES)
    assert all(" " not in a for a in ATTRIBUTES)
    for name in ("circle", "purple", "dotted", "large", "h_left", "v_bottom", "bg_grid", "round", "textured"):
        assert name in ATTRIBUTES


def test_render_is_bit_identical_and_sized():
    s = scene()
    a, b = render(s, SIZE), render(s, SIZE)
    assert a.image.mode == "RGB" and a.image.size == (SIZE, SIZE)
    assert a.mask.dtype == bool and a.mask.shape == (SIZE, SIZE)
    assert a.image.tobytes() == b.image.tobytes()
    assert np.array_equal(a.mask, b.mask)
    # A different nuisance seed changes the (noise) background but not the object mask.
    c = render(s.replace(seed=99), SIZE)
    assert np.array_equal(a.mask, c.mask)
    assert a.image.tobytes() != c.image.tobytes()


def test_colour_change_keeps_mask_and_background_changes_object():
    s = scene()
    t = counterfactual(s, "colour", "yellow")
    assert t == s.replace(colour="yellow")
    rs, rt = render(s, SIZE), render(t, SIZE)
    assert np.array_equal(rs.mask, rt.mask)
    outside = rs.alpha == 0
    assert outside.sum() > SIZE * SIZE // 2
    assert np.array_equal(pixels(s)[outside], pixels(t)[outside])
    inside = rs.alpha == 1
    assert inside.sum() > 100
    assert np.abs(pixels(s)[inside] - pixels(t)[inside]).mean() > 50


def test_pattern_change_keeps_mask_and_changes_texture():
    s = scene(pattern="solid")
    for pattern in ("striped", "dotted", "checkered"):
        t = counterfactual(s, "pattern", pattern)
        rs, rt = render(s, SIZE), render(t, SIZE)
        assert np.array_equal(rs.mask, rt.mask)
        inside = rs.alpha == 1
        changed = (pixels(s)[inside] != pixels(t)[inside]).any(axis=1).mean()
        assert 0.1 < changed < 0.9, pattern  # a texture: some object pixels darkened, not all


def test_position_change_moves_the_mask_and_the_pattern_with_it():
    s = scene(x=0.3, y=0.3, background="plain")
    t = counterfactual(s, "position", (0.7, 0.65))
    rs, rt = render(s, SIZE), render(t, SIZE)
    assert rs.mask.sum() == pytest.approx(rt.mask.sum(), rel=0.05)
    shift = centroid(rt.mask) - centroid(rs.mask)
    assert shift == pytest.approx([0.4, 0.35], abs=0.03)
    # The stripes are anchored to the object: shifting by whole pixels shifts the object pixels exactly.
    dx, dy = 24, 12
    u = s.replace(x=s.x + dx / SIZE, y=s.y + dy / SIZE)
    ps, pu = pixels(s), pixels(u)
    inside = render(s, SIZE).alpha == 1
    ys, xs = np.nonzero(inside)
    assert np.abs(ps[ys, xs] - pu[ys + dy, xs + dx]).max() <= 1


def test_random_position_counterfactual_is_far_and_in_range():
    rng = np.random.default_rng(0)
    for _ in range(20):
        s = random_scene(rng)
        t = counterfactual(s, "position", rng=rng)
        assert np.hypot(t.x - s.x, t.y - s.y) >= 0.25
        lo, hi = position_range(t.size)
        assert lo <= t.x <= hi and lo <= t.y <= hi
        assert (t.shape, t.colour, t.pattern, t.size, t.background, t.seed) == (
            s.shape,
            s.colour,
            s.pattern,
            s.size,
            s.background,
            s.seed,
        )


def test_background_change_keeps_object_pixels():
    s = scene()
    rs = render(s, SIZE)
    inside = rs.alpha == 1
    for background in BACKGROUNDS:
        t = counterfactual(s, "background", background) if background != s.background else s
        rt = render(t, SIZE)
        assert np.array_equal(rs.mask, rt.mask)
        assert np.array_equal(pixels(s)[inside], pixels(t)[inside])
    outside = rs.alpha == 0
    assert (pixels(s)[outside] != pixels(scene(background="grid"))[outside]).any()


def test_size_change_keeps_centre_and_grows_mask():
    s = scene(size="small", x=0.5, y=0.5, shape="square")
    areas = [render(s.replace(size=size), SIZE).mask.sum() for size in SIZES]
    assert areas[0] < areas[1] < areas[2]
    for size in SIZES:
        assert centroid(render(s.replace(size=size), SIZE).mask) == pytest.approx([0.5, 0.5], abs=0.02)
    # Growing an object near the border moves it just enough to stay inside the image.
    edge = scene(size="small", x=0.18, y=0.5)
    big = counterfactual(edge, "size", "large")
    assert big.size == "large" and big.x == position_range("large")[0] and big.y == 0.5


def test_every_counterfactual_changes_exactly_one_factor():
    rng = np.random.default_rng(3)
    fields = ("shape", "colour", "pattern", "size", "background")
    for _ in range(10):
        s = random_scene(rng)
        for factor in fields:
            t = counterfactual(s, factor, rng=rng)
            assert getattr(t, factor) != getattr(s, factor)
            assert t.seed == s.seed
            for other in fields:
                if other != factor:
                    assert getattr(t, other) == getattr(s, other)
    with pytest.raises(ValueError):
        counterfactual(scene(), "texture")
    with pytest.raises(ValueError):
        counterfactual(scene(), "colour", "magenta")


def test_counterfactual_variants_take_every_other_value_once_and_random_positions():
    s = scene()
    values = {"shape": SHAPES, "colour": COLOURS, "pattern": PATTERNS, "size": SIZES, "background": BACKGROUNDS}
    for factor, all_values in values.items():
        variants = counterfactual_variants(s, factor)
        assert sorted(getattr(v, factor) for v in variants) == sorted(set(all_values) - {getattr(s, factor)})
        assert all(v.seed == s.seed and v.shape == s.shape for v in variants if factor != "shape")
    rng = np.random.default_rng(0)
    moved = counterfactual_variants(s, "position", draws=4, rng=rng)
    assert len(moved) == 4 and all(np.hypot(v.x - s.x, v.y - s.y) >= 0.25 for v in moved)
    assert all((v.shape, v.colour, v.background) == (s.shape, s.colour, s.background) for v in moved)
    with pytest.raises(ValueError):
        counterfactual_variants(s, "texture")
    with pytest.raises(ValueError):
        counterfactual_variants(s, "position", draws=0)


def test_mask_matches_the_drawn_object():
    rng = np.random.default_rng(7)
    for shape in SHAPES:
        for colour in ("red", "green", "blue", "yellow"):
            s = random_scene(rng, shape=shape, colour=colour, pattern="solid")
            r = render(s, SIZE)
            px = np.asarray(r.image, dtype=np.float64)
            target = np.array(COLOUR_RGB[colour], dtype=np.float64)
            distance = np.linalg.norm(px - target, axis=2)
            assert np.median(distance[r.mask]) < 3
            assert (distance[r.alpha == 1] < 3).all()
            # Nothing outside the mask looks like the object colour (backgrounds are greyish).
            assert (distance[r.alpha == 0] > 60).all(), (shape, colour)
            assert np.array_equal(r.mask, r.alpha >= 0.5)
            # The object is centred where the scene says (star/triangle centroids sit a bit low).
            assert centroid(r.mask) == pytest.approx([s.x, s.y], abs=0.06)


def test_scene_attributes_are_consistent():
    s = Scene("triangle", "orange", "dotted", "large", 0.68, 0.32, "gradient", seed=5)
    attrs = scene_attributes(s)
    assert attrs.dtype == np.uint8 and attrs.shape == (len(ATTRIBUTES),)
    on = {name for name, v in zip(ATTRIBUTES, attrs) if v}
    assert on == {
        "triangle",
        "orange",
        "dotted",
        "large",
        "h_right",
        "v_top",
        "bg_gradient",
        "pointy",
        "warm",
        "textured",
    }
    solid = scene_attributes(Scene("hexagon", "cyan", "solid", "small", 0.5, 0.9, "plain", seed=5))
    on = {name for name, v in zip(ATTRIBUTES, solid) if v}
    assert on == {"hexagon", "cyan", "solid", "small", "h_center", "v_bottom", "bg_plain", "round", "cool"}


def test_scene_round_trip_and_validation():
    s = scene()
    assert Scene.from_dict(s.to_dict()) == s
    with pytest.raises(ValueError, match="shape"):
        scene(shape="pentagon")
    with pytest.raises(ValueError, match="x"):
        scene(x=1.5)


def test_random_scene_respects_fixed_factors_and_range():
    rng = np.random.default_rng(1)
    for _ in range(50):
        s = random_scene(rng, shape="diamond", colour="purple")
        assert (s.shape, s.colour) == ("diamond", "purple")
        lo, hi = position_range(s.size)
        assert lo <= s.x <= hi and lo <= s.y <= hi
        assert render(s, 48).mask[[0, -1], :].sum() == 0 and render(s, 48).mask[:, [0, -1]].sum() == 0


def test_test_classes_leave_every_shape_and_colour_in_train():
    for seed in range(5):
        test = pick_test_classes(8, np.random.default_rng(seed))
        assert len(test) == 8
        train = [c for c in CLASSES if c not in test]
        assert {c.split("_")[1] for c in train} == set(SHAPES)
        assert {c.split("_")[0] for c in train} == set(COLOURS)


def test_classes_by_shape_and_background_make_24_classes_whose_images_share_both(tmp_path):
    import json

    from sane.data import AttributeDataset, write_dataset
    from sane.data.synthetic import BACKGROUNDS, class_names
    from sane.evaluation.prior import same_class_pairs

    by = ("shape", "background")
    classes = class_names(by)
    assert len(classes) == 24 and "grid_circle" in classes and class_names() == CLASSES
    for seed in range(3):
        train = [c for c in classes if c not in pick_test_classes(5, np.random.default_rng(seed), by)]
        assert {c.split("_")[1] for c in train} == set(SHAPES) and {c.split("_")[0] for c in train} == set(BACKGROUNDS)
    root = write_dataset(tmp_path / "bg", 48, image_size=32, progress=False, classes_by=by)
    ds = AttributeDataset(root, split="all")
    assert ds.classes == classes and len(ds) == 48
    records = [json.loads(line) for line in (root / "scenes.jsonl").read_text().splitlines()]
    for record in records:
        scene = record["scene"]
        assert record["class"] == f"{scene['background']}_{scene['shape']}"
    assert len({r["scene"]["colour"] for r in records}) > 1  # colour varies within the classes now
    # Same-class pairs follow the given labels, not the scenes' (shape, colour) class.
    labels = [ds.classes[t] for t in ds.targets]
    for q, r in same_class_pairs(ds.scenes, 20, np.random.default_rng(0), labels):
        assert (q.shape, q.background) == (r.shape, r.background) and q != r
    with pytest.raises(ValueError, match="two different factors"):
        class_names(("shape", "shape"))
    with pytest.raises(ValueError, match="two different factors"):
        write_dataset(tmp_path / "bad", 48, classes_by=("shape", "position"), progress=False)
