"""Shapes: a procedural, captioned world with ground truth for every conditioning mode of the paper.

Latent diffusion (Rombach et al., CVPR 2022) is conditioned on class labels (Sec. 4.3.1 / Tab. 3), on text through
tau_theta and cross-attention (Sec. 3.3, Eq. 3), on semantic maps (Sec. 4.3.2) and on layouts / bounding boxes
(App. D.3, layout-to-image). To teach all of them offline on a laptop CPU we draw our own world in which every
such signal is known exactly:

    a sample = 1..3 objects, one per cell of a 3x3 grid, each with a shape, a named colour and a size,
               on a plain light-grey background.

    image    (H, W, 3) uint8      anti-aliased: coverage is measured on a supersampled grid, then averaged
    caption  str                  "a large red circle at the top left and a small blue star in the center"
    class_id int                  SHAPES.index(shape) * len(COLOURS) + colour index (single-object samples), else -1
    objects  list[ShapeObject]    shape, colour, size, position and bbox (x0, y0, x1, y1) in output pixels
    semantic (H, W) uint8         0 = background, 1 + SHAPES.index(shape) where an object covers >= half a pixel

Sample ``index`` of seed ``seed`` depends only on numpy.random.default_rng([seed, index]) (PCG64, which is the
same on every platform), so it is the same picture on every machine and can be drawn in any order.

Speed: each shape is rasterised once into a 512x512 "unit" bitmap; drawing an object samples that bitmap on the
supersampled pixel grid of its own small box and averages S x S blocks, so the work per object is a few thousand
array elements (thousands of 32x32 images per second on one core, see benchmarks/data_speed.py).
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from functools import lru_cache

import numpy as np

from ldm_minimal.utils import unknown_name_error

# ----------------------------------------------------------------------------------------------------------------
# The vocabulary of the world

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "heart")

# Saturated, well separated colours (hue steps of roughly 45 degrees, plus pink), all far from the background.
COLOURS: "OrderedDict[str, tuple[int, int, int]]" = OrderedDict(
    [
        ("red", (220, 30, 35)),
        ("orange", (250, 135, 10)),
        ("yellow", (235, 200, 0)),
        ("green", (30, 160, 50)),
        ("cyan", (0, 185, 200)),
        ("blue", (30, 70, 220)),
        ("purple", (130, 40, 180)),
        ("pink", (245, 105, 185)),
    ]
)
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
BACKGROUND: tuple[int, int, int] = (232, 232, 232)  # light grey; not one of the object colours

SIZES: tuple[str, ...] = ("small", "large")

# The 3x3 grid in row-major order, and the phrase each position takes in a caption.
POSITIONS: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)  # fmt: skip
POSITION_PHRASES: dict[str, str] = {
    "top left": "at the top left",
    "top": "at the top",
    "top right": "at the top right",
    "left": "on the left",
    "center": "in the center",
    "right": "on the right",
    "bottom left": "at the bottom left",
    "bottom": "at the bottom",
    "bottom right": "at the bottom right",
}

_SHAPE_INDEX = {s: i for i, s in enumerate(SHAPES)}
_COLOUR_INDEX = {c: i for i, c in enumerate(COLOUR_NAMES)}
NUM_CLASSES: int = len(SHAPES) * len(COLOURS)  # class-conditional LDM (Sec. 4.3.1): one class per (shape, colour)


def class_name(class_id: int) -> str:
    """0 -> "red circle": the (colour, shape) pair behind a single-object sample's class id."""
    if not 0 <= int(class_id) < NUM_CLASSES:
        raise ValueError(
            f"class_id must be in [0, {NUM_CLASSES - 1}] (shape x colour), got {class_id}. "
            "Multi-object samples have class_id -1 and no class name; filter them out or use the caption."
        )
    s, c = divmod(int(class_id), len(COLOURS))
    return f"{COLOUR_NAMES[c]} {SHAPES[s]}"


def class_id_for(shape: str, colour: str) -> int:
    """The inverse of class_name: SHAPES.index(shape) * len(COLOURS) + colour index."""
    if shape not in SHAPES:
        raise unknown_name_error("shape", shape, SHAPES)
    if colour not in COLOURS:
        raise unknown_name_error("colour", colour, COLOUR_NAMES)
    return SHAPES.index(shape) * len(COLOURS) + COLOUR_NAMES.index(colour)


# ----------------------------------------------------------------------------------------------------------------
# Configuration


@dataclass
class ShapesConfig:
    """How the shapes world is drawn. The defaults are the course's main world (32x32, 1 to 3 objects)."""

    resolution: int = 32  # H = W of the output image
    min_objects: int = 1
    max_objects: int = 3  # at most 9 (one object per grid cell)
    seed: int = 0  # sample i of seed s is drawn from default_rng([s, i]) only
    supersample: int = 4  # S: coverage is measured on an (S*H, S*W) grid, then averaged -> anti-aliasing
    # object side as a fraction of the grid cell (H / 3); drawn uniformly from each range
    small_range: tuple[float, float] = (0.54, 0.60)
    large_range: tuple[float, float] = (0.86, 0.92)
    jitter: float = 0.8  # fraction of the free space in the cell the object centre may move (0 = centred)
    background: tuple[int, int, int] = BACKGROUND
    # "colour shape" combinations that never appear (compositional generalisation, issue 5's text-encoder
    # experiment): an object drawn with such a combination takes the next colour (in COLOUR_NAMES order) that is
    # allowed for its shape. Held-out pictures of other worlds still contain them.
    held_out: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.held_out = tuple(self.held_out)
        for combo in self.held_out:
            colour, _, shape = str(combo).partition(" ")
            if colour not in _COLOUR_INDEX or shape not in _SHAPE_INDEX:
                raise ValueError(
                    f"held_out entry {combo!r} must be 'colour shape' with a colour in {COLOUR_NAMES} and a shape in "
                    f"{SHAPES}, e.g. 'green star'."
                )
        if any(all(f"{c} {s}" in self.held_out for c in COLOUR_NAMES) for s in SHAPES):
            raise ValueError("held_out removes every colour of some shape; keep at least one colour per shape.")
        if self.resolution < 12:
            raise ValueError(
                f"resolution={self.resolution} is too small for a legible 3x3 grid of shapes; use 32 or 64 "
                "(anything >= 12 works)."
            )
        if not 1 <= self.min_objects <= self.max_objects <= len(POSITIONS):
            raise ValueError(
                f"Need 1 <= min_objects <= max_objects <= 9 (one object per grid cell), got "
                f"min_objects={self.min_objects}, max_objects={self.max_objects}."
            )
        if not 1 <= self.supersample <= 16:
            raise ValueError(
                f"supersample must be in [1, 16] (4 is a good anti-aliasing factor), got {self.supersample}."
            )
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"jitter must be in [0, 1] (a fraction of the cell's free space), got {self.jitter}.")
        for name in ("small_range", "large_range"):
            lo, hi = getattr(self, name)
            if not 0.1 <= lo <= hi <= 1.0:
                raise ValueError(f"{name} must satisfy 0.1 <= lo <= hi <= 1 (fraction of a grid cell), got {(lo, hi)}.")
        if self.small_range[1] >= self.large_range[0]:
            raise ValueError(
                f"small_range {self.small_range} and large_range {self.large_range} overlap, so size would not be "
                "recoverable from the pixels; keep every small size below every large size."
            )


HELD_OUT_COMBOS: tuple[str, ...] = ("green star", "red heart", "blue triangle", "yellow square", "purple circle")

SHAPES_PRESETS: dict[str, ShapesConfig] = {
    "shapes32": ShapesConfig(resolution=32),
    "shapes64": ShapesConfig(resolution=64),
    "single32": ShapesConfig(resolution=32, min_objects=1, max_objects=1),  # class-conditional experiments
    "single64": ShapesConfig(resolution=64, min_objects=1, max_objects=1),
    # single32 without five colour-shape pairs (one per shape and colour): does a text encoder compose "green" and
    # "star" into a green star it never saw? (issue 5, experiment 8)
    "single32-heldout": ShapesConfig(resolution=32, min_objects=1, max_objects=1, held_out=HELD_OUT_COMBOS),
}


def shapes_preset(name: str, **overrides) -> ShapesConfig:
    """A named ShapesConfig preset, optionally with some fields replaced (e.g. seed=1)."""
    if name not in SHAPES_PRESETS:
        raise unknown_name_error("shapes preset", name, SHAPES_PRESETS)
    return replace(SHAPES_PRESETS[name], **overrides)


# ----------------------------------------------------------------------------------------------------------------
# Samples


@dataclass
class ShapeObject:
    shape: str
    colour: str
    size: str
    position: str
    bbox: tuple[int, int, int, int] = (0, 0, 0, 0)  # (x0, y0, x1, y1) output pixels, x1/y1 exclusive

    @property
    def class_id(self) -> int:
        """SHAPES.index(shape) * len(COLOURS) + colour index (the class of a single-object sample)."""
        return _SHAPE_INDEX[self.shape] * len(COLOURS) + _COLOUR_INDEX[self.colour]

    def as_dict(self) -> dict:
        return {
            "shape": self.shape,
            "colour": self.colour,
            "size": self.size,
            "position": self.position,
            "bbox": list(self.bbox),
        }


@dataclass
class ShapesSample:
    image: np.ndarray  # (H, W, 3) uint8
    caption: str
    class_id: int  # shape x colour for single-object samples, -1 otherwise
    objects: list[ShapeObject] = field(default_factory=list)  # in reading order of their grid cells
    semantic: np.ndarray | None = None  # (H, W) uint8, 0 = background, 1 + SHAPES index


# ----------------------------------------------------------------------------------------------------------------
# Captions


def caption_for(objects: list[ShapeObject] | list[dict]) -> str:
    """Plain English: "a large red circle at the top left and a small blue star in the center"."""
    parts = []
    for o in objects:
        if isinstance(o, ShapeObject):
            parts.append(f"a {o.size} {o.colour} {o.shape} {POSITION_PHRASES[o.position]}")
        else:
            parts.append(f"a {o['size']} {o['colour']} {o['shape']} {POSITION_PHRASES[o['position']]}")
    if not parts:
        return "an empty picture"
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


_PHRASE_TO_POSITION = {v: k for k, v in POSITION_PHRASES.items()}
_OBJECT_RE = re.compile(
    r"an? (?P<size>{})\s+(?P<colour>{})\s+(?P<shape>{})\s+(?P<phrase>{})".format(
        "|".join(SIZES),
        "|".join(COLOUR_NAMES),
        "|".join(SHAPES),
        # longest phrases first so "at the top left" wins over "at the top"
        "|".join(sorted((re.escape(p) for p in POSITION_PHRASES.values()), key=len, reverse=True)),
    )
)
_SEPARATOR_RE = re.compile(r"\s*(,\s*and|,|and)\s*")


def parse_caption(caption: str) -> list[dict]:
    """The inverse of caption_for: [{"shape", "colour", "size", "position"}, ...] in caption order.

    Case and surrounding spaces are ignored. Anything that is not a list of "a <size> <colour> <shape> <position>"
    phrases raises a ValueError, so that a prompt the shapes world cannot express is never silently scored.
    """
    text = " ".join(caption.strip().lower().rstrip(".").split())
    out: list[dict] = []
    pos = 0
    while pos < len(text):
        if out:
            sep = _SEPARATOR_RE.match(text, pos)
            if sep is None or sep.end() == pos:
                break
            pos = sep.end()
        m = _OBJECT_RE.match(text, pos)
        if m is None:
            break
        out.append(
            {
                "shape": m["shape"],
                "colour": m["colour"],
                "size": m["size"],
                "position": _PHRASE_TO_POSITION[m["phrase"]],
            }
        )
        pos = m.end()
    if not out or pos != len(text):
        raise ValueError(
            f"Cannot parse shapes caption {caption!r} (stopped at character {pos}). Captions look like "
            "'a large red circle at the top left and a small blue star in the center': sizes "
            f"{SIZES}, colours {COLOUR_NAMES}, shapes {SHAPES}, positions {tuple(POSITION_PHRASES.values())}."
        )
    return out


# ----------------------------------------------------------------------------------------------------------------
# Rasterisation

_UNIT = 512  # resolution of the unit bitmaps that every object samples from


def _fit_to_unit_square(inside, lo: float, hi: float, n: int = _UNIT) -> np.ndarray:
    """Rasterise an implicit shape inside(x, y_up) -> bool so that its tight box fills an n x n bitmap.

    Row 0 is the top of the picture. Returns a bool array padded with a 1-pixel False border: (n + 2, n + 2).
    """
    # find the tight extent of the shape on a coarse-but-fine-enough grid
    g = np.linspace(lo, hi, 1024)
    xx, yy = np.meshgrid(g, g[::-1])
    m = inside(xx, yy)
    cols, rows = np.flatnonzero(m.any(0)), np.flatnonzero(m.any(1))
    x0, x1 = g[cols[0]], g[cols[-1]]
    y_top, y_bot = g[::-1][rows[0]], g[::-1][rows[-1]]
    # pixel-centre samples of the tight box
    u = (np.arange(n) + 0.5) / n
    xx, yy = np.meshgrid(x0 + u * (x1 - x0), y_top - u * (y_top - y_bot))
    return np.pad(inside(xx, yy), 1)


def _polygon_inside(vertices: np.ndarray):
    """Even-odd point-in-polygon test, vectorised over the points."""

    def inside(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        res = np.zeros(x.shape, dtype=bool)
        vx, vy = vertices[:, 0], vertices[:, 1]
        for i in range(len(vertices)):
            xa, ya, xb, yb = vx[i - 1], vy[i - 1], vx[i], vy[i]
            crosses = (ya > y) != (yb > y)
            with np.errstate(divide="ignore", invalid="ignore"):
                x_at = xa + (y - ya) * (xb - xa) / (yb - ya)
            res ^= crosses & (x < x_at)
        return res

    return inside


def _heart_inside(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    # the classic implicit heart (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0, with plain products (no libm pow) so that
    # every platform rasterises exactly the same bitmap
    t = x * x + y * y - 1.0
    return t * t * t - x * x * (y * y * y) <= 0.0


@lru_cache(maxsize=None)
def unit_masks() -> tuple[np.ndarray, ...]:
    """One (_UNIT + 2, _UNIT + 2) bool bitmap per entry of SHAPES; each shape touches all four sides of its box."""
    a = np.pi / 2 + np.arange(10) * np.pi / 5  # star: 5 outer points (radius 1), 5 inner points (radius 0.5)
    r = np.where(np.arange(10) % 2 == 0, 1.0, 0.5)
    star = np.stack([r * np.cos(a), r * np.sin(a)], axis=1)
    triangle = np.array([[0.0, 1.0], [-1.0, -1.0], [1.0, -1.0]])  # apex up, base = height
    makers = {
        "circle": lambda x, y: x * x + y * y <= 1.0,
        "square": lambda x, y: (np.abs(x) <= 1.0) & (np.abs(y) <= 1.0),
        "triangle": _polygon_inside(triangle),
        "star": _polygon_inside(star),
        # the classic implicit heart (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0
        "heart": _heart_inside,
    }
    masks = []
    for name in SHAPES:
        m = _fit_to_unit_square(makers[name], -1.5, 1.5)
        m.setflags(write=False)
        masks.append(m)
    return tuple(masks)


def _draw_object(
    canvas: np.ndarray,
    semantic: np.ndarray,
    shape_idx: int,
    colour: np.ndarray,
    cx: float,
    cy: float,
    side: float,
    ss: int,
) -> tuple[int, int, int, int]:
    """Alpha-blend one object into canvas (H, W, 3) float32 and label semantic (H, W); returns its pixel bbox."""
    h, w = semantic.shape
    x0f, y0f = cx - side / 2, cy - side / 2
    px0, py0 = max(int(np.floor(x0f)), 0), max(int(np.floor(y0f)), 0)
    px1, py1 = min(int(np.ceil(x0f + side)), w), min(int(np.ceil(y0f + side)), h)
    bh, bw = py1 - py0, px1 - px0
    # supersample centres of the box's pixels, in unit-bitmap coordinates (-1 and _UNIT land on the False border)
    scale = _UNIT / side
    ix = np.floor(((np.arange(px0 * ss, px1 * ss) + 0.5) / ss - x0f) * scale).astype(np.intp)  # (bw * S,)
    iy = np.floor(((np.arange(py0 * ss, py1 * ss) + 0.5) / ss - y0f) * scale).astype(np.intp)  # (bh * S,)
    ix = np.minimum(np.maximum(ix, -1), _UNIT) + 1
    iy = np.minimum(np.maximum(iy, -1), _UNIT) + 1
    hit = unit_masks()[shape_idx].take(iy, axis=0).take(ix, axis=1)  # (bh * S, bw * S) bool: inside the shape?
    # coverage of each output pixel = fraction of its S x S supersamples inside the shape (anti-aliasing)
    count = hit.reshape(bh, ss, bw * ss).sum(axis=1, dtype=np.uint16).reshape(bh, bw, ss).sum(axis=2, dtype=np.uint16)
    cover = count.astype(np.float32) * (1.0 / (ss * ss))  # (bh, bw) in [0, 1]
    region = canvas[py0:py1, px0:px1]
    region += cover[:, :, None] * (colour - region)  # over-compositing an opaque colour
    # the semantic map is what a pixel mostly shows
    semantic[py0:py1, px0:px1][2 * count >= ss * ss] = shape_idx + 1
    return px0, py0, px1, py1


_COLOUR_TABLE = np.array(list(COLOURS.values()), dtype=np.float32)  # (len(COLOURS), 3)
_DRAWS_PER_SAMPLE = 1 + len(POSITIONS) + 6 * len(POSITIONS)  # fixed, so every sample uses one RNG call


def render_sample(index: int, cfg: ShapesConfig | None = None) -> ShapesSample:
    """Draw sample ``index`` of the world ``cfg`` (a pure function of (cfg.seed, index) and cfg)."""
    cfg = cfg or ShapesConfig()
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}; samples are numbered 0, 1, 2, ...")
    # one call for all random numbers: [count | 9 cell keys | per object: shape, colour, size, side, dx, dy]
    r = np.random.default_rng([cfg.seed, index]).random(_DRAWS_PER_SAMPLE)
    n = cfg.min_objects + int(r[0] * (cfg.max_objects - cfg.min_objects + 1))
    cells = np.sort(np.argsort(r[1:10], kind="stable")[:n])  # n distinct cells, in reading order
    u = r[10 : 10 + 6 * n].reshape(n, 6).tolist()

    res, ss = cfg.resolution, cfg.supersample
    cell = res / 3.0
    canvas = np.empty((res, res, 3), dtype=np.float32)
    canvas[:] = cfg.background
    semantic = np.zeros((res, res), dtype=np.uint8)
    objects: list[ShapeObject] = []
    for j in range(n):
        row, col = divmod(int(cells[j]), 3)
        shape_id = int(u[j][0] * len(SHAPES))
        colour_id = int(u[j][1] * len(COLOURS))
        while cfg.held_out and f"{COLOUR_NAMES[colour_id]} {SHAPES[shape_id]}" in cfg.held_out:
            colour_id = (colour_id + 1) % len(COLOURS)  # the next allowed colour (one exists: checked in the config)
        size_id = int(u[j][2] * len(SIZES))
        lo, hi = cfg.large_range if size_id else cfg.small_range
        side = (lo + (hi - lo) * u[j][3]) * cell
        free = (cell - side) * cfg.jitter  # the centre may move by +-free/2 and the object stays in its cell
        cx = (col + 0.5) * cell + (u[j][4] - 0.5) * free
        cy = (row + 0.5) * cell + (u[j][5] - 0.5) * free
        bbox = _draw_object(canvas, semantic, shape_id, _COLOUR_TABLE[colour_id], cx, cy, side, ss)
        objects.append(ShapeObject(SHAPES[shape_id], COLOUR_NAMES[colour_id], SIZES[size_id], POSITIONS[cells[j]], bbox))
    image = (canvas + 0.5).astype(np.uint8)  # values are in [0, 255]; +0.5 then truncation rounds
    class_id = objects[0].class_id if n == 1 else -1
    return ShapesSample(image=image, caption=caption_for(objects), class_id=class_id, objects=objects, semantic=semantic)


def render_batch(indices, cfg: ShapesConfig | None = None) -> tuple[np.ndarray, list[ShapesSample]]:
    """Render several samples; returns images stacked as (B, H, W, 3) uint8 and the samples themselves."""
    samples = [render_sample(int(i), cfg) for i in indices]
    return np.stack([s.image for s in samples]), samples


def objects_json(objects: list[ShapeObject]) -> str:
    """The objects as a JSON string (how datasets and torch batches carry them): a list of ShapeObject dicts."""
    return json.dumps([o.as_dict() for o in objects], separators=(",", ":"))


def objects_from_json(text: str) -> list[ShapeObject]:
    """Inverse of objects_json."""
    return [ShapeObject(**{**d, "bbox": tuple(d["bbox"])}) for d in json.loads(text)]
