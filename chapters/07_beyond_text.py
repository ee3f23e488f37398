# %% [markdown]
# # 7. Beyond text: cross-attention, the encoder–decoder, and a model that captions pictures
#
# Every model in this book so far has attended to one sequence: its own. The Transformer of "Attention
# Is All You Need" (Vaswani et al. 2017) had a second kind of attention, in its decoder: **{term}`cross-attention`**,
# whose queries come from the text being written and whose keys and values come from something else — in
# that paper a sentence in another language, in this chapter a picture. It is the piece that lets text
# attend to images ({term}`captioning <image captioning>`, visual question answering) and images to text ({term}`diffusion models <diffusion model>`
# conditioned on a prompt). GPT and ChatGPT do not have it: they are decoder-only. One of the source
# articles calls ChatGPT an {term}`encoder–decoder`; it is not, and this chapter shows what the encoder–decoder
# actually is by building one.
#
# The plan:
#
# 1. Write cross-attention and the original {term}`decoder layer`, and prove them equal to PyTorch's
#    `nn.MultiheadAttention` and `nn.TransformerDecoderLayer`.
# 2. Make a captioning task whose answers are known: pictures of coloured shapes drawn in code, with
#    captions such as "a red circle left of a blue square" that a program can check word by word.
# 3. Encode a picture as a sequence of patches (as the {term}`Vision Transformer <Vision Transformer (ViT)>` does), and train a decoder that
#    attends over the patches while it writes.
# 4. Compare it with the design of the first neural captioners, which squeezed the picture into one
#    vector: what does attention over the picture buy, word by word?
# 5. Look at where the decoder looks when it writes each word.
#
# The code lives in `aigc_book.layers.cross_attention` and `aigc_book.vision` (the pictures, the patch
# encoder and the captioners, `aigc_book.vision.captioner`).

# %%
import time
from dataclasses import dataclass

import matplotlib.pyplot as plt
import torch
from IPython.display import Markdown, display

from aigc_book import ChapterSettings, get_device, seed_everything, use_book_style

use_book_style()
device = get_device()
seed_everything(0)
chapter_start = time.perf_counter()
print(f"PyTorch {torch.__version__}, device: {device}, threads: {torch.get_num_threads()}")

# %% [markdown]
# ## Settings
#
# *How large are the experiments, and where do you change them?*
#
# The CPU values produced the stored outputs; on a CUDA GPU the same cells train larger models on more
# pictures for longer.


# %%
@dataclass(frozen=True)
class Settings(ChapterSettings):
    image_size: int = 32
    patch_size: int = 8  # 32 / 8: a 4 x 4 grid of 16 patches
    train_images: int = 12_000
    test_images: int = 1_000
    n_embd: int = 64
    n_head: int = 4
    n_enc_layer: int = 2
    n_dec_layer: int = 2
    steps: int = 3000
    batch: int = 32
    lr: float = 3e-3

    cuda = dict(  # what a CUDA GPU changes (Settings.for_device)
        train_images=50_000,
        test_images=4_000,
        n_embd=128,
        n_enc_layer=4,
        n_dec_layer=4,
        steps=3_000,
        batch=128,
        lr=1e-3,
    )


settings = Settings.for_device(device)
print(settings.table())

# %% [markdown]
# ## Cross-attention
#
# *How does one sequence attend to another?*
#
# Self-attention (chapter 2) computes queries, keys and values from the same sequence. Cross-attention
# takes the queries from the sequence being written, $x$ ($T$ positions), and the keys and values from
# another one, the **{term}`memory <memory (encoder output)>`** $m$ ($S$ positions, here the patches of a picture):
#
# $$Q = xW_Q,\quad K = mW_K,\quad V = mW_V,\qquad
#   \text{CrossAttn}(x, m) = \operatorname{softmax}\!\Big(\frac{QK^\top}{\sqrt{d_k}}\Big)V ,$$
#
# per head, with the heads concatenated and projected as before. Three differences from self-attention
# follow from the formula: the weight table is $T\times S$, not $T\times T$; there is no causal mask,
# because the whole memory exists before the first word is written; and padded memory positions can be
# hidden with a mask. `CrossAttention` reuses chapter 2's attention functions; here it is against
# PyTorch's `nn.MultiheadAttention` given the same weights (PyTorch's padding mask means "ignore", ours
# "keep"):

# %%
import torch.nn.functional as F
from torch import nn

from aigc_book.layers.cross_attention import CrossAttention, DecoderBlock

C, H = 16, 4
g = torch.Generator().manual_seed(0)
x = torch.randn(2, 5, C, generator=g, dtype=torch.float64)  # (B, T, C): the text being written
memory = torch.randn(2, 7, C, generator=g, dtype=torch.float64)  # (B, S, C): the picture's patches
keep = torch.ones(2, 7, dtype=torch.bool)
keep[1, -3:] = False  # the second memory has 3 padded positions
torch.manual_seed(0)
ours = CrossAttention(C, H).double().eval()
theirs = nn.MultiheadAttention(C, H, batch_first=True, dtype=torch.float64).eval()
with torch.no_grad():  # PyTorch packs W_q, W_k, W_v into one in_proj matrix
    theirs.in_proj_weight.copy_(torch.cat([ours.q_attn.weight, ours.c_attn.weight]))
    theirs.in_proj_bias.copy_(torch.cat([ours.q_attn.bias, ours.c_attn.bias]))
    theirs.out_proj.weight.copy_(ours.c_proj.weight)
    theirs.out_proj.bias.copy_(ours.c_proj.bias)
out, weights = ours(x, memory, keep, need_weights=True)
expected = theirs(x, memory, memory, key_padding_mask=~keep, need_weights=False)[0]
torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
torch.testing.assert_close(weights.sum(-1), torch.ones(2, H, 5, dtype=torch.float64))
assert bool((weights[1, :, :, -3:] == 0).all())  # padded patches get no attention
print(
    "CrossAttention == nn.MultiheadAttention: largest difference "
    f"{(out - expected).abs().max().item():.1e} (float64); "
    f"weights {tuple(weights.shape)} = (B, heads, T, S), each row sums to 1, padding gets 0"
)

# %% [markdown]
# ## The encoder–decoder, checked against PyTorch
#
# *What is the original Transformer's decoder layer?*
#
# Vaswani et al. (2017) stack two halves. The **encoder** reads the source with bidirectional
# self-attention (chapter 3's encoder). Each **decoder layer** has three sub-layers, each wrapped in a
# residual connection and a LayerNorm: causal self-attention over the text written so far,
# cross-attention over the encoder's output, and the feed-forward network. A decoder-only GPT is this
# decoder with the middle sub-layer removed — which is why it needs no encoder. `DecoderBlock` has both
# placements of the LayerNorm: after each sub-layer as in the paper ("{term}`post-norm <pre-LN / post-LN>`"), or before it as in
# GPT-2 ("pre-norm"). Against `nn.TransformerDecoderLayer` with the same weights:

# %%
tgt_mask = nn.Transformer.generate_square_subsequent_mask(
    5, dtype=torch.float64
)  # -inf above the diagonal
for norm_first in (False, True):
    torch.manual_seed(0)
    block = DecoderBlock(C, H, norm_first=norm_first).double().eval()
    layer = nn.TransformerDecoderLayer(
        C,
        H,
        dim_feedforward=4 * C,
        dropout=0.0,
        batch_first=True,
        activation=lambda t: F.gelu(t, approximate="tanh"),
        norm_first=norm_first,
        dtype=torch.float64,
    ).eval()
    with torch.no_grad():
        for mha, att, packed in (
            (layer.self_attn, block.attn, True),
            (layer.multihead_attn, block.cross_attn, False),
        ):
            w = att.c_attn.weight if packed else torch.cat([att.q_attn.weight, att.c_attn.weight])
            b = att.c_attn.bias if packed else torch.cat([att.q_attn.bias, att.c_attn.bias])
            mha.in_proj_weight.copy_(w)
            mha.in_proj_bias.copy_(b)
            mha.out_proj.weight.copy_(att.c_proj.weight)
            mha.out_proj.bias.copy_(att.c_proj.bias)
        for theirs_lin, ours_lin in (
            (layer.linear1, block.mlp.c_fc),
            (layer.linear2, block.mlp.c_proj),
        ):
            theirs_lin.weight.copy_(ours_lin.weight)
            theirs_lin.bias.copy_(ours_lin.bias)
        for theirs_ln, ours_ln in (
            (layer.norm1, block.ln_1),
            (layer.norm2, block.ln_2),
            (layer.norm3, block.ln_3),
        ):
            theirs_ln.weight.copy_(ours_ln.weight)
            theirs_ln.bias.copy_(ours_ln.bias)
    expected = layer(x, memory, tgt_mask=tgt_mask, memory_key_padding_mask=~keep)
    got = block(x, memory, keep)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    print(
        f"DecoderBlock(norm_first={norm_first}) == nn.TransformerDecoderLayer: largest difference "
        f"{(got - expected).abs().max().item():.1e}"
    )

# %% [markdown]
# ## Pictures with known captions
#
# *How can we grade a caption exactly?*
#
# Real captioning data is large, must be downloaded, and every picture has many right captions that
# no program can check. So we draw our own: two shapes (circle, square, triangle or cross) in two
# different colours on a white square, placed so that one is clearly left of, right of, above or below
# the other. The caption names the first shape, the relation and the second — "a red circle left of a
# blue square" — and a program can check every word against the scene that was drawn. "A blue square
# right of a red circle" describes the same scene, and the checker accepts it too.

# %%
from aigc_book.vision import shapes

train_images, train_captions, train_scenes = shapes.make_dataset(
    settings.train_images, settings.image_size, seed=1
)
test_images, test_captions, test_scenes = shapes.make_dataset(
    settings.test_images, settings.image_size, seed=2
)
tok = shapes.CaptionTokenizer()
n_captions = len(shapes.all_captions())
print(
    f"{len(train_captions):,} training and {len(test_captions):,} test pictures "
    f"of {settings.image_size} x {settings.image_size} pixels; the grammar has {n_captions:,} "
    f"captions; vocabulary {tok.vocab_size} tokens"
)
assert all(shapes.check_caption(c, sc) for c, sc in zip(test_captions, test_scenes))
assert all(
    shapes.check_caption(sc.reversed_caption(), sc) for sc in test_scenes
)  # the equivalent form
parts = test_scenes[0].parts()
wrong = parts._replace(
    relation=shapes.INVERSE_RELATION[parts.relation]
).text()  # the opposite relation
assert not shapes.check_caption(wrong, test_scenes[0])
print(
    f"checker: {test_captions[0]!r} and {test_scenes[0].reversed_caption()!r} are right, "
    f"{wrong!r} is wrong"
)
train_ids = tok.batch(train_captions)  # (N, L): <bos> words <eos> <pad>...
test_ids = tok.batch(test_captions)
print(f"a caption as token ids: {train_captions[0]!r} -> {train_ids[0].tolist()}")
fig, axes = plt.subplots(1, 6, figsize=(12, 2.6))
shapes.show_images(axes, train_images[:6], train_captions[:6])
fig.suptitle("Training pictures and their captions")
plt.show()

# %% [markdown]
# ## An image encoder from patches
#
# *How does a Transformer read a picture?*
#
# As a sequence. The Vision Transformer (Dosovitskiy et al. 2021) cuts the picture into square patches,
# flattens each patch into a vector of pixel values, projects it to the model's width and adds a
# learned position embedding per patch. From there the patches are tokens: a bidirectional Transformer
# encoder (chapter 3's, through its `inputs_embeds` seam) turns them into the memory the decoder
# attends over. A 32 × 32 picture in 8 × 8 patches is a sequence of 16 tokens. The projection of
# flattened patches is exactly a convolution whose stride equals its kernel size, the way most code
# writes it:

# %%
from aigc_book.vision.patches import ImageEncoder, PatchEmbedding, patches_to_image_grid

torch.manual_seed(0)
embed = PatchEmbedding(settings.image_size, settings.patch_size, 3, 16).double()
conv = nn.Conv2d(
    3, 16, kernel_size=settings.patch_size, stride=settings.patch_size, dtype=torch.float64
)
with torch.no_grad():
    conv.weight.copy_(embed.proj.weight.view(16, 3, settings.patch_size, settings.patch_size))
    conv.bias.copy_(embed.proj.bias)
pics = test_images[:4].double()
by_conv = (
    conv((pics - 0.5) / 0.5).flatten(2).transpose(1, 2)
)  # (B, N, C): pixels scaled to [-1, 1] as ViT does
torch.testing.assert_close(embed(pics), by_conv + embed.wpe.weight)
encoder = ImageEncoder(
    settings.image_size,
    settings.patch_size,
    n_embd=settings.n_embd,
    n_head=settings.n_head,
    n_layer=settings.n_enc_layer,
)
print(
    f"patch embedding == Conv2d(kernel = stride = {settings.patch_size}); "
    f"a picture becomes {embed.n_patches} tokens; the encoder's memory: "
    f"{tuple(encoder(test_images[:4]).shape)} = (B, patches, C)"
)
try:
    PatchEmbedding(30, 8, 3, 16)
except ValueError as err:
    print(f"a size the patches do not divide: ValueError: {err}")

# %% [markdown]
# ## A captioner with cross-attention
#
# *Can a small encoder–decoder learn to describe the pictures?*
#
# The captioner is the encoder above plus a decoder of `DecoderBlock`s: at every step it reads the words
# so far (causal self-attention) and all 16 patches (cross-attention), and predicts the next word. It
# trains with the same next-token loss as every GPT in the book, the picture being an extra input; the
# trainer is chapter 3's. At test time it writes greedily from `<bos>` until `<eos>`, and the checker
# grades each caption.

# %%
from aigc_book.training.trainer import TrainConfig, Trainer
from aigc_book.vision.captioner import (
    Captioner,
    CaptionerConfig,
    PooledCaptioner,
    caption_batch,
    caption_loss,
)

cap_config = CaptionerConfig(
    vocab_size=tok.vocab_size,
    image_size=settings.image_size,
    patch_size=settings.patch_size,
    n_embd=settings.n_embd,
    n_head=settings.n_head,
    n_enc_layer=settings.n_enc_layer,
    n_dec_layer=settings.n_dec_layer,
    max_len=train_ids.size(1),
    pad_id=tok.pad_id,
)


def train_and_score(model):
    """Train on the training pictures, caption the test pictures greedily, grade every caption."""
    t0 = time.perf_counter()
    trainer = Trainer(
        model,
        lambda split, g: caption_batch(train_images, train_ids, settings.batch, g),
        caption_loss,
        TrainConfig(steps=settings.steps, lr=settings.lr, warmup_steps=50, progress=False),
        device=device,
    )
    trainer.train()
    seconds = time.perf_counter() - t0
    ids = model.generate(test_images.to(device), train_ids.size(1) - 1, tok.bos_id, tok.eos_id)
    predictions = [tok.decode(row.tolist()) for row in ids.cpu()]
    return predictions, shapes.caption_scores(predictions, test_scenes), seconds

# %%
torch.manual_seed(0)
captioner = Captioner(cap_config).to(device)
cross_predictions, cross_scores, cross_seconds = train_and_score(captioner)
print(
    f"Captioner: {captioner.num_parameters():,} parameters, {settings.steps} steps "
    f"in {cross_seconds:.0f} s"
)
for picture_caption, predicted in list(zip(test_captions, cross_predictions))[:4]:
    print(f"  truth {picture_caption!r:44} written {predicted!r}")

# %% [markdown]
# ## A baseline that sees one vector
#
# *What does attending over the picture buy?*
#
# The first neural captioners (Show and Tell: Vinyals et al. 2015) encoded the picture into **one**
# vector and fed it to a language model once, as its first input. The source article's recipe does the
# same: the picture's feature vector $I$ sets the initial state, and the attention it then describes
# looks at the text's own hidden states, never at parts of the picture. Attention *over the picture's
# regions* came with Show, Attend and Tell (Xu et al. 2015); cross-attention is its Transformer form.
# `PooledCaptioner` is the one-vector design with everything else equal: the same encoder, its 16
# patch vectors averaged into one, which is the first input of a plain GPT decoder of the same size.

# %%
torch.manual_seed(0)
pooled = PooledCaptioner(cap_config).to(device)
pooled_predictions, pooled_scores, pooled_seconds = train_and_score(pooled)
print(
    f"PooledCaptioner: {pooled.num_parameters():,} parameters, {settings.steps} steps "
    f"in {pooled_seconds:.0f} s"
)
rows = (
    ("exact caption (checker)", "exact_match"),
    ("colour words", "colour_accuracy"),
    ("shape words", "shape_accuracy"),
    ("relation word", "relation_accuracy"),
    ("parseable captions", "parseable"),
)
print(
    f"{'on ' + str(len(test_scenes)) + ' test pictures':<26}{'cross-attention':>16}"
    f"{'one vector':>12}"
)
for name, key in rows:
    print(f"{name:<26}{cross_scores[key]:>16.3f}{pooled_scores[key]:>12.3f}")
print(f"{'BLEU (sacrebleu)':<26}{cross_scores['bleu']:>16.1f}{pooled_scores['bleu']:>12.1f}")
chance = {
    "colour_accuracy": 1 / len(shapes.COLOURS),
    "shape_accuracy": 1 / len(shapes.SHAPES),
    "relation_accuracy": 1 / len(shapes.RELATIONS),
}
print(
    "chance: colour " + f"{chance['colour_accuracy']:.2f}, shape {chance['shape_accuracy']:.2f}, "
    f"relation {chance['relation_accuracy']:.2f}"
)

# %%
better = [name for name, key in rows[:4] if cross_scores[key] > pooled_scores[key]]
display(
    Markdown(
        "With the same encoder, decoder size, data and steps, the captioner that attends over "
        f"the patches wrote {cross_scores['exact_match']:.1%} of the test captions exactly right, "
        f"the one-vector baseline {pooled_scores['exact_match']:.1%}. Cross-attention scored "
        f"higher on: {', '.join(better) if better else 'none of the four measures'}. The largest "
        f"gap is in the {max(rows[:4], key=lambda r: cross_scores[r[1]] - pooled_scores[r[1]])[0]} "
        f"({max(cross_scores[k] - pooled_scores[k] for _, k in rows[:4]):+.3f}). "
        "A mean over the patches keeps what is in the picture but blurs where: "
        "the relation between the two shapes, and which colour belongs to which shape, "
        "must survive the averaging, while cross-attention can read each object's patches when it "
        "names that object. BLEU, which counts shared word n-grams, moves less than exact match: "
        "a caption with one wrong word still shares most of its n-grams with the reference "
        "(chapter 4 says what BLEU cannot tell)."
    )
)

# %% [markdown]
# ## Where the decoder looks
#
# *When the captioner writes "red", is it looking at the red shape?*
#
# `cross_attention_maps` returns, for every decoder layer and head, how each query spreads its attention
# over the 16 patches. The query at position $t$ predicts word $t+1$: the query at "a" predicts the
# first colour, the query at the colour predicts the shape. Drawn over the picture, for the last
# decoder layer averaged over its heads, while the captioner reads the true caption of a test picture:

# %%
example = 0
example_ids = test_ids[example : example + 1, :-1].to(device)  # <bos> a colour shape ... (inputs)
maps = captioner.cross_attention_maps(test_images[example : example + 1].to(device), example_ids)
last = maps[-1, 0].mean(0).cpu()  # (T, patches): last layer, heads averaged
words = ["<bos>"] + test_captions[example].split()
fig, axes = plt.subplots(1, len(words) - 1, figsize=(2.0 * (len(words) - 1), 2.4))
for t, ax in enumerate(axes):
    shapes.overlay_attention(
        ax,
        test_images[example],
        patches_to_image_grid(last[t], settings.image_size, settings.patch_size),
    )
    ax.set_title(f"-> {words[t + 1]}", fontsize=9)
fig.suptitle(
    f"Cross-attention while writing {test_captions[example]!r} (last layer, mean of heads)"
)
plt.show()

# %% [markdown]
# A picture is one example; the next cell measures the whole test set. For every test picture it takes
# the attention (last layer, heads averaged) of the two queries that predict an object's colour and
# shape, and sums it over the patches that the object touches; as a yardstick, a query that spread its
# attention evenly would put the object's share of the patches there.

# %%
grid = settings.image_size // settings.patch_size


def object_patches(obj) -> torch.Tensor:
    """Boolean (patches,) mask of the patches an object's bounding box touches (reading order)."""
    rows = torch.arange(grid)
    r = (rows * settings.patch_size < obj.y + obj.size) & ((rows + 1) * settings.patch_size > obj.y)
    c = (rows * settings.patch_size < obj.x + obj.size) & ((rows + 1) * settings.patch_size > obj.x)
    return (r[:, None] & c[None, :]).flatten()


all_maps = (
    captioner.cross_attention_maps(test_images.to(device), test_ids[:, :-1].to(device))[-1]
    .mean(1)
    .cpu()
)
on_own, on_other, uniform = [], [], []
for i, scene in enumerate(test_scenes):
    # The second "a" sits after a one-word ("above") or a two-word ("left of") relation; <bos> is 0.
    second = test_captions[i].split().index("a", 1) + 1
    for queries, own, other in (
        ((1, 2), scene.first, scene.second),
        ((second, second + 1), scene.second, scene.first),
    ):
        own_mask, other_mask = object_patches(own), object_patches(other)
        for q in queries:  # the queries that predict this object's colour and shape
            on_own.append(float(all_maps[i, q][own_mask].sum()))
            on_other.append(float(all_maps[i, q][other_mask & ~own_mask].sum()))
            uniform.append(float(own_mask.float().mean()))
mean_own, mean_other, mean_uniform = (sum(v) / len(v) for v in (on_own, on_other, uniform))
print(
    f"attention on the named object's patches: {mean_own:.3f} (the other object's: "
    f"{mean_other:.3f}; spread evenly: {mean_uniform:.3f})"
)

# %%
display(
    Markdown(
        "While predicting an object's colour and shape, the last layer put on average "
        f"{mean_own:.0%} of its attention on the patches of that object, against {mean_other:.0%} "
        f"on the other object's and the {mean_uniform:.0%} an even spread would give. "
        + (
            "So the decoder does look at what it names — measured here on the last layer and on "
            "average; single heads and earlier layers can do other things (exercise 3)."
            if mean_own > max(mean_other, mean_uniform)
            else (
                "So this layer does not, on average, look at what it names: "
                "its attention maps are not an explanation of its words (exercise 3 asks where "
                "the information flows instead)."
            )
        )
    )
)

# %% [markdown]
# ## From here to real systems
#
# *How do the systems that make and describe real pictures use these pieces?*
#
# * **Image-to-text.** Real captioners and visual question-answering models keep this chapter's shape —
#   an image encoder whose patch vectors a language model reads — with encoders pretrained on very large
#   collections of pictures. The Vision Transformer (Dosovitskiy et al. 2021) showed that patches plus a
#   plain Transformer encoder classify images well when pretrained at scale.
# * **Pictures and text in one space.** {term}`CLIP <contrastive learning (CLIP)>` (Radford et al. 2021) trains an image encoder and a text
#   encoder together with a contrastive loss: the embeddings of a picture and its caption are pulled
#   together, those of mismatched pairs pushed apart, over 400 million pairs from the web. It has no
#   cross-attention; it learns which text goes with which picture.
# * **Text-to-image.** Latent diffusion models (Rombach et al. 2022, the basis of Stable Diffusion)
#   generate a picture by removing noise step by step; the network that predicts the noise attends to the
#   prompt's token embeddings through cross-attention layers — the same layer as above, with the picture's
#   positions as queries and the text as memory.
#
# None of this is measured here; the chapter's own claims stop at its small task.

# %% [markdown]
# ## Common misconceptions
#
# * **"ChatGPT is an encoder–decoder Transformer."** GPT models are decoder-only: a stack of the decoder
#   layer above without its cross-attention sub-layer. The encoder–decoder is the original translation
#   model (and T5, chapter 3).
# * **"Cross-attention needs a causal mask."** The memory is complete before the first word is written;
#   only the decoder's self-attention over its own words is causal.
# * **"Attention maps explain a model's output."** They show where one layer's queries put their weight;
#   the information can reach a word by other paths (earlier layers, the residual stream). This chapter
#   measures the maps on average rather than reading one.
# * **"A better BLEU means a right caption."** BLEU counts shared n-grams; one wrong colour leaves most
#   of them in place. Where answers can be checked, check them.

# %% [markdown]
# ## Summary

# %%
relation_learned = cross_scores["relation_accuracy"] > chance["relation_accuracy"] + 0.1
display(
    Markdown(
        "* Cross-attention is attention whose queries come from one sequence and whose "
        "keys and values come from another; ours equals `nn.MultiheadAttention`, "
        "and our decoder layer equals `nn.TransformerDecoderLayer` in both LayerNorm placements.\n"
        f"* A picture becomes a sequence of {cap_config.n_patches} "
        "patch tokens; a patch embedding is a strided convolution.\n"
        "* On pictures whose captions a program can check, the captioner with "
        f"cross-attention wrote {cross_scores['exact_match']:.1%} of the captions "
        f"exactly right (colour words {cross_scores['colour_accuracy']:.1%}, shape "
        f"words {cross_scores['shape_accuracy']:.1%}); the one-vector baseline of the same size "
        f"{pooled_scores['exact_match']:.1%} (shape words {pooled_scores['shape_accuracy']:.1%}).\n"
        + (
            f"* The relation word was learned: {cross_scores['relation_accuracy']:.1%}.\n"
            if relation_learned
            else (
                "* Neither model learned the relation word within these settings: "
                f"{cross_scores['relation_accuracy']:.1%} "
                f"and {pooled_scores['relation_accuracy']:.1%}, against "
                f"{chance['relation_accuracy']:.0%} by chance. Naming the objects is one look; "
                "the relation needs the two objects' positions compared, and exact match is "
                "capped by it (exercise 2).\n"
            )
        )
        + f"* While naming an object the last decoder layer put {mean_own:.0%} of its attention on "
        f"that object's patches, against {mean_uniform:.0%} for an even spread."
    )
)

# %% [markdown]
# ## Exercises
#
# These exercises are also a graded assignment, `assignments/07_beyond_text.py`: a teacher builds
# it with `python3 tools/book.py assignments` (see the teacher's page, `teaching.md`). Exercises
# marked *(autograded)* are checked by tests; those marked *(open)* are graded by hand.
#
# 1. **The weights of cross-attention.** *(autograded)* For one query, the cross-attention weights
#    form a distribution over the $S$ memory positions. Show that hiding a padded position (a score of
#    $-\infty$) gives the same output as deleting that position from the memory. *Check:* the cell below
#    compares `CrossAttention` with a padded memory and with the memory cut short.
# 2. **Teach the relation.** *(open)* Train the captioner for longer, or with patches of 4 × 4 pixels
#    (64 patches), and watch the relation accuracy. Does the one-vector baseline ever catch up on the
#    shape words? *Check:* `shapes.caption_scores` on the test pictures; compare with chance, 1/4.
# 3. **Which layer looks?** *(autograded)* Repeat the measurement of section "Where the decoder looks"
#    for the first decoder layer and for each head separately. *Check:* the per-layer values from
#    `captioner.cross_attention_maps`; which heads look at the named object most?
# 4. **Post-norm or pre-norm.** *(autograded)* Build `DecoderBlock(..., norm_first=False)` layers into
#    a captioner and train it with the same settings. Which trains more stably at a high learning rate?
#    *Check:* the trainer's loss history.
# 5. **How many captions?** *(autograded)* Count the captions of the grammar by hand: two distinct
#    colours out of 5, two shapes out of 4 (repeats allowed), 4 relations. *Check:*
#    `len(shapes.all_captions())`.

# %%
# NBVAL_CHECK_OUTPUT
# 1. Hiding a padded position = deleting it.
short = ours(x[1:], memory[1:, :4])  # the second example's 4 real memory positions only
padded = ours(x[1:], memory[1:], keep[1:])
torch.testing.assert_close(padded, short)
print("1. a padded memory gives the same output as the shortened memory")
# 5. The grammar's size.
assert len(shapes.all_captions()) == (5 * 4) * (4 * 4) * 4
print(
    f"5. {len(shapes.all_captions()):,} captions = 5 x 4 colour pairs x 4 x 4 shape "
    "pairs x 4 relations"
)

# %% [markdown]
# ## Key terms
#
# | English | 中文 |
# |---|---|
# | {term}`cross-attention` | 交叉注意力 |
# | {term}`memory (encoder output)` | 记忆（编码器输出） |
# | {term}`encoder–decoder` | 编码器–解码器 |
# | {term}`decoder layer (self-attention, cross-attention, feed-forward) <decoder layer>` | 解码器层（自注意力、交叉注意力、前馈网络） |
# | {term}`pre-norm, post-norm <pre-LN / post-LN>` | 前置归一化，后置归一化 |
# | {term}`image captioning` | 图像描述生成 |
# | {term}`patch embedding` | 图块嵌入 |
# | {term}`Vision Transformer (ViT)` | 视觉 Transformer |
# | {term}`attention map` | 注意力图 |
# | {term}`contrastive learning (CLIP)` | 对比学习（CLIP） |
# | {term}`diffusion model` | 扩散模型 |

# %% [markdown]
# ## References
#
# * {cite:t}`ch07-dosovitskiy2021vit` (ViT).
# * {cite:t}`ch07-radford2021clip` (CLIP).
# * {cite:t}`ch07-rombach2022ldm` (latent diffusion).
# * {cite:t}`ch07-vaswani2017attention`.
# * {cite:t}`ch07-vinyals2015showtell` (Show and Tell).
# * {cite:t}`ch07-xu2015showattend` (Show, Attend and Tell).
#
# ```{bibliography}
# :filter: docname in docnames
# :keyprefix: ch07-
# :labelprefix: 7.
# :style: unsrt
# ```

# %%
print(f"chapter run time: {time.perf_counter() - chapter_start:.0f} s")
