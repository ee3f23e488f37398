"""Pictures with known captions: the drawing matches the scene, the caption matches the drawing,
the checker and the scores are exact, the tokenizer round-trips, bad input is refused."""

from __future__ import annotations

import pytest
import torch
from matplotlib.figure import Figure

from aigc_book.tasks.metrics import bleu_by_hand
from aigc_book.vision.shapes import (
    COLOURS,
    INVERSE_RELATION,
    MIN_GAP,
    RELATIONS,
    SHAPES,
    Caption,
    CaptionTokenizer,
    Scene,
    SceneObject,
    all_captions,
    caption_scores,
    check_caption,
    make_dataset,
    overlay_attention,
    parse_caption,
    render_scenes,
    show_images,
    upsample_attention,
)

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


@pytest.fixture(scope="module")
def data():
    return make_dataset(300, image_size=32, seed=0)


def pixels_of(image: torch.Tensor, colour: str) -> torch.Tensor:
    """(H, W) mask of the pixels whose RGB is exactly ``colour``'s."""
    rgb = torch.tensor(COLOURS[colour]).view(3, 1, 1)
    return (image - rgb).abs().amax(dim=0) < 1e-6


def scene(first=("red", "circle", 2, 10), second=("blue", "square", 18, 12), relation="left of", size=10, s=32):
    return Scene(SceneObject(*first, size), SceneObject(*second, size), relation, s)


# ---- the pictures ----------------------------------------------------------------------------------


def test_same_seed_gives_the_same_pictures_and_another_seed_others():
    a_img, a_cap, a_sc = make_dataset(20, seed=5)
    b_img, b_cap, b_sc = make_dataset(20, seed=5)
    c_img, c_cap, _ = make_dataset(20, seed=6)
    assert torch.equal(a_img, b_img) and a_cap == b_cap and a_sc == b_sc
    assert not torch.equal(a_img, c_img) and a_cap != c_cap


def test_golden_captions_under_seed_0():
    # Catches a silent change in the sampling (order of random draws, ranges).
    _, captions, _ = make_dataset(3, seed=0)
    assert captions == GOLDEN


GOLDEN = ["a green cross below a yellow triangle", "a blue cross above a red circle",
          "a red square right of a blue triangle"]


def test_pictures_are_white_with_values_in_0_1(data):
    images, _, _ = data
    assert images.shape == (300, 3, 32, 32) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    white = (images == 1).all(dim=1).flatten(1).float().mean(dim=1)  # (n,) share of background pixels
    assert white.min() > 0.7  # two 10-pixel shapes cover at most 200 of 1024 pixels


def test_centre_pixel_of_each_object_has_its_colour(data):
    images, _, scenes = data
    for image, sc in zip(images, scenes):
        for obj in (sc.first, sc.second):
            row, col = obj.centre_pixel
            assert torch.allclose(image[:, row, col], torch.tensor(COLOURS[obj.colour])), (sc, obj)


def test_each_picture_holds_exactly_two_colours_besides_white(data):
    images, _, scenes = data
    for image, sc in zip(images[:50], scenes[:50]):
        painted = ~(image == 1).all(dim=0)
        ours = pixels_of(image, sc.first.colour) | pixels_of(image, sc.second.colour)
        assert torch.equal(painted, ours)


def test_relation_in_the_caption_matches_the_pixels(data):
    """Read each shape's position off the picture (bounding box of its colour), not off the scene."""
    images, captions, scenes = data
    for image, caption, sc in zip(images, captions, scenes):
        parsed = parse_caption(caption)
        centres = []
        for colour in (parsed.colour1, parsed.colour2):
            rows, cols = pixels_of(image, colour).nonzero(as_tuple=True)
            centres.append(((cols.min() + cols.max()) / 2, (rows.min() + rows.max()) / 2))
        dx, dy = (float(centres[1][i] - centres[0][i]) for i in range(2))  # from the first named to the second
        main, across = (dx, dy) if parsed.relation in ("left of", "right of") else (dy, dx)
        assert abs(main) >= sc.first.size + MIN_GAP - 1 and abs(main) >= 1.5 * abs(across), (caption, dx, dy)
        expected = {"left of": dx > 0, "right of": dx < 0, "above": dy > 0, "below": dy < 0}[parsed.relation]
        assert expected, (caption, dx, dy)


def test_all_four_relations_shapes_and_colours_occur_about_equally_often(data):
    _, _, scenes = data
    for values, names in (([s.relation for s in scenes], RELATIONS), ([s.first.shape for s in scenes], SHAPES),
                          ([s.second.colour for s in scenes], tuple(COLOURS))):
        shares = [values.count(v) / len(values) for v in names]
        assert all(abs(share - 1 / len(names)) < 0.08 for share in shares), shares


def test_shapes_have_their_pixel_counts():
    # By hand for a 10-pixel box: square 100; cross: arms 4 pixels wide, 2*40 - 16 = 64;
    # circle close to pi * 5**2 = 78.5; triangle close to half the box, 50.
    scenes = [scene(("red", shape, 2, 10), ("blue", "square", 18, 12)) for shape in SHAPES]
    counts = [int(pixels_of(img, "red").sum()) for img in render_scenes(scenes)]
    by_shape = dict(zip(SHAPES, counts))
    assert by_shape["square"] == 100 and by_shape["cross"] == 64
    assert abs(by_shape["circle"] - 78.5) <= 6 and abs(by_shape["triangle"] - 50) <= 6


def test_render_scenes_draws_what_make_dataset_drew(data):
    images, _, scenes = data
    assert torch.equal(render_scenes(scenes[:40]), images[:40])


def test_noise_is_seeded_and_stays_in_range():
    clean, _, _ = make_dataset(4, seed=1)
    noisy, _, _ = make_dataset(4, seed=1, noise=0.1)
    again, _, _ = make_dataset(4, seed=1, noise=0.1)
    assert torch.equal(noisy, again) and not torch.equal(noisy, clean)
    assert noisy.min() >= 0 and noisy.max() <= 1 and 0.02 < (noisy - clean).abs().mean() < 0.1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_draws_the_same_pictures_as_the_cpu():
    cpu, caps, _ = make_dataset(16, seed=2)
    gpu, caps_gpu, _ = make_dataset(16, seed=2, device="cuda")
    assert gpu.device.type == "cuda" and caps == caps_gpu and torch.equal(gpu.cpu(), cpu)


# ---- captions: grammar, parser, checker ---------------------------------------------------------------


def test_grammar_has_1280_distinct_captions_that_all_parse_back():
    captions = all_captions()
    assert len(captions) == len(set(captions)) == len(COLOURS) * (len(COLOURS) - 1) * len(SHAPES) ** 2 * 4 == 1280
    assert all(parse_caption(c).text() == c for c in captions)


def test_checker_accepts_the_caption_and_its_reversed_form():
    sc = scene()
    assert sc.caption() == "a red circle left of a blue square"
    assert sc.reversed_caption() == "a blue square right of a red circle"
    assert check_caption(sc.caption(), sc) and check_caption(sc.reversed_caption(), sc)
    assert check_caption("A  Red circle LEFT of a blue square", sc)  # case and spacing do not matter


@pytest.mark.parametrize("wrong", [
    "a green circle left of a blue square",  # colour
    "a red circle left of a blue cross",  # shape
    "a red circle right of a blue square",  # relation
    "a red circle above a blue square",  # relation
    "a blue square left of a red circle",  # right objects, relation not inverted
    "a red circle left of a red square",  # a colour the scene's second object does not have
])
def test_checker_rejects_a_wrong_slot(wrong):
    assert not check_caption(wrong, scene())


@pytest.mark.parametrize("garbage", [
    "", "a red circle", "a red circle left a blue square", "a red circle left of a blue square.",
    "the red circle left of a blue square", "a pink circle left of a blue square", "a red circle on a blue square",
    "a red circle left of a blue square and more", "red circle left of blue square a a",
])
def test_malformed_captions_do_not_parse(garbage):
    assert parse_caption(garbage) is None
    assert not check_caption(garbage, scene())


def test_parse_caption_refuses_a_non_string():
    with pytest.raises(TypeError, match="must be a str"):
        parse_caption(None)


def test_inverse_relations_pair_up():
    assert all(INVERSE_RELATION[INVERSE_RELATION[r]] == r != INVERSE_RELATION[r] for r in RELATIONS)
    assert Caption("red", "circle", "above", "blue", "cross").reversed() == Caption("blue", "cross", "below", "red",
                                                                                   "circle")


# ---- scores ------------------------------------------------------------------------------------------


def test_perfect_predictions_score_one_everywhere_and_bleu_100(data):
    _, captions, scenes = data
    for predictions in (captions, [s.reversed_caption() for s in scenes]):
        scores = caption_scores(predictions, scenes)
        assert scores.pop("bleu") == pytest.approx(100.0)
        assert scores == {"exact_match": 1.0, "colour_accuracy": 1.0, "shape_accuracy": 1.0,
                          "relation_accuracy": 1.0, "parseable": 1.0}


def test_known_mistakes_give_the_hand_computed_slot_accuracies():
    sc = scene()  # a red circle left of a blue square
    predictions = [
        "a red circle left of a blue square",  # all right:                colours 2, shapes 2, relation 1
        "a red circle left of a green square",  # one colour wrong:        colours 1, shapes 2, relation 1
        "a blue square left of a red circle",  # best read reversed:        colours 2, shapes 2, relation 0
        "circle circle left of square",  # unparseable:                    colours 0, shapes 0, relation 0
    ]
    scores = caption_scores(predictions, [sc] * 4)
    assert scores["exact_match"] == 1 / 4 and scores["parseable"] == 3 / 4
    assert scores["colour_accuracy"] == 5 / 8 and scores["shape_accuracy"] == 6 / 8
    assert scores["relation_accuracy"] == 2 / 4
    # BLEU from sacrebleu equals the formula written out (every n-gram order has matches, so smoothing is idle)
    refs = [[sc.caption().split(), sc.reversed_caption().split()]] * 4
    assert scores["bleu"] == pytest.approx(bleu_by_hand([p.split() for p in predictions], refs), abs=1e-9)
    assert 0 < scores["bleu"] < 100


def test_caption_scores_uses_given_references():
    sc = scene()
    one_ref = caption_scores([sc.reversed_caption()], [sc], [sc.caption()])
    assert one_ref["exact_match"] == 1.0 and one_ref["bleu"] < 100  # BLEU, unlike the checker, wants the words


def test_caption_scores_refuses_mismatched_lengths():
    with pytest.raises(ValueError, match="one prediction per scene"):
        caption_scores(["a red circle left of a blue square"], [scene(), scene()])
    with pytest.raises(ValueError, match="at least one"):
        caption_scores([], [])
    with pytest.raises(TypeError, match="must be lists"):
        caption_scores("a red circle left of a blue square", [scene()])


# ---- tokenizer ---------------------------------------------------------------------------------------


def test_tokenizer_round_trips_every_caption():
    tok = CaptionTokenizer()
    assert tok.vocab_size == 18 and (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    for caption in all_captions():
        ids = tok.encode(caption)
        assert len(ids) == len(caption.split()) and min(ids) >= 3
        assert tok.decode(ids) == caption


def test_batch_adds_bos_and_eos_and_pads():
    tok = CaptionTokenizer()
    short, long = "a red circle above a blue cross", "a red circle left of a blue cross"
    batch = tok.batch([short, long])
    assert batch.shape == (2, 10) and batch.dtype == torch.long
    assert batch[:, 0].tolist() == [1, 1] and batch[0, 8].item() == 2 and batch[0, 9].item() == 0
    assert batch[1, 9].item() == 2
    assert [tok.decode(row) for row in batch] == [short, long]
    assert tok.batch([short], length=12).shape == (1, 12)


def test_decode_stops_at_the_first_eos():
    tok = CaptionTokenizer()
    ids = [tok.bos_id, *tok.encode("a red circle above a blue cross"), tok.eos_id, *tok.encode("a red")]
    assert tok.decode(ids) == "a red circle above a blue cross"


def test_unknown_word_is_named_in_the_error():
    tok = CaptionTokenizer()
    with pytest.raises(ValueError, match="'pink' is not in the caption vocabulary"):
        tok.encode("a pink circle above a blue cross")
    with pytest.raises(ValueError, match="'<eos>' is not in the caption vocabulary"):
        tok.encode("a red circle <eos>")
    with pytest.raises(ValueError, match="too short"):
        tok.batch(["a red circle left of a blue cross"], length=5)
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([3, 18])


# ---- bad inputs to the pictures ------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(n=0), ValueError, "n must be >= 1"),
    (dict(n=2.0), TypeError, "n must be an int"),
    (dict(n=2, image_size=14), ValueError, "shape_size must be >= 5"),
    (dict(n=2, image_size=20, shape_size=10), ValueError, "too small for two shapes"),
    (dict(n=2, noise=-0.1), ValueError, "noise is a pixel standard deviation"),
])
def test_make_dataset_refuses_bad_sizes(kwargs, error, message):
    with pytest.raises(error, match=message):
        make_dataset(**kwargs)


def test_smallest_allowed_picture_works():
    images, captions, scenes = make_dataset(50, image_size=15, seed=0)
    assert images.shape == (50, 3, 15, 15) and all(check_caption(c, s) for c, s in zip(captions, scenes))


def test_scene_and_render_scenes_refuse_inconsistent_scenes():
    with pytest.raises(ValueError, match="different colours"):
        scene(second=("red", "square", 18, 12))
    with pytest.raises(ValueError, match="says 'above' but its positions say 'left of'"):
        render_scenes([scene(relation="above")])
    with pytest.raises(ValueError, match="outside"):
        render_scenes([scene(second=("blue", "square", 25, 12))])


# ---- figures -----------------------------------------------------------------------------------------


def test_upsampled_attention_copies_each_patch_over_its_pixels():
    att = torch.rand(4, 4, generator=torch.Generator().manual_seed(0))
    expected = att.repeat_interleave(8, dim=0).repeat_interleave(8, dim=1)  # 8x8 pixels per patch
    assert torch.equal(upsample_attention(att, 32), expected)
    with pytest.raises(ValueError, match="must be 2-D"):
        upsample_attention(torch.rand(16), 32)


def test_overlay_attention_draws_the_upsampled_map_over_the_picture(data):
    images, _, _ = data
    att = torch.rand(4, 4, generator=torch.Generator().manual_seed(0))
    ax = Figure().add_subplot()
    overlay = overlay_attention(ax, images[0], att, alpha=0.4)
    assert len(ax.images) == 2 and overlay.get_alpha() == 0.4
    assert torch.equal(torch.as_tensor(overlay.get_array()), upsample_attention(att, 32))
    with pytest.raises(ValueError, match="alpha must be in"):
        overlay_attention(ax, images[0], att, alpha=2)


def test_show_images_titles_each_picture_and_blanks_the_rest(data):
    images, captions, _ = data
    fig = Figure()
    axes = fig.subplots(1, 4)
    show_images(axes, images[:3], captions[:3])
    assert [len(ax.images) for ax in axes] == [1, 1, 1, 0] and not axes[3].axison
    assert axes[0].get_title().replace("\n", " ") == captions[0]
    with pytest.raises(ValueError, match="need as many axes"):
        show_images(axes, images[:5])
