"""The "Shapes with Attributes" data set: procedural images rendered from factors, with object masks.

Every image is a pure function of a :class:`Scene` (its factor values plus a nuisance ``seed``), so any
scene can be re-rendered with exactly one factor changed: the exact counterfactual that SPEC §6 asks for.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "diamond")
COLOURS: tuple[str, ...] = ("red", "orange", "yellow", "green", "cyan", "blue", "purple")
PATTERNS: tuple[str, ...] = ("solid", "striped", "dotted", "checkered")
SIZES: tuple[str, ...] = ("small", "medium", "large")
BACKGROUNDS: tuple[str, ...] = ("plain", "noise", "gradient", "grid")
FACTORS: tuple[str, ...] = ("shape", "colour", "pattern", "size", "position", "background")

# Saturated, hue-separated object colours (hues roughly 0, 33, 55, 130, 185, 225, 280 degrees).
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (250, 135, 0),
    "yellow": (240, 220, 20),
    "green": (30, 170, 50),
    "cyan": (0, 200, 220),
    "blue": (30, 70, 230),
    "purple": (150, 50, 200),
}
# Object radius (half the bounding-box side) as a fraction of the image side.
SIZE_RADIUS: dict[str, float] = {"small": 0.16, "medium": 0.23, "large": 0.30}
# Gap kept between the object's bounding box and the image border (image fraction).
MARGIN = 0.02
# Pattern cell size (image fraction) and how much darker the pattern's dark parts are.
PATTERN_PERIOD = 0.09
PATTERN_SHADE = 0.55
SUPERSAMPLE = 4

ROUND_SHAPES = ("circle", "hexagon")
POINTY_SHAPES = ("triangle", "star", "diamond")
WARM_COLOURS = ("red", "orange", "yellow")
COOL_COLOURS = ("green", "cyan", "blue", "purple")
H_POSITIONS = ("h_left", "h_center", "h_right")
V_POSITIONS = ("v_top", "v_middle", "v_bottom")

ATTRIBUTES: list[str] = [
    *SHAPES,
    *COLOURS,
    *PATTERNS,
    *SIZES,
    *H_POSITIONS,
    *V_POSITIONS,
    *(f"bg_{b}" for b in BACKGROUNDS),
    "round",
    "pointy",
    "warm",
    "cool",
    "textured",
]
assert len(set(ATTRIBUTES)) == len(ATTRIBUTES)

CLASSES: list[str] = [f"{colour}_{shape}" for shape in SHAPES for colour in COLOURS]

# The categorical factors a class can be defined by, with their values.
CLASS_FACTOR_VALUES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES, "colour": COLOURS, "pattern": PATTERNS, "size": SIZES, "background": BACKGROUNDS,
}
DEFAULT_CLASSES_BY: tuple[str, str] = ("shape", "colour")


def class_name(shape: str, colour: str) -> str:
    """Class name of a (shape, colour) combination, e.g. ``red_circle``."""
    return f"{colour}_{shape}"


def class_names(classes_by: tuple[str, str] = DEFAULT_CLASSES_BY) -> list[str]:
    """Every class of a data set whose classes are the value pairs of two factors, ``"<second>_<first>"``:
    :data:`CLASSES` (``red_circle``...) by default, ``grid_circle``... for ``("shape", "background")``."""
    first, second = _check_classes_by(classes_by)
    return [f"{b}_{a}" for a in CLASS_FACTOR_VALUES[first] for b in CLASS_FACTOR_VALUES[second]]


def _check_classes_by(classes_by: tuple[str, str]) -> tuple[str, str]:
    if len(classes_by) != 2 or classes_by[0] == classes_by[1] or not set(classes_by) <= set(CLASS_FACTOR_VALUES):
        raise ValueError(f"classes_by must be two different factors of {sorted(CLASS_FACTOR_VALUES)}, "
                         f"got {classes_by!r}")
    return classes_by[0], classes_by[1]


def _star(points: int = 5, inner: float = 0.45) -> list[tuple[float, float]]:
    """Unit star polygon pointing up (y grows downwards, as in images)."""
    verts = []
    for k in range(2 * points):
        r = 1.0 if k % 2 == 0 else inner
        a = -math.pi / 2 + k * math.pi / points
        verts.append((r * math.cos(a), r * math.sin(a)))
    return verts


# Shape outlines in unit coordinates, all inside the box [-1, 1]^2 so a centre kept ``radius`` from the
# border keeps the whole object inside the image.
_POLYGONS: dict[str, list[tuple[float, float]]] = {
    "square": [(-0.85, -0.85), (0.85, -0.85), (0.85, 0.85), (-0.85, 0.85)],
    "triangle": [(0.0, -1.0), (1.0, 0.75), (-1.0, 0.75)],
    "star": _star(),
    "hexagon": [(math.cos(k * math.pi / 3), math.sin(k * math.pi / 3)) for k in range(6)],
    "diamond": [(0.0, -1.0), (0.72, 0.0), (0.0, 1.0), (-0.72, 0.0)],
}
_CIRCLE_RADIUS = 0.95


def position_range(size: str) -> tuple[float, float]:
    """Allowed (low, high) range of the centre coordinates for an object of this size."""
    r = SIZE_RADIUS[size] + MARGIN
    return r, 1.0 - r


@dataclass(frozen=True)
class Scene:
    """All factor values of one image plus the seed of its nuisance (background texture, tint)."""

    shape: str
    colour: str
    pattern: str
    size: str
    x: float
    y: float
    background: str
    seed: int

    def __post_init__(self) -> None:
        """Reject unknown factor values early, with the offending field named."""
        for name, allowed in (
            ("shape", SHAPES),
            ("colour", COLOURS),
            ("pattern", PATTERNS),
            ("size", SIZES),
            ("background", BACKGROUNDS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"Scene.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("x", "y"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"Scene.{name} must be an image fraction in [0, 1], got {value!r}")

    def replace(self, **changes: Any) -> Scene:
        """A copy with some fields changed (validated like a new scene)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of the fields."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scene:
        """Inverse of :meth:`to_dict`."""
        return cls(
            shape=d["shape"],
            colour=d["colour"],
            pattern=d["pattern"],
            size=d["size"],
            x=float(d["x"]),
            y=float(d["y"]),
            background=d["background"],
            seed=int(d["seed"]),
        )

    @property
    def class_name(self) -> str:
        """The scene's class (its shape and colour), e.g. ``red_circle``."""
        return class_name(self.shape, self.colour)

    @property
    def h_position(self) -> str:
        """Horizontal third of the image holding the centre: h_left, h_center or h_right."""
        return H_POSITIONS[min(int(self.x * 3), 2)]

    @property
    def v_position(self) -> str:
        """Vertical third of the image holding the centre: v_top, v_middle or v_bottom."""
        return V_POSITIONS[min(int(self.y * 3), 2)]


def _pick(rng: np.random.Generator, values: tuple[str, ...], given: str | None) -> str:
    """``given`` if set, else a uniform draw from ``values``."""
    return given if given is not None else values[int(rng.integers(len(values)))]


def random_scene(
    rng: np.random.Generator,
    shape: str | None = None,
    colour: str | None = None,
    pattern: str | None = None,
    size: str | None = None,
    x: float | None = None,
    y: float | None = None,
    background: str | None = None,
    seed: int | None = None,
) -> Scene:
    """A scene with the given factors fixed and the others drawn from ``rng`` (position uniform in range)."""
    shape = _pick(rng, SHAPES, shape)
    colour = _pick(rng, COLOURS, colour)
    pattern = _pick(rng, PATTERNS, pattern)
    size = _pick(rng, SIZES, size)
    lo, hi = position_range(size)
    x = float(rng.uniform(lo, hi)) if x is None else x
    y = float(rng.uniform(lo, hi)) if y is None else y
    background = _pick(rng, BACKGROUNDS, background)
    seed = int(rng.integers(2**31 - 1)) if seed is None else seed
    return Scene(shape, colour, pattern, size, x, y, background, seed)


def _clamp_position(x: float, y: float, size: str) -> tuple[float, float]:
    """Nearest centre that keeps an object of ``size`` inside the image."""
    lo, hi = position_range(size)
    return min(max(x, lo), hi), min(max(y, lo), hi)


def counterfactual(
    scene: Scene, factor: str, value: Any = None, rng: np.random.Generator | None = None
) -> Scene:
    """The scene with exactly one factor changed, to ``value`` or to a different random value.

    ``factor`` is one of :data:`FACTORS`. For ``"position"`` the value is an ``(x, y)`` pair; a random
    new position is at least 0.25 away from the old one. A ``"size"`` change that would push the object
    out of the image moves its centre the least needed to keep it inside (a random size change prefers
    sizes that fit where the object is). Without ``rng`` the draw is seeded from the scene and factor.
    """
    if factor not in FACTORS:
        raise ValueError(f"factor must be one of {FACTORS}, got {factor!r}")
    if rng is None:
        rng = np.random.default_rng([scene.seed, FACTORS.index(factor)])
    if factor == "position":
        if value is not None:
            x, y = (float(v) for v in value)
            return scene.replace(x=x, y=y)
        lo, hi = position_range(scene.size)
        for _ in range(10_000):
            x, y = (float(v) for v in rng.uniform(lo, hi, size=2))
            if math.hypot(x - scene.x, y - scene.y) >= 0.25:
                return scene.replace(x=x, y=y)
        raise RuntimeError("could not find a position 0.25 away from the current one")
    values = {
        "shape": SHAPES,
        "colour": COLOURS,
        "pattern": PATTERNS,
        "size": SIZES,
        "background": BACKGROUNDS,
    }[factor]
    current = getattr(scene, factor)
    if value is None:
        others = [v for v in values if v != current]
        if factor == "size":
            fitting = [s for s in others if _clamp_position(scene.x, scene.y, s) == (scene.x, scene.y)]
            others = fitting or others
        value = others[int(rng.integers(len(others)))]
    elif value not in values:
        raise ValueError(f"{factor} must be one of {values}, got {value!r}")
    if factor == "size":
        x, y = _clamp_position(scene.x, scene.y, value)
        return scene.replace(size=value, x=x, y=y)
    return scene.replace(**{factor: value})


def counterfactual_variants(
    scene: Scene, factor: str, draws: int = 3, rng: np.random.Generator | None = None
) -> list[Scene]:
    """The scenes that differ from ``scene`` in ``factor`` only, to average a change of that factor over.

    A categorical factor takes every other value once, so the average is the exact expectation of a
    uniformly random change (a few random draws of it made the counterfactual ground truth noisy);
    ``"position"`` takes ``draws`` random new positions (:func:`counterfactual`).
    """
    if factor == "position":
        if draws < 1:
            raise ValueError(f"draws must be >= 1, got {draws}")
        return [counterfactual(scene, "position", rng=rng) for _ in range(draws)]
    if factor not in CLASS_FACTOR_VALUES:
        raise ValueError(f"factor must be one of {FACTORS}, got {factor!r}")
    return [counterfactual(scene, factor, v) for v in CLASS_FACTOR_VALUES[factor] if v != getattr(scene, factor)]


def scene_attributes(scene: Scene) -> np.ndarray:
    """Binary (len(ATTRIBUTES),) uint8 vector of the attributes that hold for the scene."""
    on = {
        scene.shape,
        scene.colour,
        scene.pattern,
        scene.size,
        scene.h_position,
        scene.v_position,
        f"bg_{scene.background}",
    }
    if scene.shape in ROUND_SHAPES:
        on.add("round")
    if scene.shape in POINTY_SHAPES:
        on.add("pointy")
    on.add("warm" if scene.colour in WARM_COLOURS else "cool")
    if scene.pattern != "solid":
        on.add("textured")
    return np.array([name in on for name in ATTRIBUTES], dtype=np.uint8)


@dataclass(frozen=True)
class Rendered:
    """A rendered scene: the RGB image, the object mask and the soft (anti-aliased) coverage."""

    image: Image.Image
    mask: np.ndarray  # bool (size, size), True on the object
    alpha: np.ndarray  # float32 (size, size) in [0, 1], object coverage of each pixel


def _background(scene: Scene, size: int) -> np.ndarray:
    """Greyish nuisance background (size, size, 3) float32 drawn only from the scene seed.

    Every draw is made in the same order whatever the background type (and no other factor is read), so
    the same seed gives the same tint and brightness under every background and every object.
    """
    rng = np.random.default_rng(scene.seed)
    brightness = rng.uniform(80.0, 185.0)
    tint = rng.uniform(-12.0, 12.0, size=3)
    fine = rng.normal(0.0, 1.0, size=(size, size))
    coarse_side = max(size // 8, 2)
    coarse = rng.normal(0.0, 1.0, size=(coarse_side, coarse_side)).astype(np.float32)
    angle = rng.uniform(0.0, 2 * math.pi)
    gradient_amplitude = rng.uniform(40.0, 70.0) * rng.choice([-1.0, 1.0])
    grid_period = rng.uniform(0.10, 0.20) * size
    grid_offset = rng.uniform(0.0, 1.0, size=2) * grid_period
    grid_shade = rng.uniform(30.0, 50.0) * rng.choice([-1.0, 1.0])

    grey = np.full((size, size), brightness, dtype=np.float32)
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    if scene.background == "noise":
        smooth = np.asarray(Image.fromarray(coarse, mode="F").resize((size, size), Image.BICUBIC))
        grey = grey + 22.0 * smooth + 10.0 * fine.astype(np.float32)
    elif scene.background == "gradient":
        ramp = (coords[None, :] - 0.5) * math.cos(angle) + (coords[:, None] - 0.5) * math.sin(angle)
        grey = grey + gradient_amplitude * ramp / 0.7
    elif scene.background == "grid":
        pix = np.arange(size, dtype=np.float32)
        on_x = ((pix - grid_offset[0]) % grid_period) < 1.5
        on_y = ((pix - grid_offset[1]) % grid_period) < 1.5
        grey = grey + grid_shade * (on_x[None, :] | on_y[:, None])
    return np.clip(grey[:, :, None] + tint[None, None, :], 0.0, 255.0).astype(np.float32)


def _coverage(scene: Scene, size: int) -> np.ndarray:
    """Anti-aliased object coverage in [0, 1]: drawn at SUPERSAMPLE x resolution, then box-averaged."""
    big = size * SUPERSAMPLE
    radius = SIZE_RADIUS[scene.size] * big
    cx, cy = scene.x * big, scene.y * big
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    if scene.shape == "circle":
        r = _CIRCLE_RADIUS * radius
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        draw.polygon([(cx + u * radius, cy + v * radius) for u, v in _POLYGONS[scene.shape]], fill=255)
    small = canvas.resize((size, size), Image.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def _object_colour(scene: Scene, size: int) -> np.ndarray:
    """Object fill (size, size, 3) float32: the colour with its pattern, phase anchored at the centre."""
    base = np.array(COLOUR_RGB[scene.colour], dtype=np.float32)
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    u = (coords[None, :] - scene.x) / PATTERN_PERIOD
    v = (coords[:, None] - scene.y) / PATTERN_PERIOD
    if scene.pattern == "solid":
        dark = np.zeros((size, size), dtype=bool)
    elif scene.pattern == "striped":
        dark = ((u + v) / math.sqrt(2)) % 1.0 < 0.5
    elif scene.pattern == "dotted":
        du = (u % 1.0) - 0.5
        dv = (v % 1.0) - 0.5
        dark = du**2 + dv**2 < 0.3**2
    else:  # checkered
        dark = (np.floor(u + 0.5) + np.floor(v + 0.5)) % 2 == 1
    shade = np.where(dark, PATTERN_SHADE, 1.0).astype(np.float32)
    return shade[:, :, None] * base[None, None, :]


def render(scene: Scene, size: int = 112) -> Rendered:
    """Render a scene to a ``size`` x ``size`` RGB image and its object mask (bit-identical on re-render)."""
    alpha = _coverage(scene, size)
    background = _background(scene, size)
    fill = _object_colour(scene, size)
    a = alpha[:, :, None]
    pixels = np.rint(background * (1.0 - a) + fill * a).clip(0, 255).astype(np.uint8)
    return Rendered(image=Image.fromarray(pixels, mode="RGB"), mask=alpha >= 0.5, alpha=alpha)


def _class_counts(n: int, n_classes: int = len(CLASSES)) -> list[int]:
    """Images per class when ``n`` images are spread as evenly as possible over the classes."""
    base, extra = divmod(n, n_classes)
    return [base + (1 if k < extra else 0) for k in range(n_classes)]


def pick_test_classes(
    n_test: int, rng: np.random.Generator, classes_by: tuple[str, str] = DEFAULT_CLASSES_BY
) -> list[str]:
    """``n_test`` random classes whose removal still leaves every value of both class factors (by
    default every shape and every colour) in training."""
    first, second = _check_classes_by(classes_by)
    classes = class_names(classes_by)
    order = [classes[i] for i in rng.permutation(len(classes))]
    first_left = dict.fromkeys(CLASS_FACTOR_VALUES[first], len(CLASS_FACTOR_VALUES[second]))
    second_left = dict.fromkeys(CLASS_FACTOR_VALUES[second], len(CLASS_FACTOR_VALUES[first]))
    test: list[str] = []
    for name in order:
        if len(test) == n_test:
            break
        b, a = name.split("_")
        if first_left[a] > 1 and second_left[b] > 1:
            first_left[a] -= 1
            second_left[b] -= 1
            test.append(name)
    if len(test) < n_test:
        raise ValueError(
            f"cannot hold out {n_test} classes and keep every {first} and {second} in the training classes"
        )
    return sorted(test, key=classes.index)


def _write_index(path: Path, names: list[str]) -> None:
    """AwA2-style ``<idx>\\t<name>`` lines, idx counting from 1."""
    path.write_text("".join(f"{i}\t{name}\n" for i, name in enumerate(names, start=1)))


def write_dataset(
    out_dir: str | Path,
    n: int,
    seed: int = 0,
    image_size: int = 112,
    test_fraction: float = 0.2,
    progress: bool = True,
    classes_by: tuple[str, str] = DEFAULT_CLASSES_BY,
) -> Path:
    """Render ``n`` images spread over the classes and write them in the AwA2 layout (plus masks/scenes).

    A class is a value pair of the two ``classes_by`` factors: by default (shape, colour), 42 classes,
    so a similarity model trained on the classes matches on shape and colour. Other pairs, e.g.
    ``("shape", "background")`` (24 classes), make a benchmark whose explaining factors lie in
    different places (object vs surround). Deterministic in (n, seed, image_size, classes_by); the
    scenes do not depend on ``test_fraction``.
    """
    first, second = _check_classes_by(classes_by)
    classes = class_names(classes_by)
    if n < len(classes):
        raise ValueError(f"n must be at least the number of classes ({len(classes)}), got {n}")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scene_rng = np.random.default_rng([seed, 0])
    split_rng = np.random.default_rng([seed, 1])

    instance_lines: list[str] = []
    scene_lines: list[str] = []
    class_rows = np.zeros((len(classes), len(ATTRIBUTES)), dtype=np.uint8)
    with tqdm(total=n, desc="rendering shapes", disable=not progress, unit="img") as bar:
        for k, count in enumerate(_class_counts(n, len(classes))):
            name = classes[k]
            b, a = name.split("_")
            (out / "JPEGImages" / name).mkdir(parents=True, exist_ok=True)
            (out / "masks" / name).mkdir(parents=True, exist_ok=True)
            attribute_sum = np.zeros(len(ATTRIBUTES), dtype=np.int64)
            for i in range(1, count + 1):
                scene = random_scene(scene_rng, **{first: a, second: b})
                rendered = render(scene, image_size)
                rel = f"JPEGImages/{name}/{name}_{i:05d}.jpg"
                rendered.image.save(out / rel, quality=95)
                Image.fromarray(rendered.mask.astype(np.uint8) * 255, mode="L").save(
                    out / "masks" / name / f"{name}_{i:05d}.png"
                )
                attrs = scene_attributes(scene)
                attribute_sum += attrs
                instance_lines.append(rel + " " + " ".join(str(int(a)) for a in attrs) + "\n")
                scene_lines.append(json.dumps({"path": rel, "class": name, "scene": scene.to_dict()}) + "\n")
                bar.update(1)
            class_rows[k] = (2 * attribute_sum >= count).astype(np.uint8)

    test = pick_test_classes(round(test_fraction * len(classes)), split_rng, classes_by)
    train = [c for c in classes if c not in test]
    _write_index(out / "classes.txt", classes)
    _write_index(out / "predicates.txt", ATTRIBUTES)
    (out / "predicate-matrix-binary.txt").write_text(
        "".join(" ".join(str(int(v)) for v in row) + "\n" for row in class_rows)
    )
    (out / "trainclasses.txt").write_text("".join(c + "\n" for c in train))
    (out / "testclasses.txt").write_text("".join(c + "\n" for c in test))
    (out / "instance-attributes.txt").write_text("".join(instance_lines))
    (out / "scenes.jsonl").write_text("".join(scene_lines))
    return out


def write_example_pair(out_dir: str | Path, seed: int = 0, image_size: int = 112) -> tuple[Path, Path]:
    """Write ``query.jpg`` and ``reference.jpg``: same shape and colour, other pattern/background/position."""
    rng = np.random.default_rng(seed)
    query = random_scene(rng)
    reference = counterfactual(query, "pattern", rng=rng)
    reference = counterfactual(reference, "background", rng=rng)
    reference = counterfactual(reference, "position", rng=rng)
    reference = reference.replace(seed=int(rng.integers(2**31 - 1)))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = (out / "query.jpg", out / "reference.jpg")
    for scene, path in zip((query, reference), paths):
        render(scene, image_size).image.save(path, quality=95)
    return paths


# Which scene factor each Shapes-with-Attributes attribute belongs to (derived attributes included).
ATTRIBUTE_FACTORS: dict[str, str] = {
    **dict.fromkeys(("circle", "square", "triangle", "star", "hexagon", "diamond", "round", "pointy"), "shape"),
    **dict.fromkeys(("red", "orange", "yellow", "green", "cyan", "blue", "purple", "warm", "cool"), "colour"),
    **dict.fromkeys(("solid", "striped", "dotted", "checkered", "textured"), "pattern"),
    **dict.fromkeys(("small", "medium", "large"), "size"),
    **dict.fromkeys(("h_left", "h_center", "h_right", "v_top", "v_middle", "v_bottom"), "position"),
    **dict.fromkeys(("bg_plain", "bg_noise", "bg_gradient", "bg_grid"), "background"),
}
assert set(ATTRIBUTE_FACTORS) == set(ATTRIBUTES) and set(ATTRIBUTE_FACTORS.values()) == set(FACTORS)
