"""WavLM's transformer encoder run on valid frames only: the same function, less work.

transformers' ``WavLMEncoder`` / ``WavLMEncoderStableLayerNorm`` compute every layer on the padded
batch. In a training batch of IEMOCAP-like lengths (1-8 s, cut at 6 s) about a third of the frames
are padding, and everything but attention's T x T product is per-frame work: layer norms, the
q/k/v/output projections, the feed-forward block, dropout. Here those run on the packed [N, H]
valid frames; attention scatters q, k, v back to [B, heads, T, d] with the key-padding mask, so
each valid frame sees exactly the keys it sees in transformers. The positional convolution runs
on the padded batch (padding is zero there, as in transformers) by FFT (``fft_conv``). Attention,
the feed-forward's GELU and dropout are ``lean_ops``' (same functions, bool dropout masks, no
[T, T] map and no GELU output kept for backward).

Valid frames come out equal to transformers' (within float rounding; padded frames are zero
here and arbitrary there, and nothing downstream reads them), with the same modules and weights,
so checkpoints are unchanged. Training randomness (dropout, LayerDrop) has the same distribution
but is drawn in a different order. tests/test_packed_wavlm.py pins the equality for both layer
norm variants, in eval and in training with dropout off, outputs and gradients.

``supports_packed(model)`` says whether a transformers model can take this path (WavLM only).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from foalnet.model.fft_conv import conv1d_fft
from foalnet.model.lean_ops import dropout, gated_bias_attention, gelu_dropout_linear
from foalnet.model.packing import Packing

# The FFT pays off for long kernels (WavLM: 128); short ones (tiny test models) stay direct.
FFT_MIN_KERNEL = 32


def supports_packed(model: nn.Module) -> bool:
    """A transformers WavLM model (its encoder layers are what this module re-runs)."""
    return getattr(getattr(model, "config", None), "model_type", None) == "wavlm" and hasattr(model, "encoder")


def positional_embedding(pos_conv_embed: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """WavLMPositionalConvEmbedding.forward with the convolution by FFT for long kernels."""
    conv = pos_conv_embed.conv
    x = hidden.transpose(1, 2)
    if conv.kernel_size[0] >= FFT_MIN_KERNEL:
        x = conv1d_fft(x, conv.weight, conv.bias, padding=conv.padding[0], groups=conv.groups)
    else:
        x = conv(x)
    x = pos_conv_embed.padding(x)  # drops the last frame for even kernels
    return pos_conv_embed.activation(x).transpose(1, 2)


def attention(attn: nn.Module, x: torch.Tensor, packing: Packing, position_bias: torch.Tensor,
              key_mask: torch.Tensor) -> torch.Tensor:
    """WavLMAttention on packed frames x [N, H] -> [N, H].

    position_bias [heads, T, T] (layer 0's relative-position buckets), gated per query frame as
    in WavLM; key_mask [B, 1, 1, T] is 0 for valid keys and -inf for padding."""
    B, T, heads = packing.batch, packing.length, attn.num_heads
    d = attn.head_dim
    # gate of the relative position bias, from each query frame's own input
    proj = attn.gru_rel_pos_linear(x.reshape(-1, heads, d))  # [N, heads, 8]
    gate_a, gate_b = torch.sigmoid(proj.view(-1, heads, 2, 4).sum(-1)).chunk(2, dim=-1)  # [N, heads, 1] each
    gate = gate_a * (gate_b * attn.gru_rel_pos_const.view(1, heads, 1) - 1.0) + 2.0
    gate = packing.unpack(gate).permute(0, 2, 1, 3)  # [B, heads, T, 1]; padded queries: 0

    def heads_first(t: torch.Tensor) -> torch.Tensor:
        return packing.unpack(t).view(B, T, heads, d).transpose(1, 2)

    q, k, v = (heads_first(proj_(x)) for proj_ in (attn.q_proj, attn.k_proj, attn.v_proj))
    # softmax(q k^T / sqrt(d) + gate * position_bias + key_mask), without a [B, heads, T, T] map kept
    out = gated_bias_attention(q, k, v, gate, position_bias, key_mask, scale=1.0 / math.sqrt(d),
                               dropout_p=attn.dropout if attn.training else 0.0)
    out = packing.pack(out.transpose(1, 2).reshape(B, T, heads * d))
    return attn.out_proj(out)


def feed_forward(ff: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """WavLMFeedForward with dropout that keeps a bool mask; with exact GELU (WavLM's), the
    activation is recomputed in backward instead of kept."""
    h = ff.intermediate_dense(x)
    if is_exact_gelu(ff.intermediate_act_fn):
        h = gelu_dropout_linear(h, ff.output_dense.weight, ff.output_dense.bias, ff.intermediate_dropout.p, ff.training)
    else:
        h = ff.output_dense(dropout(ff.intermediate_act_fn(h), ff.intermediate_dropout.p, ff.training))
    return dropout(h, ff.output_dropout.p, ff.training)


def is_exact_gelu(act: nn.Module) -> bool:
    """transformers' ``GELUActivation`` on torch's erf GELU (``hidden_act="gelu"``), or nn.GELU()."""
    if isinstance(act, nn.GELU):
        return act.approximate == "none"
    return type(act).__name__ == "GELUActivation" and getattr(act, "act", None) is nn.functional.gelu


def layer_forward(layer: nn.Module, x: torch.Tensor, packing: Packing, position_bias: torch.Tensor,
                  key_mask: torch.Tensor, stable: bool) -> torch.Tensor:
    """One WavLM encoder layer on packed frames: pre-LN (``stable``, WavLM-Large) or post-LN."""
    if stable:
        h = attention(layer.attention, layer.layer_norm(x), packing, position_bias, key_mask)
        x = x + dropout(h, layer.dropout.p, layer.training)
        return x + feed_forward(layer.feed_forward, layer.final_layer_norm(x))
    h = attention(layer.attention, x, packing, position_bias, key_mask)
    x = layer.layer_norm(x + dropout(h, layer.dropout.p, layer.training))
    return layer.final_layer_norm(x + feed_forward(layer.feed_forward, x))


def packed_encoder_forward(encoder: nn.Module, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``encoder(hidden, attention_mask=mask).last_hidden_state`` on valid frames (padding zero).

    hidden [B, T, H] (projected CNN features after SpecAugment), mask [B, T] bool, every row with
    at least one valid frame."""
    stable = type(encoder).__name__.endswith("StableLayerNorm")
    hidden = hidden.masked_fill(~mask.unsqueeze(-1), 0.0)
    hidden = hidden + positional_embedding(encoder.pos_conv_embed, hidden)
    if not stable:
        hidden = encoder.layer_norm(hidden)
    packing = Packing(mask)
    x = dropout(packing.pack(hidden), encoder.dropout.p, encoder.training)
    T = hidden.shape[1]
    position_bias = encoder.layers[0].attention.compute_bias(T, T)  # [heads, T, T]
    key_mask = torch.zeros(mask.shape, dtype=hidden.dtype, device=hidden.device)
    key_mask = key_mask.masked_fill(~mask, float("-inf"))[:, None, None, :]
    layerdrop = encoder.config.layerdrop if encoder.training else 0.0
    for i, layer in enumerate(encoder.layers):
        if i > 0 and layerdrop > 0.0 and torch.rand([]) < layerdrop:  # LayerDrop, as transformers
            continue
        if getattr(layer, "gradient_checkpointing", False) and layer.training and torch.is_grad_enabled():
            x = checkpoint(layer_forward, layer, x, packing, position_bias, key_mask, stable, use_reentrant=False)
        else:
            x = layer_forward(layer, x, packing, position_bias, key_mask, stable)
    if stable:
        x = encoder.layer_norm(x)
    return packing.unpack(x)
