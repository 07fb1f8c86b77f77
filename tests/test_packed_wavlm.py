"""The packed WavLM encoder computes what transformers computes.

``foalnet.model.wavlm_packed`` re-runs WavLM's encoder layers on valid frames only, with SDPA and
the encoder's own modules. These tests pin, on the same weights: transformers' encoder == the
packed one on valid frames, for both layer-norm variants and WavLM-Large's positional kernel, in
eval and in training (dropout off), outputs and parameter gradients; padding invariance;
activation checkpointing; the attention recompute (same function, no T x T tensor kept); a loud failure on an encoder whose internals differ; and which models
take the path.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from foalnet.model.audio import HFAudioEncoder
from foalnet.model.foalnet import FoalNet, FoalNetConfig
from foalnet.model.packing import Packing, length_groups
from foalnet.model.wavlm_packed import check_wavlm_internals, packed_encoder_forward, supports_packed


# ------------------------------------------------------------------------------ packed encoder
def _wavlm(stable: bool, kernel: int, dropout: float = 0.0):
    """16 channels per positional-convolution group: oneDNN's AMX bfloat16 convolution returns
    wrong values for narrower groups (see TINY_WAVLM in test_model.py)."""
    from transformers import WavLMConfig, WavLMModel

    torch.manual_seed(0)
    config = WavLMConfig(
        hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=96,
        conv_dim=[32, 32], conv_stride=[5, 4], conv_kernel=[10, 8], feat_extract_norm="layer",
        do_stable_layer_norm=stable, num_conv_pos_embeddings=kernel, num_conv_pos_embedding_groups=4,
        num_buckets=32, max_bucket_distance=64, layerdrop=0.0, mask_time_prob=0.0,
        hidden_dropout=dropout, attention_dropout=dropout, activation_dropout=dropout, feat_proj_dropout=dropout,
    )
    return WavLMModel(config)


def _hidden_and_mask(lengths: list[int], seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    T = max(lengths)
    hidden = torch.randn(len(lengths), T, 64, generator=gen)
    mask = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]
    return hidden, mask


VARIANTS = {"large-128": (True, 128), "large-16": (True, 16), "base-128": (False, 128), "base-16": (False, 16)}
LENGTHS = [40, 7, 33, 1]


def test_length_groups_partition_the_items_and_their_frames():
    lengths = [5, 12, 1, 9, 12, 3, 7]
    _, mask = _hidden_and_mask(lengths)
    grouping = length_groups(mask, 3)
    groups, restore = grouping.groups, grouping.restore
    # sorted by length, longest first, cut into runs of 3, 2 and 2 items
    assert [g.packing.length for g in groups] == [12, 7, 3] and [g.packing.batch for g in groups] == [3, 2, 2]
    assert [g.items.tolist() for g in groups] == [[1, 4, 3], [6, 0], [5, 2]]  # stable among equal lengths
    rows = torch.cat([g.rows for g in groups])
    assert sorted(rows.tolist()) == list(range(sum(lengths)))  # every valid frame once
    for g in groups:
        assert g.rows.numel() == int(g.packing.mask.sum())
        assert torch.equal(g.packing.mask, mask[g.items, : g.packing.length])  # the group's own rows
        assert torch.equal(g.key_bias[:, 0, 0] == 0, g.packing.mask)  # -inf on the group's padding
    assert torch.equal(rows[restore], torch.arange(sum(lengths)))  # the permutation back to packed order
    assert len(length_groups(mask, 20).groups) == len(lengths)  # never more groups than items


def test_attention_in_length_groups_equals_one_padded_block_values_and_gradients():
    model = _wavlm(True, 128).eval()
    hidden, mask = _hidden_and_mask([40, 7, 33, 1, 25, 40, 12, 3, 18])

    def run(groups: int):
        model.zero_grad()
        h = hidden.clone().requires_grad_(True)
        out = packed_encoder_forward(model.encoder, h, mask, attention_groups=groups)
        out[mask].square().sum().backward()
        return out[mask], h.grad[mask], model.encoder.layers[0].attention.rel_attn_embed.weight.grad.clone()

    one_block = run(1)
    for groups in (3, 4, 9):
        for got, expected in zip(run(groups), one_block):
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_packed_encoder_equals_transformers_on_valid_frames_eval(variant):
    model = _wavlm(*VARIANTS[variant]).eval()
    hidden, mask = _hidden_and_mask(LENGTHS)
    with torch.no_grad():
        reference = model.encoder(hidden.clone(), attention_mask=mask)[0]
        packed = packed_encoder_forward(model.encoder, hidden, mask)
    torch.testing.assert_close(packed[mask], reference[mask], rtol=1e-5, atol=1e-5)
    assert packed[~mask].abs().max() == 0  # padding is zero (transformers leaves values there)


@pytest.mark.parametrize("variant", ["large-128", "base-16"])
def test_packed_encoder_training_gradients_equal_transformers(variant):
    """Training mode (dropout probabilities 0): same outputs and same gradient for every parameter
    and for the input, under a loss that reads valid frames only (as FoalNet's pooling does)."""
    model = _wavlm(*VARIANTS[variant]).train()
    hidden, mask = _hidden_and_mask(LENGTHS, seed=1)
    target = torch.randn(hidden.shape)

    def grads(run):
        model.zero_grad()
        x = hidden.clone().requires_grad_()
        out = run(x)
        ((out * target)[mask] ** 2).sum().backward()
        return out.detach(), x.grad, {n: p.grad.clone() for n, p in model.encoder.named_parameters() if p.grad is not None}

    ref_out, ref_dx, ref_grads = grads(lambda x: model.encoder(x * 1.0, attention_mask=mask)[0])
    out, dx, packed_grads = grads(lambda x: packed_encoder_forward(model.encoder, x, mask))
    torch.testing.assert_close(out[mask], ref_out[mask], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dx, ref_dx, rtol=1e-4, atol=1e-5)
    assert set(packed_grads) == set(ref_grads)
    for name, grad in ref_grads.items():
        # float32 rounding grows with a gradient's scale: the positional convolution's weight
        # gradient (entries up to ~60 here) is a sum over every frame and frequency
        atol = max(1e-5, 1e-6 * grad.abs().max().item())
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-4, atol=atol, msg=name)


def test_packed_encoder_runs_under_bf16_autocast_like_transformers():
    model = _wavlm(True, 128).eval()
    hidden, mask = _hidden_and_mask(LENGTHS)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        reference = model.encoder(hidden.clone(), attention_mask=mask)[0].float()
        packed = packed_encoder_forward(model.encoder, hidden, mask).float()
    assert torch.isfinite(packed).all()
    torch.testing.assert_close(packed[mask], reference[mask], rtol=0.05, atol=0.05)  # bf16: ~3 digits


def test_packed_encoder_trains_under_bf16_autocast_like_transformers():
    """Every gradient has its parameter's dtype and matches transformers' own forward under the
    same autocast."""
    model = _wavlm(True, 128).train()  # dropout off: the same function on both paths
    hidden, mask = _hidden_and_mask(LENGTHS)

    def grads(packed: bool) -> torch.Tensor:
        model.zero_grad()
        torch.manual_seed(0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if packed:
                out = packed_encoder_forward(model.encoder, hidden, mask)
            else:
                out = model.encoder(hidden.clone(), attention_mask=mask)[0]
            loss = out.float()[mask].pow(2).mean()
        loss.backward()
        assert all(p.grad.dtype == p.dtype for p in model.parameters() if p.grad is not None)
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    reference, packed = grads(False), grads(True)
    assert torch.isfinite(packed).all()
    cosine = torch.nn.functional.cosine_similarity(packed, reference, dim=0).item()
    assert cosine > 0.9999  # bf16 rounding apart, the same gradients
    assert packed.norm() == pytest.approx(reference.norm().item(), rel=1e-3)


def test_an_encoder_without_wavlm_internals_fails_loudly_naming_the_part():
    model = _wavlm(True, 16)
    check_wavlm_internals(model.encoder)  # transformers' own WavLM passes
    del model.encoder.layers[0].attention.gru_rel_pos_linear
    hidden, mask = _hidden_and_mask(LENGTHS)
    with pytest.raises(RuntimeError, match="missing: attention.gru_rel_pos_linear.*audio_packed_encoder: false"):
        packed_encoder_forward(model.encoder, hidden, mask)


def test_packed_encoder_output_does_not_depend_on_padding():
    model = _wavlm(True, 128).eval()
    hidden, mask = _hidden_and_mask(LENGTHS, seed=2)
    with torch.no_grad():
        batch = packed_encoder_forward(model.encoder, hidden, mask)
        for row, length in enumerate(LENGTHS):
            alone = packed_encoder_forward(model.encoder, hidden[row : row + 1, :length], mask[row : row + 1, :length])
            torch.testing.assert_close(batch[row, :length], alone[0], rtol=1e-5, atol=1e-5)


def test_activation_checkpointing_gives_the_same_gradients():
    encoder = HFAudioEncoder(_wavlm(True, 128, dropout=0.1))
    encoder.freeze_feature_encoder()
    encoder.train()
    features = torch.randn(3, 30, 32)
    mask = torch.arange(30)[None, :] < torch.tensor([30, 12, 5])[:, None]

    def grads():
        encoder.zero_grad()
        torch.manual_seed(7)  # same dropout draws; checkpointing replays them in the recompute
        hidden, frame_mask = encoder.encode_frontend(features, mask)
        hidden[frame_mask].pow(2).sum().backward()
        return {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None}

    plain = grads()
    encoder.gradient_checkpointing_enable()
    assert all(layer.gradient_checkpointing for layer in encoder.model.encoder.layers)
    checkpointed = grads()
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-6, msg=name)


def _saved_shapes(fn) -> list[tuple[int, ...]]:
    """Shapes of the tensors autograd keeps for the backward pass while ``fn()`` runs."""
    shapes = []

    def pack(t):
        shapes.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return shapes


def test_attention_recompute_gives_the_same_outputs_and_gradients_and_keeps_no_probabilities():
    """Training with dropout: recomputing the attention core in the backward pass replays the same
    dropout mask, so outputs and every gradient are those of the plain path; and no [b, heads,
    T, T] tensor (bias, probabilities, mask) is kept for backward, which is the point of it."""
    encoder = HFAudioEncoder(_wavlm(True, 128, dropout=0.1))
    encoder.freeze_feature_encoder()
    encoder.train()
    features = torch.randn(3, 30, 32)
    mask = torch.arange(30)[None, :] < torch.tensor([30, 12, 5])[:, None]
    runs = {}
    for recompute in (False, True):
        encoder.use_packed_encoder(True, recompute_attention=recompute)
        encoder.zero_grad()
        torch.manual_seed(7)
        out = {}

        def step():
            hidden, frame_mask = encoder.encode_frontend(features, mask)
            out["loss"] = hidden[frame_mask].pow(2).sum()

        shapes = _saved_shapes(step)
        out["loss"].backward()
        square = [s for s in shapes if len(s) == 4 and s[-1] == s[-2] and s[1] == 4]  # (b, 4 heads, T, T)
        runs[recompute] = (out["loss"].detach(), square,
                           {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None})
    (loss_plain, square_plain, grads_plain), (loss_re, square_re, grads_re) = runs[False], runs[True]
    assert square_plain and not square_re
    torch.testing.assert_close(loss_re, loss_plain, rtol=1e-6, atol=0)
    assert grads_re.keys() == grads_plain.keys() and len(grads_plain) > 10
    for name, grad in grads_plain.items():
        torch.testing.assert_close(grads_re[name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_packing_round_trip():
    mask = torch.tensor([[True, True, False], [True, False, False]])
    x = torch.arange(6.0).view(2, 3, 1)
    packing = Packing(mask)
    assert packing.pack(x).flatten().tolist() == [0.0, 1.0, 3.0]
    assert packing.unpack(packing.pack(x)).flatten().tolist() == [0.0, 1.0, 0.0, 3.0, 0.0, 0.0]
    full = Packing(torch.ones(2, 3, dtype=torch.bool))
    assert full.index is None and torch.equal(full.unpack(full.pack(x)), x)


def test_packing_mean_and_repeat():
    mask = torch.tensor([[True, True, False], [False, False, False], [True, False, False]])
    x = torch.tensor([[1.0, 3.0, 99.0], [99.0, 99.0, 99.0], [5.0, 99.0, 99.0]]).unsqueeze(-1)
    packing = Packing(mask)
    assert packing.mean(packing.pack(x)).flatten().tolist() == [2.0, 0.0, 5.0]  # empty row: 0
    twice = packing.repeat(2)
    assert torch.equal(twice.mask, mask.repeat(2, 1))
    assert torch.equal(twice.pack(x.repeat(2, 1, 1)), packing.pack(x).repeat(2, 1))
    full = Packing(torch.ones(2, 2, dtype=torch.bool))
    assert full.mean(torch.tensor([[1.0], [2.0], [3.0], [5.0]])).flatten().tolist() == [1.5, 4.0]


# ------------------------------------------------------------------------------ which models use it
def test_only_wavlm_takes_the_packed_path():
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    wav2vec2 = HFAudioEncoder(Wav2Vec2Model(Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        conv_dim=[16], conv_stride=[5], conv_kernel=[10], num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2)))
    assert not supports_packed(wav2vec2.model)
    wav2vec2.use_packed_encoder(True)
    assert not wav2vec2.packed
    wavlm = HFAudioEncoder(_wavlm(True, 16))
    assert supports_packed(wavlm.model) and wavlm.packed


def test_config_switch_selects_the_path_and_both_give_the_same_logits():
    torch.manual_seed(0)
    base = dataclasses.replace(FoalNetConfig.tiny(), audio_encoder="tiny-wavlm", audio_options={})
    packed = FoalNet(base).eval()
    plain = FoalNet(dataclasses.replace(base, audio_packed_encoder=False)).eval()
    plain.load_state_dict(packed.state_dict())
    assert packed.audio_encoder.packed and not plain.audio_encoder.packed
    gen = torch.Generator().manual_seed(3)
    wave = 0.1 * torch.randn(3, 16000, generator=gen)
    wave_mask = torch.arange(16000)[None, :] < torch.tensor([16000, 9000, 4000])[:, None]
    video = torch.randn(3, 6, packed.video_dim, generator=gen)
    video_mask = torch.ones(3, 6, dtype=torch.bool)
    with torch.no_grad():
        a = packed(waveform=wave * wave_mask, waveform_mask=wave_mask, video=video, video_mask=video_mask).logits
        b = plain(waveform=wave * wave_mask, waveform_mask=wave_mask, video=video, video_mask=video_mask).logits
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_packing_repeat_index_equals_the_repeated_masks():
    mask = torch.tensor([[True, True, False], [True, False, False], [False, False, False]])
    repeated = Packing(mask).repeat(3)
    assert repeated.index.tolist() == Packing(mask.repeat(3, 1)).index.tolist()
    assert repeated.index.tolist()[:3] == [0, 1, 3] and repeated.index.tolist()[3:6] == [9, 10, 12]


def test_move_rows_is_the_inverse_gather_with_the_same_gradient():
    torch.manual_seed(0)
    x = torch.randn(7, 3, requires_grad=True)
    positions = torch.tensor([3, 0, 6, 1, 5, 2, 4])
    weights = torch.randn(7, 3)
    from foalnet.model.packing import move_rows

    moved = move_rows(x, positions)
    assert torch.equal(moved[positions], x.detach()) and torch.equal(moved, x.detach()[torch.argsort(positions)])
    (moved * weights).sum().backward()
    assert torch.equal(x.grad, weights[positions])
