"""Convert our :class:`~aigc_book.models.gpt.GPT` to and from Hugging Face's ``GPT2LMHeadModel``.

Introduced in chapter 2, section "Proven equal: our GPT and Hugging Face's GPT-2". Nothing is
downloaded: the Hugging Face model is built from a ``GPT2Config`` with random weights, and the point
is that after conversion both libraries compute the same logits.

Only a GPT-2-shaped config converts: learned positions, pre-LN blocks, biases, tied embeddings.
Hugging Face stores the four projection matrices of a block as ``Conv1D`` weights of shape
``(in, out)``; our ``nn.Linear`` stores ``(out, in)``, so those are transposed. Every other tensor
has the same name and shape in both.

``transformers`` is imported inside the functions: importing it takes seconds.
"""

from __future__ import annotations

import torch

from aigc_book.models.gpt import GPT
from aigc_book.models.transformer import TransformerConfig

__all__ = ["to_hf_config", "from_hf_config", "to_hf_gpt2", "from_hf_gpt2"]

_TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def _check_convertible(config: TransformerConfig) -> None:
    problems = []
    if config.pos_encoding != "learned":
        problems.append(f"pos_encoding={config.pos_encoding!r} (GPT-2 uses 'learned')")
    if not config.norm_first:
        problems.append("norm_first=False (GPT-2 is pre-LN)")
    if not config.bias:
        problems.append("bias=False (GPT-2 has biases)")
    if not config.tie_weights:
        problems.append("tie_weights=False (GPT-2 ties the output to the token embedding)")
    if problems:
        raise ValueError("this TransformerConfig has no GPT-2 counterpart: " + "; ".join(problems))


def to_hf_config(config: TransformerConfig):
    """The ``transformers.GPT2Config`` with the same shape as ``config``."""
    from transformers import GPT2Config

    _check_convertible(config)
    return GPT2Config(
        vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.n_embd,
        n_layer=config.n_layer, n_head=config.n_head, n_inner=None, activation_function="gelu_new",
        resid_pdrop=config.dropout, embd_pdrop=config.dropout, attn_pdrop=config.dropout,
        layer_norm_epsilon=1e-5, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )


def from_hf_config(hf_config) -> TransformerConfig:
    """The :class:`TransformerConfig` with the shape of a ``transformers.GPT2Config``."""
    if hf_config.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"only tanh-approximated GELU converts, got {hf_config.activation_function!r}")
    if hf_config.n_inner not in (None, 4 * hf_config.n_embd):
        raise ValueError(f"only n_inner = 4 * n_embd converts, got n_inner={hf_config.n_inner}")
    if abs(hf_config.layer_norm_epsilon - 1e-5) > 1e-12:
        raise ValueError(f"only layer_norm_epsilon=1e-5 converts, got {hf_config.layer_norm_epsilon}")
    if getattr(hf_config, "scale_attn_by_inverse_layer_idx", False) or not getattr(
        hf_config, "scale_attn_weights", True
    ):
        raise ValueError("only the standard 1/sqrt(d_k) attention scaling converts")
    return TransformerConfig(
        vocab_size=hf_config.vocab_size,
        block_size=hf_config.n_positions,
        n_layer=hf_config.n_layer,
        n_head=hf_config.n_head,
        n_embd=hf_config.n_embd,
        dropout=hf_config.resid_pdrop,
        bias=True,
        pos_encoding="learned",
        norm_first=True,
        tie_weights=True,
    )


def _convert_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Transpose the Conv1D/Linear matrices; the mapping is its own inverse."""
    return {k: (v.t().contiguous() if k.endswith(_TRANSPOSED) else v.clone()) for k, v in state.items()}


def to_hf_gpt2(model: GPT):
    """A ``transformers.GPT2LMHeadModel`` holding ``model``'s weights (same dtype, same device)."""
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel(to_hf_config(model.config))
    ref = model.transformer.wte.weight
    hf.to(device=ref.device, dtype=ref.dtype)
    state = _convert_state_dict(model.state_dict())
    missing, unexpected = hf.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith((".attn.bias", ".attn.masked_bias"))]
    if missing or unexpected:
        raise RuntimeError(f"weight names do not match: missing {missing}, unexpected {unexpected}")
    hf.eval() if not model.training else hf.train()
    return hf


def from_hf_gpt2(hf_model) -> GPT:
    """Our :class:`GPT` holding the weights of a ``transformers.GPT2LMHeadModel``."""
    model = GPT(from_hf_config(hf_model.config))
    ref = hf_model.transformer.wte.weight
    model.to(device=ref.device, dtype=ref.dtype)
    state = {k: v for k, v in hf_model.state_dict().items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    model.load_state_dict(_convert_state_dict(state), strict=True)
    model.train(hf_model.training)
    return model
