"""Synthetic shapes for the demo model, and a scorer that reads them back.

The drawer makes the training data of the tiny demo model (SPEC §10): one filled (or, for the
style LoRA, outlined) circle, square or triangle in one of six colours on a black, white or gray
background, with a caption such as "a red circle" or "a red circle on a black background".

The scorer measures what a generated image shows, using only numpy and Pillow, so the runtime
tests (which have no torch) can check the model: the foreground colour name, the background name,
how much of the shape's bounding box is filled (filled shapes ~0.5-1.0, outlines much less) and
whether the shape tapers like a triangle (drawn apex up).
"""

from __future__ import annotations

import colorsys
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64

#: Hue centre (degrees) of each colour name, ~60 degrees apart.
COLOR_HUES: dict[str, float] = {
    "red": 0.0,
    "yellow": 60.0,
    "green": 120.0,
    "cyan": 180.0,
    "blue": 240.0,
    "purple": 290.0,
}
COLORS: tuple[str, ...] = tuple(COLOR_HUES)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
#: Grey level range of each background name.
BACKGROUND_LEVELS: dict[str, tuple[int, int]] = {
    "black": (0, 24),
    "gray": (112, 144),
    "white": (232, 255),
}
BACKGROUNDS: tuple[str, ...] = tuple(BACKGROUND_LEVELS)
#: Every word a caption can contain; the demo tokenizer makes each one a single token.
CAPTION_WORDS: tuple[str, ...] = ("a", "on", "background", *COLORS, *SHAPES, *BACKGROUNDS)

_SUPERSAMPLE = 4


@dataclass(frozen=True)
class ShapeSpec:
    """What one synthetic image shows."""

    shape: str
    color: str
    background: str
    outline: bool = False


def caption(spec: ShapeSpec, with_background: bool) -> str:
    """The caption the demo model is trained on for `spec`."""
    text = f"a {spec.color} {spec.shape}"
    return f"{text} on a {spec.background} background" if with_background else text


def _rgb(hue_deg: float, saturation: float, value: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb((hue_deg % 360.0) / 360.0, saturation, value)
    return round(r * 255), round(g * 255), round(b * 255)


def draw(spec: ShapeSpec, rng: random.Random, size: int = IMAGE_SIZE) -> Image.Image:
    """Draws `spec` at a random size (35-70 % of the image), position and slight colour jitter.

    The same `rng` state always gives the same image.
    """
    lo, hi = BACKGROUND_LEVELS[spec.background]
    level = rng.randint(lo, hi)
    fg = _rgb(
        COLOR_HUES[spec.color] + rng.uniform(-8.0, 8.0), rng.uniform(0.8, 1.0), rng.uniform(0.85, 1.0)
    )
    s = size * _SUPERSAMPLE
    extent = rng.uniform(0.35, 0.70) * s
    x0 = rng.uniform(0.0, s - extent)
    y0 = rng.uniform(0.0, s - extent)
    box = (x0, y0, x0 + extent, y0 + extent)
    img = Image.new("RGB", (s, s), (level, level, level))
    pen = ImageDraw.Draw(img)
    width = max(1, round(rng.uniform(0.09, 0.13) * extent)) if spec.outline else 0
    fill = None if spec.outline else fg
    outline = fg if spec.outline else None
    if spec.shape == "circle":
        pen.ellipse(box, fill=fill, outline=outline, width=width)
    elif spec.shape == "square":
        pen.rectangle(box, fill=fill, outline=outline, width=width)
    elif spec.shape == "triangle":
        apex = (x0 + extent / 2, y0)
        points = [apex, (x0 + extent, y0 + extent), (x0, y0 + extent)]
        if spec.outline:
            pen.line([*points, apex, points[1]], fill=fg, width=width, joint="curve")
        else:
            pen.polygon(points, fill=fg)
    else:
        raise ValueError(f"unknown shape {spec.shape!r}; expected one of {SHAPES}")
    return img.resize((size, size), Image.Resampling.LANCZOS)


#: The 12 prompts the demo model is measured on (tests/demo, docs/demo-model.md): every colour on two
#: backgrounds and as two shapes; every shape and every background four times.
def _eval_specs() -> list[ShapeSpec]:
    specs = []
    for i, color in enumerate(COLORS * 2):
        shape = SHAPES[(i + i // 6) % 3]
        background = BACKGROUNDS[(i + 2 * (i // 6)) % 3]
        specs.append(ShapeSpec(shape, color, background))
    return specs


EVAL_SPECS: tuple[ShapeSpec, ...] = tuple(_eval_specs())
EVAL_PROMPTS: tuple[str, ...] = tuple(caption(spec, with_background=True) for spec in EVAL_SPECS)
EVAL_SEEDS: tuple[int, ...] = (11, 22, 33, 44)


def random_spec(rng: random.Random, outline: bool = False) -> ShapeSpec:
    """A uniformly random shape, colour and background."""
    return ShapeSpec(rng.choice(SHAPES), rng.choice(COLORS), rng.choice(BACKGROUNDS), outline)


def random_sample(
    rng: random.Random, outline: bool = False, blank_rate: float = 0.1, size: int = IMAGE_SIZE
) -> tuple[Image.Image, str]:
    """One training pair; about `blank_rate` of captions are empty (for classifier-free guidance).

    Half of the non-blank captions name the background.
    """
    spec = random_spec(rng, outline)
    image = draw(spec, rng, size)
    text = "" if rng.random() < blank_rate else caption(spec, with_background=rng.random() < 0.5)
    return image, text


# --------------------------------------------------------------------------------------------------
# Scorer


@dataclass(frozen=True)
class ShapeScore:
    """What the scorer read from an image.

    color: nearest colour name by hue of the saturated foreground, None when nothing saturated.
    background: black / gray / white from the median of the image border.
    fill_ratio: foreground pixels over the foreground's bounding-box area.
    taper: mean width of the top third of the foreground over the bottom third (triangle ~0.3).
    foreground_fraction: share of the image that is foreground.
    """

    color: str | None
    background: str
    fill_ratio: float
    taper: float
    foreground_fraction: float

    @property
    def is_triangle(self) -> bool:
        return self.taper < TRIANGLE_TAPER_THRESHOLD


#: A filled or outlined apex-up triangle has top/bottom width ratio ~0.3 (measured 0.2-0.45 on drawn
#: images); circles ~0.9-1.0 and squares ~1.0. 0.6 sits between the two groups.
TRIANGLE_TAPER_THRESHOLD = 0.6


def _as_rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32)
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim == 4:
        arr = arr[0]
    if arr.shape[-1] != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {arr.shape}")
    return arr


def _hsv(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue in degrees, saturation and value (0..1) of an HxWx3 0..255 array."""
    rgb = arr / 255.0
    mx = rgb.max(axis=-1)
    mn = rgb.min(axis=-1)
    delta = mx - mn
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    safe = np.where(delta > 1e-6, delta, 1.0)
    hue = np.where(
        mx == r, ((g - b) / safe) % 6.0, np.where(mx == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0)
    )
    hue = np.where(delta > 1e-6, hue * 60.0, 0.0)
    sat = np.where(mx > 1e-6, delta / np.where(mx > 1e-6, mx, 1.0), 0.0)
    return hue, sat, mx


def background_name(level: float) -> str:
    """black / gray / white for a grey level 0..255 (boundaries halfway between the trained ranges)."""
    if level < 68:
        return "black"
    if level > 188:
        return "white"
    return "gray"


def hue_name(hue_deg: float) -> str:
    """The colour name whose hue centre is nearest (on the circle) to `hue_deg`."""

    def dist(name: str) -> float:
        d = abs(hue_deg - COLOR_HUES[name]) % 360.0
        return min(d, 360.0 - d)

    return min(COLORS, key=dist)


def score(image: Image.Image | np.ndarray) -> ShapeScore:
    """Reads colour, background, fill ratio and taper from a generated (or drawn) image."""
    arr = _as_rgb_array(image)
    h, w, _ = arr.shape
    border = np.concatenate([arr[:2].reshape(-1, 3), arr[-2:].reshape(-1, 3),
                             arr[:, :2].reshape(-1, 3), arr[:, -2:].reshape(-1, 3)])
    bg_rgb = np.median(border, axis=0)
    background = background_name(float(bg_rgb.mean()))

    hue, sat, val = _hsv(arr)
    distance = np.abs(arr - bg_rgb).max(axis=-1)
    # Foreground: clearly away from the background colour and clearly coloured; the colours are
    # saturated and the backgrounds neutral, so saturation separates them even for yellow on white.
    mask = (distance > 60.0) & (sat > 0.35) & (val > 0.25)
    count = int(mask.sum())
    if count < 4:
        return ShapeScore(None, background, 0.0, 1.0, count / (h * w))

    weights = sat[mask] * val[mask]
    angles = np.deg2rad(hue[mask])
    mean_hue = np.rad2deg(np.arctan2((weights * np.sin(angles)).sum(), (weights * np.cos(angles)).sum()))
    color = hue_name(float(mean_hue % 360.0))

    # Rows/columns with only a stray pixel or two do not belong to the shape's box.
    rows = np.flatnonzero(mask.sum(axis=1) >= 2)
    cols = np.flatnonzero(mask.sum(axis=0) >= 2)
    if rows.size == 0 or cols.size == 0:
        return ShapeScore(color, background, 0.0, 1.0, count / (h * w))
    top, bottom, left, right = rows[0], rows[-1], cols[0], cols[-1]
    box = mask[top : bottom + 1, left : right + 1]
    fill_ratio = float(box.sum()) / float(box.size)

    # Width of each row = span between its outermost foreground pixels (works for outlines too).
    widths = []
    for row in box:
        xs = np.flatnonzero(row)
        widths.append(float(xs[-1] - xs[0] + 1) if xs.size else 0.0)
    span = np.asarray(widths)
    third = max(1, len(span) // 3)
    top_w = float(span[:third].mean())
    bottom_w = float(span[-third:].mean())
    taper = top_w / bottom_w if bottom_w > 0 else 1.0
    return ShapeScore(color, background, fill_ratio, taper, count / (h * w))
