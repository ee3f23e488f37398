"""Pictures of two coloured shapes whose captions a program can check exactly.

Introduced in chapter 7, section "Pictures with known captions". Each picture is a white
``(3, S, S)`` square holding two shapes (circle, square, triangle, cross) in two different colours;
one is clearly left of, right of, above or below the other. Its caption comes from a tiny grammar::

    a <colour> <shape> <left of | right of | above | below> a <colour> <shape>

so "a red circle left of a blue square" is either right or wrong, slot by slot, with no human
judge. The idea of checkable synthetic scenes comes from ShapeWorld (Kuhnle & Copestake 2017,
arXiv:1704.04517) and CLEVR (Johnson et al. 2017, arXiv:1612.06890); here it is cut down to what a
CPU trains on in seconds.

* **Which shape is first.** A scene stores its objects in order; its caption names ``first``, then
  the relation, then ``second``. The order is random, so all four relations occur. "A left of B"
  and "B right of A" describe the same scene: :func:`check_caption` accepts both.
* **Unambiguous relations.** Along the main axis the two bounding boxes are at least
  ``shape_size + 2`` pixels apart (corner to corner), so they never touch; across it the offset is
  at most half the main one, so "left of" never looks like "above".
* **Scores.** :func:`caption_scores` gives the checker's exact-match rate, per-slot accuracies
  (colour, shape, relation words against the scene) and corpus BLEU (Papineni et al. 2002) through
  :func:`aigc_book.tasks.metrics.bleu` (``sacrebleu``).
* **Figures.** :func:`show_images` draws pictures with their captions; :func:`overlay_attention`
  lays a patch-level attention map over a picture, upsampled by nearest neighbour, as "Show, Attend
  and Tell" (Xu et al. 2015, arXiv:1502.03044) drew where its decoder looked.
"""

from __future__ import annotations

import itertools
import operator
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from aigc_book.checks import is_int
from aigc_book.tasks.metrics import bleu
from aigc_book.text.char_tokenizer import token_ids

__all__ = [
    "SHAPES",
    "COLOURS",
    "RELATIONS",
    "INVERSE_RELATION",
    "MIN_GAP",
    "SceneObject",
    "Scene",
    "Caption",
    "default_shape_size",
    "make_dataset",
    "render_scenes",
    "relation_of",
    "all_captions",
    "parse_caption",
    "check_caption",
    "caption_scores",
    "CaptionTokenizer",
    "upsample_attention",
    "show_images",
    "overlay_attention",
]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
# Far apart in RGB (every pair differs by >= 0.5 in some channel) and from the white background.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.10, 0.10),
    "green": (0.10, 0.65, 0.15),
    "blue": (0.10, 0.25, 0.90),
    "yellow": (0.95, 0.80, 0.05),
    "purple": (0.55, 0.10, 0.70),
}
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
INVERSE_RELATION: dict[str, str] = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
MIN_GAP = 2  # pixels between the two bounding boxes along the main axis
_MIN_SHAPE_SIZE = 5  # below this a triangle and a cross are a few pixels each and no longer tell apart
_CHUNK = 2048  # pictures rendered at once: bounds the (chunk, 2, 4, S, S) mask tensor


# ---------------------------------------------------------------------------------------------
# Scenes and captions
# ---------------------------------------------------------------------------------------------


class Caption(NamedTuple):
    """The five slots of a caption: ``a <colour1> <shape1> <relation> a <colour2> <shape2>``."""

    colour1: str
    shape1: str
    relation: str
    colour2: str
    shape2: str

    def text(self) -> str:
        return f"a {self.colour1} {self.shape1} {self.relation} a {self.colour2} {self.shape2}"

    def reversed(self) -> Caption:
        """The same scene described from the other object: 'A left of B' -> 'B right of A'."""
        return Caption(self.colour2, self.shape2, INVERSE_RELATION[self.relation], self.colour1, self.shape1)


@dataclass(frozen=True)
class SceneObject:
    """One shape: its colour and kind, and its bounding box (top-left corner ``x``, ``y`` in pixels,
    ``x`` to the right and ``y`` down, side ``size``)."""

    colour: str
    shape: str
    x: int
    y: int
    size: int

    @property
    def centre(self) -> tuple[float, float]:
        """``(x, y)`` of the bounding box's centre, in pixels."""
        return self.x + self.size / 2, self.y + self.size / 2

    @property
    def centre_pixel(self) -> tuple[int, int]:
        """``(row, column)`` of a pixel inside the shape whatever its kind (the box's middle)."""
        return self.y + self.size // 2, self.x + self.size // 2


@dataclass(frozen=True)
class Scene:
    """Two objects and how the first stands to the second ("first <relation> second")."""

    first: SceneObject
    second: SceneObject
    relation: str
    image_size: int

    def __post_init__(self) -> None:
        if self.relation not in RELATIONS:
            raise ValueError(f"relation must be one of {RELATIONS}, got {self.relation!r}")
        for obj in (self.first, self.second):
            if obj.colour not in COLOURS or obj.shape not in SHAPES:
                raise ValueError(f"unknown colour or shape in {obj}: colours {tuple(COLOURS)}, shapes {SHAPES}")
        if self.first.colour == self.second.colour:
            raise ValueError(f"the two objects need different colours, both are {self.first.colour!r}")

    def parts(self) -> Caption:
        return Caption(self.first.colour, self.first.shape, self.relation, self.second.colour, self.second.shape)

    def caption(self) -> str:
        """The caption naming ``first`` first, e.g. 'a red circle left of a blue square'."""
        return self.parts().text()

    def reversed_caption(self) -> str:
        """The equivalent caption naming ``second`` first, e.g. 'a blue square right of a red circle'."""
        return self.parts().reversed().text()


def relation_of(first: SceneObject, second: SceneObject) -> str | None:
    """The relation of ``first`` to ``second`` read off their positions, or None where it is unclear.

    Clear means: along one axis the centres are at least ``size + MIN_GAP`` apart and at least twice
    as far as along the other axis. The pictures of :func:`make_dataset` always satisfy this.
    """
    (x1, y1), (x2, y2) = first.centre, second.centre
    dx, dy = x2 - x1, y2 - y1  # from first to second; y grows downwards
    apart = max(first.size, second.size) + MIN_GAP
    if abs(dx) >= apart and abs(dx) >= 2 * abs(dy):
        return "left of" if dx > 0 else "right of"
    if abs(dy) >= apart and abs(dy) >= 2 * abs(dx):
        return "above" if dy > 0 else "below"
    return None


def all_captions() -> list[str]:
    """Every caption the grammar makes: colours differ, shapes may repeat (5*4 * 4*4 * 4 = 1280)."""
    out = []
    for (c1, c2), s1, rel, s2 in itertools.product(itertools.permutations(COLOURS, 2), SHAPES, RELATIONS, SHAPES):
        out.append(Caption(c1, s1, rel, c2, s2).text())
    return out


def parse_caption(text: str) -> Caption | None:
    """The five slots of a caption, or None if ``text`` does not follow the grammar.

    Case and runs of whitespace are ignored; anything else (a missing article, an unknown word, a
    trailing full stop) makes the caption unparseable.
    """
    if not isinstance(text, str):
        raise TypeError(f"a caption must be a str, got {type(text).__name__}")
    words = text.lower().split()
    if len(words) not in (7, 8) or words[0] != "a" or words[-3] != "a":
        return None
    c1, s1, relation, c2, s2 = words[1], words[2], " ".join(words[3:-3]), words[-2], words[-1]
    if c1 not in COLOURS or c2 not in COLOURS or s1 not in SHAPES or s2 not in SHAPES or relation not in RELATIONS:
        return None
    return Caption(c1, s1, relation, c2, s2)


def check_caption(text: str, scene: Scene) -> bool:
    """True if ``text`` describes ``scene`` exactly, in either order ('A left of B' or 'B right of A')."""
    parsed = parse_caption(text)
    return parsed is not None and parsed in (scene.parts(), scene.parts().reversed())


# ---------------------------------------------------------------------------------------------
# Sampling and drawing the pictures
# ---------------------------------------------------------------------------------------------


def default_shape_size(image_size: int) -> int:
    """A third of the picture: 10 pixels in a 32-pixel picture."""
    return image_size // 3


def _check_sizes(n: int, image_size: int, shape_size: int) -> None:
    for name, value in (("n", n), ("image_size", image_size), ("shape_size", shape_size)):
        if not is_int(value):
            raise TypeError(f"{name} must be an int, got {value!r}")
    if n < 1:
        raise ValueError(f"n must be >= 1 picture, got {n}")
    if shape_size < _MIN_SHAPE_SIZE:
        raise ValueError(f"shape_size must be >= {_MIN_SHAPE_SIZE} pixels for the shapes to tell apart, got "
                         f"{shape_size} (image_size {image_size}); use image_size >= {3 * _MIN_SHAPE_SIZE}")
    if image_size < 2 * shape_size + MIN_GAP:
        raise ValueError(f"image_size {image_size} is too small for two shapes of {shape_size} pixels "
                         f"{MIN_GAP} apart: it must be >= {2 * shape_size + MIN_GAP}")


def _randint(low: torch.Tensor, high: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One uniform integer in ``[low, high]`` (inclusive, elementwise) per element."""
    u = torch.rand(low.shape, generator=generator, dtype=torch.float64)
    return low + torch.minimum((u * (high - low + 1)).floor().long(), high - low)


class _Layout(NamedTuple):
    shape: torch.Tensor  # (n, 2) indices into SHAPES
    colour: torch.Tensor  # (n, 2) indices into COLOURS, the two different
    x: torch.Tensor  # (n, 2) top-left corners
    y: torch.Tensor  # (n, 2)
    relation: torch.Tensor  # (n,) indices into RELATIONS


def _sample_layout(n: int, image_size: int, size: int, generator: torch.Generator) -> _Layout:
    """Colours, shapes and positions for n pictures, with the relation chosen first and the
    positions built to satisfy it (no rejection loop, all four relations equally likely)."""
    zeros, zeros2 = torch.zeros(n, dtype=torch.long), torch.zeros(n, 2, dtype=torch.long)
    k = len(COLOURS)
    relation = _randint(zeros, zeros + len(RELATIONS) - 1, generator)
    shape = _randint(zeros2, zeros2 + len(SHAPES) - 1, generator)  # (n, 2)
    c1 = _randint(zeros, zeros + k - 1, generator)
    c2 = (c1 + _randint(zeros + 1, zeros + k - 1, generator)) % k  # uniform over the other colours
    room = image_size - size  # the largest corner coordinate
    d = _randint(zeros + size + MIN_GAP, zeros + room, generator)  # corner distance along the main axis
    e = _randint(-(d // 2), d // 2, generator)  # offset across it, at most half of d
    low = _randint(zeros, room - d, generator)  # main-axis corner of the lower object; the other is at low + d
    cross = _randint(e.clamp(max=0).neg(), room - e.clamp(min=0), generator)  # keeps cross and cross + e inside
    first_low = (relation == 0) | (relation == 2)  # "left of" / "above": the first object has the smaller coordinate
    main1, main2 = torch.where(first_low, low, low + d), torch.where(first_low, low + d, low)
    horizontal = relation < 2
    x = torch.stack([torch.where(horizontal, main1, cross), torch.where(horizontal, main2, cross + e)], dim=1)
    y = torch.stack([torch.where(horizontal, cross, main1), torch.where(horizontal, cross + e, main2)], dim=1)
    return _Layout(shape, torch.stack([c1, c2], dim=1), x, y, relation)


def _masks(shape: torch.Tensor, x: torch.Tensor, y: torch.Tensor, size: int, image_size: int) -> torch.Tensor:
    """(B, 2, S, S) boolean masks of each object, from coordinate grids (pixel centres at i + 0.5)."""
    grid = torch.arange(image_size, device=x.device, dtype=torch.float32) + 0.5
    u = (grid.view(1, 1, 1, -1) - x[..., None, None].float()) / size  # (B, 2, 1, S): 0..1 across the box
    v = (grid.view(1, 1, -1, 1) - y[..., None, None].float()) / size  # (B, 2, S, 1): 0..1 down the box
    inside = (u >= 0) & (u < 1) & (v >= 0) & (v < 1)  # (B, 2, S, S)
    circle = (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
    triangle = inside & ((u - 0.5).abs() <= v / 2)  # apex at the top middle, base along the bottom
    cross = inside & (((u - 0.5).abs() <= 1 / 6) | ((v - 0.5).abs() <= 1 / 6))  # arms a third of the side
    every = torch.stack([circle, inside, triangle, cross], dim=2)  # (B, 2, 4, S, S), in SHAPES order
    index = shape.to(x.device)[:, :, None, None, None].expand(-1, -1, 1, image_size, image_size)
    return every.gather(2, index).squeeze(2)  # (B, 2, S, S)


def _render(layout: _Layout, size: int, image_size: int, device, dtype: torch.dtype) -> torch.Tensor:
    palette = torch.tensor(list(COLOURS.values()), device=device, dtype=dtype)  # (K, 3)
    chunks = []
    for start in range(0, layout.shape.shape[0], _CHUNK):
        part = slice(start, start + _CHUNK)
        x, y = layout.x[part].to(device), layout.y[part].to(device)
        mask = _masks(layout.shape[part], x, y, size, image_size)  # (b, 2, S, S)
        colour = palette[layout.colour[part].to(device)]  # (b, 2, 3)
        image = torch.ones(x.shape[0], 3, image_size, image_size, device=device, dtype=dtype)
        for k in range(2):  # the shapes never overlap, so the drawing order does not matter
            image = torch.where(mask[:, k, None], colour[:, k, :, None, None], image)
        chunks.append(image)
    return torch.cat(chunks)


def _scenes(layout: _Layout, size: int, image_size: int) -> list[Scene]:
    names, relations = list(COLOURS), layout.relation.tolist()
    shape, colour, x, y = (t.tolist() for t in (layout.shape, layout.colour, layout.x, layout.y))
    return [
        Scene(*(SceneObject(names[colour[i][k]], SHAPES[shape[i][k]], x[i][k], y[i][k], size) for k in range(2)),
              relation=RELATIONS[relations[i]], image_size=image_size)
        for i in range(len(relations))
    ]


def make_dataset(n: int, image_size: int = 32, seed: int = 0, *, shape_size: int | None = None, noise: float = 0.0,
                 device="cpu", dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, list[str], list[Scene]]:
    """``n`` pictures ``(n, 3, S, S)`` in [0, 1], their captions and their scenes.

    The same ``seed`` gives the same pictures on every device: the layout and the noise are drawn on
    the CPU from a ``torch.Generator``, only the drawing runs on ``device``. ``noise`` > 0 adds
    Gaussian pixel noise of that standard deviation (then clips to [0, 1]).
    """
    size = default_shape_size(image_size) if shape_size is None else shape_size
    _check_sizes(n, image_size, size)
    if not 0.0 <= float(noise) <= 1.0:
        raise ValueError(f"noise is a pixel standard deviation in [0, 1], got {noise!r}")
    generator = torch.Generator().manual_seed(seed)
    layout = _sample_layout(n, image_size, size, generator)
    images = _render(layout, size, image_size, device, dtype)
    if noise > 0:
        jitter = torch.randn(images.shape, generator=generator, dtype=dtype) * noise
        images = (images + jitter.to(images.device)).clamp(0.0, 1.0)
    scenes = _scenes(layout, size, image_size)
    return images, [s.caption() for s in scenes], scenes


def render_scenes(scenes: Sequence[Scene], *, device="cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Draw given scenes (e.g. made by hand for a figure) as ``(len(scenes), 3, S, S)`` pictures.

    All scenes must share one picture size and one shape size, lie inside the picture, and have
    positions that show their relation clearly (:func:`relation_of`); positions are drawn as given.
    """
    if not scenes:
        raise ValueError("render_scenes needs at least one scene")
    image_size, size = scenes[0].image_size, scenes[0].first.size
    if any(s.image_size != image_size or {s.first.size, s.second.size} != {size} for s in scenes):
        raise ValueError("all scenes must share one image_size and one shape size")
    _check_sizes(len(scenes), image_size, size)
    for i, s in enumerate(scenes):
        if any(o.x < 0 or o.y < 0 or max(o.x, o.y) + size > image_size for o in (s.first, s.second)):
            raise ValueError(f"scenes[{i}]: an object lies partly outside the {image_size}-pixel picture")
        if relation_of(s.first, s.second) != s.relation:
            raise ValueError(f"scenes[{i}] says {s.relation!r} but its positions say "
                             f"{relation_of(s.first, s.second)!r} (see relation_of)")
    colour_index = {name: i for i, name in enumerate(COLOURS)}
    objs = [(s.first, s.second) for s in scenes]
    layout = _Layout(
        shape=torch.tensor([[SHAPES.index(o.shape) for o in pair] for pair in objs]),
        colour=torch.tensor([[colour_index[o.colour] for o in pair] for pair in objs]),
        x=torch.tensor([[o.x for o in pair] for pair in objs]),
        y=torch.tensor([[o.y for o in pair] for pair in objs]),
        relation=torch.tensor([RELATIONS.index(s.relation) for s in scenes]),
    )
    return _render(layout, size, image_size, device, dtype)


# ---------------------------------------------------------------------------------------------
# Scoring predicted captions
# ---------------------------------------------------------------------------------------------


def _slots_right(pred: Caption, truth: Caption) -> tuple[int, int, int]:
    """(colour words right out of 2, shape words right out of 2, relation right out of 1)."""
    return (int(pred.colour1 == truth.colour1) + int(pred.colour2 == truth.colour2),
            int(pred.shape1 == truth.shape1) + int(pred.shape2 == truth.shape2),
            int(pred.relation == truth.relation))


def caption_scores(predictions: Sequence[str], scenes: Sequence[Scene], references=None) -> dict[str, float]:
    """How good predicted captions are, against the scenes themselves and (for BLEU) reference text.

    Returns fractions in [0, 1] and BLEU in percent:

    * ``exact_match``: share of predictions :func:`check_caption` accepts (either order counts);
    * ``colour_accuracy``, ``shape_accuracy``: share of the 2 colour (shape) words per caption that
      are right; ``relation_accuracy``: share of relation words that are right. A prediction is
      compared with the scene read in the order (as given, or reversed with the inverse relation)
      that gets more of its 5 slots right, the given order on a tie; so "a blue square left of a
      red circle" for "a red circle left of a blue square" has its 4 object words right and its
      relation wrong. An unparseable prediction has every slot wrong;
    * ``parseable``: share of predictions that follow the grammar;
    * ``bleu``: corpus BLEU through ``sacrebleu``. ``references`` defaults to both captions of
      each scene (so the reversed form is not penalised); pass a list of strings to use one each.
    """
    if isinstance(predictions, str) or isinstance(scenes, Scene):
        raise TypeError("predictions and scenes must be lists (one caption and one scene per picture)")
    if len(predictions) != len(scenes) or not predictions:
        raise ValueError(f"need one prediction per scene and at least one, got {len(predictions)} predictions "
                         f"and {len(scenes)} scenes")
    exact = parseable = colours = shapes = relations = 0
    for text, scene in zip(predictions, scenes):
        parsed = parse_caption(text)
        if parsed is None:
            continue
        parseable += 1
        exact += int(check_caption(text, scene))
        given, other = _slots_right(parsed, scene.parts()), _slots_right(parsed, scene.parts().reversed())
        best = other if sum(other) > sum(given) else given
        colours, shapes, relations = colours + best[0], shapes + best[1], relations + best[2]
    if references is None:
        references = [[s.caption(), s.reversed_caption()] for s in scenes]
    n = len(predictions)
    return {
        "exact_match": exact / n,
        "colour_accuracy": colours / (2 * n),
        "shape_accuracy": shapes / (2 * n),
        "relation_accuracy": relations / n,
        "parseable": parseable / n,
        "bleu": bleu(list(predictions), references),
    }


# ---------------------------------------------------------------------------------------------
# A word-level tokenizer for the grammar
# ---------------------------------------------------------------------------------------------


class CaptionTokenizer:
    """Words of the caption grammar <-> ids, with ``<pad>`` = 0, ``<bos>`` = 1, ``<eos>`` = 2.

    The vocabulary is fixed by the grammar (15 words + 3 specials = 18), so no fitting is needed.
    A word outside it is an error, as in :class:`aigc_book.text.char_tokenizer.CharTokenizer`.

    >>> tok = CaptionTokenizer()
    >>> tok.decode(tok.encode("a red circle above a blue cross"))
    'a red circle above a blue cross'
    """

    SPECIALS = ("<pad>", "<bos>", "<eos>")

    def __init__(self, words: Sequence[str] | None = None) -> None:
        if words is None:
            words = sorted({w for rel in RELATIONS for w in rel.split()} | {"a"} | set(COLOURS) | set(SHAPES))
        words = list(words)
        if len(set(words)) != len(words) or any(not isinstance(w, str) or not w or w.split() != [w] for w in words):
            raise ValueError("words must be distinct, non-empty and without whitespace")
        if set(words) & set(self.SPECIALS):
            raise ValueError(f"words must not include the special tokens {self.SPECIALS}")
        self.itos: list[str] = [*self.SPECIALS, *words]
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.pad_id, self.bos_id, self.eos_id = 0, 1, 2

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, caption: str) -> list[int]:
        """The ids of the caption's words (lower-cased, split on whitespace), without ``<bos>``/``<eos>``."""
        if not isinstance(caption, str):
            raise TypeError(f"a caption must be a str, got {type(caption).__name__}")
        words = caption.lower().split()
        unknown = [w for w in words if w not in self.stoi or w in self.SPECIALS]
        if unknown:
            raise ValueError(f"word {unknown[0]!r} is not in the caption vocabulary "
                             f"({', '.join(self.itos[len(self.SPECIALS):])})")
        return [self.stoi[w] for w in words]

    def decode(self, ids) -> str:
        """Words for ``ids``: ``<bos>`` and ``<pad>`` are skipped and the text ends at the first ``<eos>``
        (what a model generates after it does not count)."""
        words = []
        for i in token_ids(ids, len(self.itos)):
            if i == self.eos_id:
                break
            if i not in (self.pad_id, self.bos_id):
                words.append(self.itos[i])
        return " ".join(words)

    def batch(self, captions: Sequence[str], length: int | None = None) -> torch.Tensor:
        """``(B, L)`` ids: ``<bos>`` caption ``<eos>``, padded with ``<pad>`` to ``length`` (default: the longest)."""
        if isinstance(captions, str) or not captions:
            raise ValueError("batch needs a non-empty list of captions")
        rows = [[self.bos_id, *self.encode(c), self.eos_id] for c in captions]
        longest = max(map(len, rows))
        length = longest if length is None else operator.index(length)
        if length < longest:
            raise ValueError(f"length {length} is too short: the longest caption needs {longest} ids with <bos>/<eos>")
        out = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        for i, row in enumerate(rows):
            out[i, : len(row)] = torch.tensor(row)
        return out


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def upsample_attention(attention_hw: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """An ``(h, w)`` map over patches as a ``size`` map over pixels, each patch's value copied over
    its pixels (nearest-neighbour upsampling: no blur between patches)."""
    att = torch.as_tensor(attention_hw).detach().float().cpu()
    if att.dim() != 2:
        raise ValueError(f"attention_map_hw must be 2-D (h, w) over patches, got shape {tuple(att.shape)}")
    size = (size, size) if isinstance(size, int) else tuple(size)
    if att.shape[0] > size[0] or att.shape[1] > size[1]:
        raise ValueError(f"an attention map of {tuple(att.shape)} patches cannot be larger than the image {size}")
    return F.interpolate(att[None, None], size=size, mode="nearest")[0, 0]  # (H, W)


def _as_hwc(image: torch.Tensor):
    image = torch.as_tensor(image).detach().float().cpu()
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"an image must be (3, H, W), got shape {tuple(image.shape)}")
    return image.clamp(0, 1).permute(1, 2, 0).numpy()  # (H, W, 3) as matplotlib wants


def _frame(ax) -> None:
    """No ticks or grid, but a thin border: the pictures are white on a white page."""
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(True)
        spine.set_linewidth(0.5)
        spine.set_color("0.6")


def show_images(axes, images, titles: Sequence[str] | None = None, *, wrap: int = 24) -> None:
    """Draw ``images`` (a ``(B, 3, H, W)`` tensor or a list of ``(3, H, W)``) on ``axes``, one each,
    with ``titles`` wrapped to ``wrap`` characters, in a thin frame; axes left over are blanked."""
    import numpy as np

    axes = list(np.ravel(axes))
    images = list(images)
    if len(images) > len(axes):
        raise ValueError(f"{len(images)} images need as many axes, got {len(axes)}")
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"need one title per image: {len(images)} images, {len(titles)} titles")
    for i, ax in enumerate(axes):
        if i >= len(images):
            ax.set_axis_off()
            continue
        _frame(ax)
        ax.imshow(_as_hwc(images[i]), interpolation="nearest")
        if titles is not None:
            ax.set_title(textwrap.fill(titles[i], wrap), fontsize=8)


def overlay_attention(ax, image: torch.Tensor, attention_map_hw: torch.Tensor, alpha: float = 0.5,
                      cmap: str = "magma"):
    """Draw ``image`` (3, H, W) and over it an ``(h, w)`` patch attention map upsampled to (H, W) by
    nearest neighbour; returns the overlay's ``AxesImage`` (for a colour bar)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    picture = _as_hwc(image)
    att = upsample_attention(attention_map_hw, picture.shape[:2])  # (H, W)
    _frame(ax)
    ax.imshow(picture, interpolation="nearest")
    return ax.imshow(att.numpy(), cmap=cmap, alpha=alpha, interpolation="nearest")
