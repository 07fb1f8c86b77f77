"""WavLM's transformer encoder run on valid frames only: the same function, less work.

transformers' ``WavLMEncoder`` / ``WavLMEncoderStableLayerNorm`` compute every layer on the padded
batch. In a training batch of IEMOCAP-like lengths (1-8 s, cut at 6 s) about a third of the frames
are padding, and everything but attention's T x T product is per-frame work: layer norms, the
q/k/v/output projections, the feed-forward block, dropout. Here those run on the packed [N, H]
valid frames (``Packing``), with the encoder's own modules; attention unpacks q, k, v to
[B, heads, T, d] and runs torch's ``scaled_dot_product_attention`` with WavLM's gated relative
position bias and the key padding in one float ``attn_mask``, so each valid frame sees exactly the
keys it sees in transformers. The positional convolution is the encoder's own module, on each
length group's rows cut to the group's longest item (padding is zero there, as in transformers:
``positional_frames``; an FFT convolution on CPU, once worth 1.2-1.3x per step on the padded
batch, gave 1.06x on the cut blocks and was removed: docs/benchmarks.md). In training on CPU the attention core is recomputed in the backward pass
instead of keeping its T x T tensors (``attention``). Dropout is torch's ``native_dropout`` kernel
(``foalnet.model.dropout``: the kernel ``F.dropout`` runs on CUDA; on CPU it keeps a bool mask where
``F.dropout`` keeps a float one). Otherwise every device runs torch's and transformers' own code,
in whatever dtype autocast gives it.

Valid frames come out equal to transformers' (within float rounding; padded frames are zero here
and arbitrary there, and nothing downstream reads them), with the same modules and weights, so
checkpoints are unchanged. Training randomness (dropout, LayerDrop) has the same distribution but
is drawn in a different order. tests/test_packed_wavlm.py pins the equality for both layer norm
variants, in eval and in training with dropout off, outputs and gradients.

The gate of the position bias is WavLM's own arithmetic on attributes of ``WavLMAttention``
(``gru_rel_pos_linear``, ``gru_rel_pos_const``, ``compute_bias``), which transformers does not
promise to keep: ``check_wavlm_internals`` fails loudly, naming what is missing, when an encoder
does not have them, and pyproject.toml pins transformers to the tested range.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from foalnet.model.dropout import module_dropout
from foalnet.model.packing import Grouping, Packing, length_groups

# What the packed path reads of transformers' WavLM modules, by module.
ATTENTION_PARTS = ("q_proj", "k_proj", "v_proj", "out_proj", "gru_rel_pos_linear", "gru_rel_pos_const",
                   "compute_bias", "num_heads", "head_dim", "dropout")
LAYER_PARTS = ("attention", "layer_norm", "dropout", "feed_forward", "final_layer_norm")
FEED_FORWARD_PARTS = ("intermediate_dense", "intermediate_act_fn", "intermediate_dropout", "output_dense",
                      "output_dropout")
ENCODER_PARTS = ("pos_conv_embed", "layer_norm", "dropout", "layers", "config")
POS_CONV_PARTS = ("conv", "padding", "activation")
ATTENTION_GROUPS = 4  # length groups per batch for attention (packing.length_groups)


def supports_packed(model: nn.Module) -> bool:
    """A transformers WavLM model (its encoder layers are what this module re-runs)."""
    return getattr(getattr(model, "config", None), "model_type", None) == "wavlm" and hasattr(model, "encoder")


def check_wavlm_internals(encoder: nn.Module) -> None:
    """Raise RuntimeError unless ``encoder`` has every part of transformers' WavLM this module
    uses, with the gate projection's known shape: a transformers release whose WavLM differs must
    fail here, not compute something else."""
    missing = [f"encoder.{p}" for p in ENCODER_PARTS if not hasattr(encoder, p)]
    missing += [f"pos_conv_embed.{p}" for p in POS_CONV_PARTS
                if hasattr(encoder, "pos_conv_embed") and not hasattr(encoder.pos_conv_embed, p)]
    layers = getattr(encoder, "layers", [])
    if len(layers):
        layer = layers[0]
        missing += [f"layer.{p}" for p in LAYER_PARTS if not hasattr(layer, p)]
        missing += [f"feed_forward.{p}" for p in FEED_FORWARD_PARTS
                    if not hasattr(getattr(layer, "feed_forward", None), p)]
        attn = getattr(layer, "attention", None)
        missing += [f"attention.{p}" for p in ATTENTION_PARTS if not hasattr(attn, p)]
        gate = getattr(attn, "gru_rel_pos_linear", None)
        if gate is not None and getattr(gate, "out_features", None) != 8:
            missing.append("attention.gru_rel_pos_linear with 8 outputs")
        if not hasattr(getattr(attn, "rel_attn_embed", None), "weight"):
            missing.append("layers[0].attention.rel_attn_embed")
    if missing:
        import transformers

        raise RuntimeError(
            f"the packed WavLM encoder does not match transformers {transformers.__version__}'s WavLM "
            f"(missing: {', '.join(missing)}); set audio_packed_encoder: false to use transformers' own "
            "forward, or install the transformers range of pyproject.toml")


def position_gate(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """WavLM's per-query gate of the relative position bias, from each frame's own input:
    x [N, H] -> [N, heads, 1]."""
    heads, d = attn.num_heads, attn.head_dim
    proj = attn.gru_rel_pos_linear(x.reshape(-1, heads, d))  # (N, heads, 8)
    gate_a, gate_b = torch.sigmoid(proj.view(-1, heads, 2, 4).sum(-1)).chunk(2, dim=-1)  # (N, heads, 1) each
    return gate_a * (gate_b * attn.gru_rel_pos_const.view(1, heads, 1) - 1.0) + 2.0


def biased_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gate: torch.Tensor,
                     key_bias: torch.Tensor, position_bias: torch.Tensor, dropout_p: float) -> torch.Tensor:
    """SDPA of q, k, v [b, heads, T, d] with the gated position bias and the key padding as one
    float mask: gate [b, heads, T, 1], key_bias [b, 1, 1, T], position_bias [heads, T, T]."""
    dtype = q.dtype  # under autocast the projections' half precision: no float32 [b, heads, T, T] temporary
    bias = torch.addcmul(key_bias.to(dtype), gate.to(dtype), position_bias.to(dtype))  # padded queries: gate 0
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p)


def attention(attn: nn.Module, x: torch.Tensor, grouping: Grouping, position_bias: torch.Tensor,
              recompute: bool = False) -> torch.Tensor:
    """WavLMAttention on packed frames x [N, H] -> [N, H].

    position_bias [heads, T, T] (layer 0's relative-position buckets), gated per query frame as
    in WavLM; each length group attends within itself, its keys padded to its longest item.
    ``recompute``: keep only the inputs of :func:`biased_attention` for the backward pass and run
    it again there (``torch.utils.checkpoint``, the same dropout mask): SDPA with dropout and a
    mask that needs a gradient is torch's math path on CPU, which keeps the bias, the
    probabilities, the dropout mask and the dropped probabilities, four [b, heads, T, T] tensors
    per group (selective recomputation, Korthikanti et al. 2022). Measured on a cached 2-layer
    WavLM-Large-width step, batch 16, 2 CPU threads: about -0.2 GiB of peak memory for +0.3 s
    of 13 s (docs/benchmarks.md)."""
    heads, d = attn.num_heads, attn.head_dim
    # the groups' frames one group after another, moved once (a gather per group and tensor would
    # each scatter into an [N, H] tensor of zeros in the backward pass); per-frame maps commute with it
    grouped = grouping.to_group_order(x)
    sizes = grouping.sizes
    q, k, v = (proj(grouped).split(sizes) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
    gate = position_gate(attn, grouped).split(sizes)  # (N_g, heads, 1) each
    outputs = []
    for i, group in enumerate(grouping.groups):
        b, T = group.packing.batch, group.packing.length

        def heads_first(t: torch.Tensor) -> torch.Tensor:
            return group.packing.unpack(t[i]).view(b, T, heads, -1).transpose(1, 2)

        inputs = (heads_first(q), heads_first(k), heads_first(v), heads_first(gate), group.key_bias,
                  position_bias[:, :T, :T], attn.dropout if attn.training else 0.0)
        if recompute and torch.is_grad_enabled():
            out = checkpoint(biased_attention, *inputs, use_reentrant=False)
        else:
            out = biased_attention(*inputs)  # (b, heads, T, d)
        outputs.append(group.packing.pack(out.transpose(1, 2).reshape(b, T, heads * d)))
    return attn.out_proj(grouping.to_packed(outputs))


def feed_forward(ff: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """transformers' ``WavLMFeedForward`` with its dropouts by :func:`foalnet.model.dropout.dropout`."""
    h = module_dropout(ff.intermediate_dropout, ff.intermediate_act_fn(ff.intermediate_dense(x)))
    return module_dropout(ff.output_dropout, ff.output_dense(h))


def layer_forward(layer: nn.Module, x: torch.Tensor, grouping: Grouping, position_bias: torch.Tensor,
                  stable: bool, recompute_attention: bool = False) -> torch.Tensor:
    """One WavLM encoder layer on packed frames [N, H]: pre-LN (``stable``, WavLM-Large) or post-LN."""
    if stable:
        h = attention(layer.attention, layer.layer_norm(x), grouping, position_bias, recompute_attention)
        x = x + module_dropout(layer.dropout, h)
        return x + feed_forward(layer.feed_forward, layer.final_layer_norm(x))
    h = attention(layer.attention, x, grouping, position_bias, recompute_attention)
    x = layer.layer_norm(x + module_dropout(layer.dropout, h))
    return layer.final_layer_norm(x + feed_forward(layer.feed_forward, x))


def positional_frames(pos_conv: nn.Module, hidden: torch.Tensor, grouping: Grouping) -> torch.Tensor:
    """``hidden + pos_conv(hidden)`` at the valid frames, packed [N, H]: the convolution runs per
    length group on the group's rows cut to its longest item. Frames beyond an item are zero in
    the padded batch and in the cut block alike (the convolution's own padding), so valid frames
    are unchanged, and the convolution computes 1.1-1.4x the valid frames instead of 1.7x (the
    IEMOCAP-like batches of ``benchmarks/train_step.py``)."""
    outputs = []
    for group in grouping.groups:
        block = hidden.index_select(0, group.items)[:, : group.packing.length]
        outputs.append(group.packing.pack(block + pos_conv(block)))
    return grouping.to_packed(outputs)


def packed_encoder_forward(encoder: nn.Module, hidden: torch.Tensor, mask: torch.Tensor,
                           attention_groups: int = ATTENTION_GROUPS, recompute_attention: bool = False) -> torch.Tensor:
    """``encoder(hidden, attention_mask=mask).last_hidden_state`` on valid frames (padding zero).

    hidden [B, T, H] (projected CNN features after SpecAugment), mask [B, T] bool, every row with
    at least one valid frame. ``attention_groups``: length groups of ``packing.length_groups`` (1: one
    block padded to the batch's longest item, as transformers). ``recompute_attention``: see
    :func:`attention` (training only; the function is the same)."""
    check_wavlm_internals(encoder)
    stable = type(encoder).__name__.endswith("StableLayerNorm")
    hidden = hidden.masked_fill(~mask.unsqueeze(-1), 0.0)
    packing, grouping = Packing(mask), length_groups(mask, attention_groups)
    x = positional_frames(encoder.pos_conv_embed, hidden, grouping)  # (N, H)
    if not stable:
        x = encoder.layer_norm(x)
    x = module_dropout(encoder.dropout, x)
    T = hidden.shape[1]
    position_bias = encoder.layers[0].attention.compute_bias(T, T)  # (heads, T, T)
    layerdrop = encoder.config.layerdrop if encoder.training else 0.0
    recompute_attention = recompute_attention and encoder.training
    for i, layer in enumerate(encoder.layers):
        if i > 0 and layerdrop > 0.0 and torch.rand([]) < layerdrop:  # LayerDrop, as transformers
            continue
        if getattr(layer, "gradient_checkpointing", False) and layer.training and torch.is_grad_enabled():
            x = checkpoint(layer_forward, layer, x, grouping, position_bias, stable, use_reentrant=False)
        else:
            x = layer_forward(layer, x, grouping, position_bias, stable, recompute_attention)
    if stable:
        x = encoder.layer_norm(x)
    return packing.unpack(x)
