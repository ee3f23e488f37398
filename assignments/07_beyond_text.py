# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [raw]
# # ASSIGNMENT CONFIG
# name: 07_beyond_text
# init_cell: true
# check_all_cell: false
# export_cell: false
# solutions_pdf: false
# generate: true
# tests:
#   files: false

# %% [markdown]
# # Assignment 7: Beyond text — cross-attention and a captioner
#
# This assignment goes with chapter 7 (read "Cross-attention", "Pictures with known captions",
# "A captioner with cross-attention" and "Where the decoder looks"). You will check that a padded
# memory position is the same as a missing one, measure where each decoder layer and head of a
# captioner looks, compare the post-norm and pre-norm decoder layers at a high learning rate, and
# count the captions of the grammar. The chapter trains on 12,000 pictures for 3,000 steps; here the
# models are smaller and train for 100–150 steps on 2,000 pictures, so that the whole notebook runs
# in seconds on a CPU. After you answer a question, run `grader.check("ex1")` (and so on) to run its
# public tests; more tests are hidden and run when your notebook is graded. Exercise 2 is graded by
# hand.
#
# Run the setup cell below first. It makes the pictures, a small model configuration and a
# captioner trained for 150 steps, and defines `train(model, steps, lr)`, which trains a captioner
# with the book's `Trainer` and returns its training-loss history.

# %%
import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from aigc_book.layers.block import init_gpt2_weights
from aigc_book.layers.cross_attention import CrossAttention, DecoderBlock
from aigc_book.training.trainer import TrainConfig, Trainer
from aigc_book.vision import shapes
from aigc_book.vision.captioner import Captioner, CaptionerConfig, caption_batch, caption_loss

torch.set_num_threads(1)  # the same sums on every run, and no fight over a busy CPU

# Exercise 1: a decoder sequence x and a memory whose second row ends in 3 padded positions.
C, H = 16, 4
g = torch.Generator().manual_seed(0)
x = torch.randn(2, 5, C, generator=g, dtype=torch.float64)  # (B, T, C)
memory = torch.randn(2, 7, C, generator=g, dtype=torch.float64)  # (B, S, C)
keep = torch.ones(2, 7, dtype=torch.bool)  # True = a real memory position
keep[1, -3:] = False
torch.manual_seed(0)
attn = CrossAttention(C, H).double().eval()

# Exercises 3 and 4: pictures, captions and a small captioner configuration.
IMAGE_SIZE, PATCH_SIZE, BATCH = 32, 8, 32
train_images, train_captions, train_scenes = shapes.make_dataset(2000, IMAGE_SIZE, seed=1)
test_images, test_captions, test_scenes = shapes.make_dataset(200, IMAGE_SIZE, seed=2)
tok = shapes.CaptionTokenizer()
train_ids = tok.batch(train_captions)  # (N, L): <bos> words <eos> <pad>...
test_ids = tok.batch(test_captions, length=train_ids.size(1))
config = CaptionerConfig(
    vocab_size=tok.vocab_size,
    image_size=IMAGE_SIZE,
    patch_size=PATCH_SIZE,
    n_embd=32,
    n_head=4,
    n_enc_layer=1,
    n_dec_layer=2,
    max_len=train_ids.size(1),
    pad_id=tok.pad_id,
)


def train(model, steps, lr, warmup=10):
    """Train a captioner on the training pictures (seeded batches); return its loss history."""
    trainer = Trainer(
        model,
        lambda split, gen: caption_batch(train_images, train_ids, BATCH, gen),
        caption_loss,
        TrainConfig(steps=steps, lr=lr, warmup_steps=warmup, eval_splits=(), progress=False),
    )
    trainer.train()
    return trainer.history["train_loss"]


torch.manual_seed(0)
captioner = Captioner(config)
_ = train(captioner, 150, 3e-3)
captioner.eval()

# %% [raw]
# # BEGIN QUESTION
# name: ex1
# points: 3

# %% [markdown]
# **Exercise 1. The weights of cross-attention.** For one query, the cross-attention weights form a
# distribution over the $S$ memory positions. Hiding a padded position gives it a score of
# $-\infty$, so its weight $e^{-\infty}/\sum_j e^{s_j}$ is 0 and it drops out of the numerator and
# the denominator of every other weight: the output should be the same as if the position had been
# deleted from the memory. Check it with the setup's `attn` (a `CrossAttention` layer), `x`,
# `memory` and `keep` (the second memory row has 3 padded positions at the end):
#
# * `padded_out`: the output of `attn` for the whole batch with the padding mask `keep`, shape
#   `(2, 5, 16)`;
# * `short_out`: the output of `attn` for the second example alone (`x[1:]`) with its memory cut to
#   its 4 real positions and no mask, shape `(1, 5, 16)`;
# * `pad_weight`: a float, the largest attention weight that any head and query of the second
#   example puts on a padded position (ask `attn` for its weights with `need_weights=True`).

# %% [raw]
# # BEGIN SOLUTION

# %%
padded_out = ...  # SOLUTION
short_out = ...  # SOLUTION
pad_weight = ...  # SOLUTION
# BEGIN SOLUTION
with torch.no_grad():
    padded_out, weights = attn(x, memory, keep, need_weights=True)  # weights (B, heads, T, S)
    short_out = attn(x[1:], memory[1:, :4])
pad_weight = float(weights[1, :, :, ~keep[1]].max())
# END SOLUTION

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
assert tuple(padded_out.shape) == (2, 5, C), "padded_out should have shape (2, 5, 16) = (B, T, C)"
assert tuple(short_out.shape) == (1, 5, C), "short_out should have shape (1, 5, 16): x[1:] only"
assert torch.allclose(padded_out[1:], short_out, atol=1e-10), (
    "the second example's output with the padding mask should equal the output with the memory "
    "cut to "
    "its 4 real positions"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
def _by_hand(q_in, mem, mask):
    """softmax(Q K^T / sqrt(d) with -inf on hidden keys) V, heads merged, output projection."""
    B, T, hd = q_in.size(0), q_in.size(1), C // H
    q = attn.q_attn(q_in).view(B, T, H, hd).transpose(1, 2)
    k, v = (t.view(B, -1, H, hd).transpose(1, 2) for t in attn.c_attn(mem).split(C, dim=2))
    scores = q @ k.transpose(-2, -1) / math.sqrt(hd)
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    return attn.c_proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, C))
with torch.no_grad():
    _hand_short = _by_hand(x[1:], memory[1:, :4], None)
    _hand_padded = _by_hand(x, memory, keep)
assert torch.allclose(padded_out, _hand_padded, atol=1e-10), (
    "padded_out should be attn(x, memory, keep) for the whole batch: it differs from "
    "softmax(QK^T/sqrt(d))V "
    "computed by hand with -inf on the padded keys"
)
assert torch.allclose(short_out, _hand_short, atol=1e-10), (
    "short_out should be attn applied to x[1:] and memory[1:, :4] (the 4 real positions), without "
    "a mask"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
assert isinstance(pad_weight, float), "pad_weight should be a Python float (use float(...))"
with torch.no_grad():
    _, _w = attn(x, memory, keep, need_weights=True)
assert float(_w[1, :, :, 4:].abs().max()) == 0.0, (
    "the padded positions should get no attention at all"
)
assert pad_weight == 0.0, (
    "pad_weight should be the largest weight on a padded position (the last 3 memory positions of "
    "the "
    "second example), which is exactly 0"
)

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: ex2
# manual: true
# points: 2

# %% [markdown]
# **Exercise 2. Teach the relation.** *(open: graded by hand)* In the chapter neither the captioner
# nor the one-vector baseline learned the relation word in 3,000 steps: both were at chance (1/4).
# Train the chapter's captioner for longer, or with patches of 4 × 4 pixels (64 patches), and watch
# the relation accuracy (`shapes.caption_scores` on the test pictures; compare with chance, 1/4).
# Does the one-vector baseline (`PooledCaptioner`) ever catch up on the shape words? These runs take
# minutes, not seconds, so do them with the chapter's settings outside this notebook (or in a copy
# of the chapter) and report in the cell below: the settings you ran, the relation, shape and
# exact-match accuracies of both models against chance, and your explanation of what the relation
# needs that naming the objects does not.

# %% [raw]
# # BEGIN SOLUTION

# %% [markdown]
# **Model answer (for teachers).** A good answer reports numbers from runs at the chapter's size
# (12,000 training and 1,000 test pictures, width 64, 2 + 2 layers) and compares them with chance,
# not only with each other. What it should find and say:
#
# * In the chapter's run (8 × 8 patches, 3,000 steps) the relation stayed at chance (0.256 and
#   0.258) while the captioner's colour and shape words reached 1.00: naming an object needs one
#   look at its patches, the relation needs the two objects' *positions compared*. A 10-pixel shape
#   in a 32-pixel picture cut into 8-pixel patches touches two or three patches per side, so "left
#   of" and "above" must be read from which patches are active, through patch position embeddings
#   the model has to learn first. Exact match is capped by the relation accuracy (in the chapter
#   25.6 % exact, 25.6 % relation).
# * Longer training and finer patches (64 patches of 4 × 4 pixels: an object's position is read more
#   precisely, from a memory 4 times as long and an encoder attention table 16 times as large) are
#   the two levers. We do not give the outcome as a number: whichever the student ran, the question
#   is whether the relation accuracy rises clearly above 0.25 (the standard error of an accuracy
#   near 0.25 on 1,000 test pictures is about 0.014, so a rise of a few points is noise), and the
#   answer should say so either way.
# * The one-vector baseline: in the chapter its shape words reached 0.61 against 1.00 with
#   cross-attention. The mean of the 16 patch vectors keeps *what* is in the picture but blurs
#   *where*, and *which colour goes with which shape* must survive the averaging. A good answer
#   reports whether more steps narrowed that gap and by how much, and explains why the mean has
#   even less to go on for the relation word.
#
# Full marks: runs described, both models' relation and shape accuracies compared with chance, and
# a correct explanation of why the relation is harder than the object words. One point for numbers
# without the explanation, or the explanation without runs.

# %% [raw]
# # END SOLUTION

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: ex3
# points: 4

# %% [markdown]
# **Exercise 3. Which layer looks?** Repeat the measurement of the chapter's section "Where the
# decoder looks" for every decoder layer and every head separately (the chapter averaged the heads
# of the last layer). The setup's `captioner` was trained for only 150 steps (the chapter's for
# 3,000), so expect weaker focus than in the chapter.
#
# 1. Compute `maps = captioner.cross_attention_maps(test_images, test_ids[:, :-1])`: shape
#    `(n_dec_layer, B, n_head, T, n_patches)`; row `[l, b, h, t]` is where the query at input token
#    `t` of picture `b` looks.
# 2. Write `named_object_attention(maps, scenes, patch_size)` that returns a tensor of shape
#    `(n_layer, n_head)`: for each layer and head, the attention (summed over the patches that an
#    object's bounding box overlaps) that the queries predicting that object's colour and shape put
#    on that object, averaged over the pictures and over these 4 queries per picture. The queries:
#    in the input `<bos> a <colour> <shape> <relation...> a <colour> <shape>`, the query at each `a`
#    predicts a colour and the query at the colour that follows predicts the shape; so positions 1
#    and 2 for `scene.first` and positions `k`, `k + 1` with `k = 4 + len(scene.relation.split())`
#    for `scene.second`. An object (`scene.first`, `scene.second`) has a bounding box with top-left
#    corner `(obj.x, obj.y)` and side `obj.size` in pixels; patches are numbered in reading order.
# 3. `table = named_object_attention(maps, test_scenes, PATCH_SIZE)`, and `best`: the pair
#    `(layer, head)` (ints, from 0) of the largest entry of `table` — the head that looks at the
#    named object most.

# %% [raw]
# # BEGIN SOLUTION

# %%
maps = ...  # SOLUTION


def named_object_attention(maps, scenes, patch_size):
    """Mean attention on the named object's patches, per layer and head: (n_layer, n_head)."""
    # BEGIN SOLUTION
    grid = maps.size(-1) ** 0.5
    grid = int(round(grid))
    edges = torch.arange(grid) * patch_size

    def patches(obj):  # the patches the bounding box overlaps, in reading order
        rows = (edges < obj.y + obj.size) & (edges + patch_size > obj.y)
        cols = (edges < obj.x + obj.size) & (edges + patch_size > obj.x)
        return (rows[:, None] & cols[None, :]).flatten()

    total = torch.zeros(maps.size(0), maps.size(2), dtype=maps.dtype)
    count = 0
    for b, scene in enumerate(scenes):
        k = 4 + len(scene.relation.split())
        for queries, obj in (((1, 2), scene.first), ((k, k + 1), scene.second)):
            mask = patches(obj)
            for q in queries:
                total += maps[:, b, :, q][..., mask].sum(-1)  # (n_layer, n_head)
                count += 1
    return total / count
    # END SOLUTION


table = ...  # SOLUTION
best = ...  # SOLUTION
# BEGIN SOLUTION
maps = captioner.cross_attention_maps(test_images, test_ids[:, :-1])
table = named_object_attention(maps, test_scenes, PATCH_SIZE)
flat = int(table.argmax())
best = (flat // table.size(1), flat % table.size(1))
# END SOLUTION

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
_n, _T, _N = len(test_scenes), test_ids.size(1) - 1, (IMAGE_SIZE // PATCH_SIZE) ** 2
assert tuple(maps.shape) == (config.n_dec_layer, _n, config.n_head, _T, _N), (
    "maps should be captioner.cross_attention_maps(test_images, test_ids[:, :-1]), shape "
    "(n_dec_layer, B, n_head, T, n_patches)"
)
assert tuple(table.shape) == (config.n_dec_layer, config.n_head), (
    "table should be (n_layer, n_head)"
)
assert bool(((table >= 0) & (table <= 1 + 1e-6)).all()), "attention shares must lie in [0, 1]"

# %%
_n, _T, _N = len(test_scenes), test_ids.size(1) - 1, (IMAGE_SIZE // PATCH_SIZE) ** 2
# (B, 2, N): the patches each object's bounding box overlaps, by average-pooling a pixel box
_masks = []
for _sc in test_scenes:
    _pair = []
    for _o in (_sc.first, _sc.second):
        _box = torch.zeros(1, 1, IMAGE_SIZE, IMAGE_SIZE)
        _box[..., _o.y : _o.y + _o.size, _o.x : _o.x + _o.size] = 1.0
        _pair.append(F.avg_pool2d(_box, PATCH_SIZE).flatten() > 0)
    _masks.append(torch.stack(_pair))
_masks = torch.stack(_masks)
_uniform = torch.full((2, _n, 3, _T, _N), 1.0 / _N)
# an even spread puts the objects' share of the patches on them
_want = float(_masks.float().mean())
torch.testing.assert_close(
    named_object_attention(_uniform, test_scenes, PATCH_SIZE).float(),
    torch.full((2, 3), _want),
    msg="with attention spread evenly over the patches, each entry should be the mean share of "
        "patches "
    "that the named object's bounding box overlaps",
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
_n, _T, _N = len(test_scenes), test_ids.size(1) - 1, (IMAGE_SIZE // PATCH_SIZE) ** 2
# (B, 2, N): the patches each object's bounding box overlaps, by average-pooling a pixel box
_masks = []
for _sc in test_scenes:
    _pair = []
    for _o in (_sc.first, _sc.second):
        _box = torch.zeros(1, 1, IMAGE_SIZE, IMAGE_SIZE)
        _box[..., _o.y : _o.y + _o.size, _o.x : _o.x + _o.size] = 1.0
        _pair.append(F.avg_pool2d(_box, PATCH_SIZE).flatten() > 0)
    _masks.append(torch.stack(_pair))
_masks = torch.stack(_masks)
_ref_maps = captioner.cross_attention_maps(test_images, test_ids[:, :-1])
# (B, 2)
_a = torch.stack([row.nonzero().flatten()[:2] for row in test_ids[:, :-1] == tok.stoi["a"]])
# (B, 2 objects, 2 queries): each 'a', then the colour after it
_q = torch.stack([_a, _a + 1], dim=2)
_rows = _ref_maps[:, torch.arange(_n)[:, None, None], :, _q]  # (B, 2, 2, n_layer, n_head, N)
_ref_table = (_rows * _masks[:, :, None, None, None, :]).sum(-1).mean(dim=(0, 1, 2))
torch.testing.assert_close(
    named_object_attention(_ref_maps, test_scenes, PATCH_SIZE).float(),
    _ref_table.float(),
    msg="named_object_attention differs from an independent computation on the captioner's maps: "
        "check the "
    "query positions (1, 2 and k, k + 1) and the patches of each object",
)
torch.testing.assert_close(
    table.float(), _ref_table.float(), msg="table should be named_object_attention of your maps"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
_n, _T, _N = len(test_scenes), test_ids.size(1) - 1, (IMAGE_SIZE // PATCH_SIZE) ** 2
# (B, 2, N): the patches each object's bounding box overlaps, by average-pooling a pixel box
_masks = []
for _sc in test_scenes:
    _pair = []
    for _o in (_sc.first, _sc.second):
        _box = torch.zeros(1, 1, IMAGE_SIZE, IMAGE_SIZE)
        _box[..., _o.y : _o.y + _o.size, _o.x : _o.x + _o.size] = 1.0
        _pair.append(F.avg_pool2d(_box, PATCH_SIZE).flatten() > 0)
    _masks.append(torch.stack(_pair))
_masks = torch.stack(_masks)
_ref_maps = captioner.cross_attention_maps(test_images, test_ids[:, :-1])
# (B, 2)
_a = torch.stack([row.nonzero().flatten()[:2] for row in test_ids[:, :-1] == tok.stoi["a"]])
# (B, 2 objects, 2 queries): each 'a', then the colour after it
_q = torch.stack([_a, _a + 1], dim=2)
_rows = _ref_maps[:, torch.arange(_n)[:, None, None], :, _q]  # (B, 2, 2, n_layer, n_head, N)
_ref_table = (_rows * _masks[:, :, None, None, None, :]).sum(-1).mean(dim=(0, 1, 2))
_flat = int(_ref_table.argmax())
assert tuple(best) == (_flat // _ref_table.size(1), _flat % _ref_table.size(1)), (
    "best should be (layer, head) of the largest entry of the table"
)

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: ex4
# points: 4

# %% [markdown]
# **Exercise 4. Post-norm or pre-norm.** The `Captioner`'s decoder is built of pre-norm
# `DecoderBlock`s (GPT-2's placement of the LayerNorm). Build one with post-norm blocks (the 2017
# paper's placement) and train both at a high learning rate. The chapter's settings would train for
# 3,000 steps; here each model trains for `STEPS = 100` steps at `lr = 0.1` with 5 warm-up steps,
# which is enough to see the difference.
#
# 1. Write `post_norm_captioner(config)`: a `Captioner(config)` whose decoder blocks `model.h` are
#    replaced by `config.n_dec_layer` blocks `DecoderBlock(config.n_embd, config.n_head,
#    config.dropout, norm_first=False)`, initialised as the captioner initialises its decoder
#    (`init_gpt2_weights(blocks, config.n_dec_layer)`).
# 2. Train `torch.manual_seed(0); Captioner(config)` and `torch.manual_seed(0);
#    post_norm_captioner(config)` with the setup's `train(model, STEPS, 0.1, warmup=5)`; keep the
#    loss histories as `pre_losses` and `post_losses`.
# 3. `pre_final`, `post_final`: the mean of the last 20 losses of each (floats), and `more_stable`:
#    `"pre-norm"` or `"post-norm"`, the one that reached the lower final loss at this learning rate.

# %% [raw]
# # BEGIN SOLUTION

# %%
STEPS = 100


def post_norm_captioner(config):
    """A Captioner whose decoder blocks put the LayerNorm after each sub-layer (post-norm)."""
    # BEGIN SOLUTION
    model = Captioner(config)
    blocks = nn.ModuleList(
        DecoderBlock(config.n_embd, config.n_head, config.dropout, norm_first=False)
        for _ in range(config.n_dec_layer)
    )
    init_gpt2_weights(blocks, config.n_dec_layer)
    model.h = blocks
    return model
    # END SOLUTION


pre_losses = ...  # SOLUTION
post_losses = ...  # SOLUTION
pre_final = ...  # SOLUTION
post_final = ...  # SOLUTION
more_stable = ...  # SOLUTION
# BEGIN SOLUTION
torch.manual_seed(0)
pre_losses = train(Captioner(config), STEPS, 0.1, warmup=5)
torch.manual_seed(0)
post_losses = train(post_norm_captioner(config), STEPS, 0.1, warmup=5)
pre_final = sum(pre_losses[-20:]) / 20
post_final = sum(post_losses[-20:]) / 20
more_stable = "pre-norm" if pre_final < post_final else "post-norm"
# END SOLUTION

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
_m = post_norm_captioner(config)
assert isinstance(_m, Captioner), "post_norm_captioner should return a Captioner"
assert len(_m.h) == config.n_dec_layer, "the decoder should have config.n_dec_layer blocks"
assert all(isinstance(b, DecoderBlock) and not b.norm_first for b in _m.h), (
    "every decoder block should be a DecoderBlock with norm_first=False (post-norm)"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
_ = torch.manual_seed(1)
_m = post_norm_captioner(config).eval()
_outs = []
_hooks = [b.register_forward_hook(lambda mod, inp, out: _outs.append(out)) for b in _m.h]
with torch.no_grad():
    _ = _m(test_images[:4], test_ids[:4, :-1])
for _h in _hooks:
    _h.remove()
assert len(_outs) == config.n_dec_layer, (
    "the model's forward pass should run every block of model.h"
)
for _o in _outs:  # post-norm: every block ends in a LayerNorm (weight 1, bias 0 at initialisation)
    torch.testing.assert_close(_o.mean(-1), torch.zeros(_o.shape[:-1]), atol=1e-4, rtol=0)
    _var = _o.var(-1, unbiased=False)
    torch.testing.assert_close(_var, torch.ones(_o.shape[:-1]), atol=1e-2, rtol=0)
_std = [float(p.std()) for n, p in _m.h.named_parameters() if n.endswith("attn.weight")]
assert max(abs(s - 0.02) for s in _std) < 0.005, (
    "initialise the blocks with init_gpt2_weights (std 0.02)"
)

# %%
assert len(pre_losses) == STEPS and len(post_losses) == STEPS, (
    "pre_losses and post_losses should be the loss histories of STEPS training steps each"
)
assert all(math.isfinite(v) for v in pre_losses + post_losses), (
    "a loss history holds a non-finite value"
)
assert abs(pre_losses[0] - post_losses[0]) < 0.2, (
    "both runs should start from the same seed: their first losses should be close (about ln 18)"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
assert abs(pre_final - sum(pre_losses[-20:]) / 20) < 1e-9, (
    "pre_final: the mean of the last 20 pre-norm losses"
)
assert abs(post_final - sum(post_losses[-20:]) / 20) < 1e-9, (
    "post_final: the mean of the last 20 post-norm losses"
)
assert more_stable == ("pre-norm" if pre_final < post_final else "post-norm"), (
    "more_stable should name the placement with the lower final loss"
)
assert min(pre_losses[0], post_losses[0]) > math.log(tok.vocab_size) - 0.5, (
    "the histories should start from untrained models (a loss near ln 18 = 2.89)"
)

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: ex5
# points: 3

# %% [markdown]
# **Exercise 5. How many captions?** Count the captions of the grammar by hand: two distinct colours
# out of 5 (in order: the first object's, then the second's), two shapes out of 4 (repeats allowed),
# and 4 relations. Compute, from `len(shapes.COLOURS)`, `len(shapes.SHAPES)` and
# `len(shapes.RELATIONS)` with arithmetic (not by listing the captions): `n_colour_pairs`,
# `n_shape_pairs` and `n_captions` (ints).

# %% [raw]
# # BEGIN SOLUTION

# %%
n_colour_pairs = ...  # SOLUTION
n_shape_pairs = ...  # SOLUTION
n_captions = ...  # SOLUTION
# BEGIN SOLUTION
k, s, r = len(shapes.COLOURS), len(shapes.SHAPES), len(shapes.RELATIONS)
n_colour_pairs = k * (k - 1)  # ordered, distinct
n_shape_pairs = s * s  # ordered, repeats allowed
n_captions = n_colour_pairs * n_shape_pairs * r
# END SOLUTION

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
assert isinstance(n_captions, int), "n_captions should be an int"
assert n_captions == len(shapes.all_captions()), (
    "n_captions should equal len(shapes.all_captions())"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
assert n_colour_pairs == len(list(itertools.permutations(shapes.COLOURS, 2))), (
    "n_colour_pairs: ordered pairs of two different colours"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
assert n_shape_pairs == len(list(itertools.product(shapes.SHAPES, repeat=2))), (
    "n_shape_pairs: ordered pairs of shapes, the same shape twice allowed"
)

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION
