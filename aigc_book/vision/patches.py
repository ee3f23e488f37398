"""An image as a sequence of patch vectors, and a Transformer encoder that turns it into a memory.

Introduced in chapter 7, section "An image encoder from patches". The Vision Transformer (ViT;
Dosovitskiy et al. 2021, arXiv:2010.11929, §3.1) cuts an image ``(channels, H, W)`` into
non-overlapping ``P x P`` patches, flattens each into a vector of ``channels * P * P`` numbers,
projects it linearly to the model width ``C`` and adds a learned position embedding per patch:

.. math:: z_0 = [x_p^1 E;\\, x_p^2 E;\\, \\dots;\\, x_p^N E] + E_{pos},\\quad N = HW / P^2

The projection is exactly a ``Conv2d`` with kernel = stride = ``P`` (tested), which is how most
code writes it. From there the patches are tokens: :class:`ImageEncoder` runs the book's
bidirectional :class:`~aigc_book.models.transformer.Transformer` (``causal=False``) on them
through its ``inputs_embeds`` seam, so no new block code is needed, and returns the memory
``(B, N, C)`` that a captioner's cross-attention reads. (ViT's extra ``[class]`` token is left out:
the decoder reads every patch.) :func:`patches_to_image_grid` turns a per-patch weight back into a
picture-sized map for drawing.
"""

from __future__ import annotations

import torch
from torch import nn

from aigc_book.checks import is_int
from aigc_book.layers.block import init_gpt2_weights
from aigc_book.layers.positions import Positions
from aigc_book.models.transformer import Transformer, TransformerConfig

__all__ = ["check_patch_size", "patchify", "PatchEmbedding", "ImageEncoder", "patches_to_image_grid"]


def check_patch_size(image_size: int, patch_size: int) -> int:
    """Raise ``ValueError`` unless ``patch_size`` divides ``image_size``; return patches per side."""
    for name, value in (("image_size", image_size), ("patch_size", patch_size)):
        if not is_int(value) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if image_size % patch_size != 0:
        raise ValueError(
            f"image_size={image_size} is not divisible by patch_size={patch_size}: the patches must tile "
            f"the image exactly (e.g. patch_size in {[p for p in range(1, image_size + 1) if image_size % p == 0]})"
        )
    return image_size // patch_size


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``(B, ch, H, W)`` -> ``(B, N, ch * P * P)``: patches in reading order (row by row), each
    flattened channel-first, the layout of a ``Conv2d`` weight ``(C, ch, P, P)``."""
    B, ch, H, W = images.shape
    h, w, P = H // patch_size, W // patch_size, patch_size
    x = images.reshape(B, ch, h, P, w, P)  # (B, ch, h, P, w, P)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (B, h, w, ch, P, P)
    return x.reshape(B, h * w, ch * P * P)  # (B, N, ch*P*P)


class PatchEmbedding(nn.Module):
    """Split, flatten, project, add positions (ViT, Dosovitskiy et al. 2021, arXiv:2010.11929, Eq. 1).

    ``forward(images (B, channels, image_size, image_size)) -> (B, n_patches, n_embd)``.
    ``proj`` is a ``Linear(channels * P * P, n_embd)``; ``wpe`` holds one learned vector per patch.

    Pixels are first standardised, ``(x - pixel_mean) / pixel_std``; the defaults map [0, 1] to
    [-1, 1], the preprocessing of the released ViT checkpoints (``image_mean = image_std = 0.5`` per
    channel in the ``preprocessor_config.json`` of ``google/vit-base-patch16-224``). On
    pictures that are mostly white background this matters: unscaled, every patch shares a large
    constant part, and in the book's captioning setup the shape words were learned far more slowly
    (shape accuracy 0.30 instead of 0.84 after the same 1,500 steps).
    """

    def __init__(self, image_size: int, patch_size: int, channels: int, n_embd: int, *,
                 pixel_mean: float = 0.5, pixel_std: float = 0.5):
        super().__init__()
        if not pixel_std > 0:
            raise ValueError(f"pixel_std must be > 0, got {pixel_std!r}")
        self.grid = check_patch_size(image_size, patch_size)  # patches per side
        for name, value in (("channels", channels), ("n_embd", n_embd)):
            if not is_int(value) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.image_size, self.patch_size, self.channels, self.n_embd = image_size, patch_size, channels, n_embd
        self.n_patches = self.grid * self.grid
        self.pixel_mean, self.pixel_std = float(pixel_mean), float(pixel_std)
        self.proj = nn.Linear(channels * patch_size * patch_size, n_embd)
        self.wpe = nn.Embedding(self.n_patches, n_embd)

    def check_images(self, images: torch.Tensor) -> None:
        """Raise ``TypeError``/``ValueError`` unless ``images`` is a float ``(B, channels, S, S)`` batch."""
        if not isinstance(images, torch.Tensor) or not images.is_floating_point():
            got = images.dtype if isinstance(images, torch.Tensor) else type(images).__name__
            raise TypeError(f"images must be a floating-point tensor, got {got}")
        want = (self.channels, self.image_size, self.image_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != want or images.size(0) == 0:
            raise ValueError(
                f"images must have shape (B, channels, H, W) = (B, {', '.join(map(str, want))}) with B >= 1, "
                f"got {tuple(images.shape)}"
            )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.check_images(images)
        pixels = (images - self.pixel_mean) / self.pixel_std  # [0, 1] -> [-1, 1]
        x = self.proj(patchify(pixels, self.patch_size))  # (B, N, C)
        return x + self.wpe.weight  # (N, C) broadcast over the batch


class ImageEncoder(nn.Module):
    """:class:`PatchEmbedding` followed by a bidirectional Transformer encoder (pre-LN, final LayerNorm).

    ``forward(images) -> memory (B, n_patches, n_embd)``. The stack is the book's
    :class:`~aigc_book.models.transformer.Transformer` with ``causal=False``, fed through
    ``inputs_embeds``: its token embedding is dropped (there are no token ids) and its position
    module is the identity (the patch embedding has added positions already).
    """

    def __init__(self, image_size: int, patch_size: int, channels: int = 3, n_embd: int = 64, n_head: int = 4,
                 n_layer: int = 2, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        self.patch_embed = PatchEmbedding(image_size, patch_size, channels, n_embd)
        config = TransformerConfig(vocab_size=1, block_size=self.patch_embed.n_patches, n_layer=n_layer,
                                   n_head=n_head, n_embd=n_embd, dropout=dropout, bias=bias, causal=False)
        self.transformer = Transformer(config, init_weights=False)
        self.transformer.wte = None  # patches come in as inputs_embeds; no token ids, no unused matrix
        self.transformer.wpe = Positions()  # identity: PatchEmbedding has added the positions
        init_gpt2_weights(self, n_layer)

    @property
    def n_patches(self) -> int:
        return self.patch_embed.n_patches

    def forward(self, images: torch.Tensor, *, output_attentions: bool = False):
        """``(B, channels, S, S)`` -> memory ``(B, n_patches, n_embd)``; with ``output_attentions`` also a
        tuple of the encoder's ``(B, n_head, N, N)`` self-attention weights, one per layer."""
        out = self.transformer(inputs_embeds=self.patch_embed(images), output_attentions=output_attentions)
        return (out.last_hidden_state, out.attentions) if output_attentions else out.last_hidden_state


def patches_to_image_grid(weights: torch.Tensor, image_size: int, patch_size: int) -> torch.Tensor:
    """Per-patch values ``(..., n_patches)`` (reading order) -> a pixel map ``(..., H, W)`` for drawing.

    Each patch's value is copied over its ``P x P`` pixels (no blur between patches), on the CPU in
    float32 and detached, ready for ``imshow``.
    """
    grid = check_patch_size(image_size, patch_size)
    w = torch.as_tensor(weights).detach().float().cpu()
    if w.dim() == 0 or w.size(-1) != grid * grid:
        raise ValueError(
            f"weights must end in n_patches = ({image_size}/{patch_size})^2 = {grid * grid} values, "
            f"got shape {tuple(w.shape)}"
        )
    w = w.reshape(*w.shape[:-1], grid, grid)  # (..., h, w)
    return w.repeat_interleave(patch_size, dim=-2).repeat_interleave(patch_size, dim=-1)  # (..., H, W)
