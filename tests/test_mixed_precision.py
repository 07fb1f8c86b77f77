"""Mixed precision without a GPU: the paper's model shape under CPU float16 and bfloat16 autocast.

torch runs both autocast dtypes on CPU with the same op lists as on CUDA (matmuls, convolutions
and SDPA in low precision; softmax, layer norm and losses in float32), and
``torch.amp.GradScaler("cpu")`` scales losses as on CUDA. The model is WavLM-Large's transformer
width (1024, 16 heads, 4096 feed-forward, 128-tap positional conv in 16 groups) with 2 layers,
CLIP ViT-L/14's video width (768) and the paper's fusion; random weights. The frozen 7-layer CNN
keeps its kernels and strides but has 64 channels instead of 512: CPU float16 convolutions run
torch's slow reference kernel, and the CNN trains nothing. Batches hold an item
with no audio frame and one with no video frame (spec §3), whose attention rows have only padded
keys: the case that used to give NaN under float16.
"""
from __future__ import annotations

import copy

import pytest
import torch

from foalnet.model import FoalNet, FoalNetConfig

WAVLM_LARGE_2_LAYERS = dict(
    hidden_size=1024, num_hidden_layers=2, num_attention_heads=16, intermediate_size=4096,
    do_stable_layer_norm=True, feat_extract_norm="layer", conv_dim=[64] * 7,
    conv_kernel=[10, 3, 3, 3, 3, 2, 2], conv_stride=[5, 2, 2, 2, 2, 2, 2],
    num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16, mask_time_prob=0.0, layerdrop=0.0,
)
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
# Measured spread of the low-precision logits around float32's on this model (|logit| ~ 0.1-1):
# float16 ~1e-3, bfloat16 ~1e-2 (7 mantissa bits); the bounds leave a factor of ~5.
LOGIT_ATOL = {"fp16": 0.01, "bf16": 0.05}


@pytest.fixture(scope="module")
def paper_shaped() -> dict[bool, FoalNet]:
    """The same weights with the packed encoder (True) and with transformers' own (False)."""
    models = {}
    for packed in (True, False):
        torch.manual_seed(0)
        config = FoalNetConfig(audio_encoder="tiny-wavlm", audio_options=WAVLM_LARGE_2_LAYERS,
                               video_dim=768, audio_packed_encoder=packed)
        models[packed] = FoalNet(config)
    models[False].load_state_dict(models[True].state_dict())
    return models


@pytest.fixture(scope="module")
def one_layer() -> dict[bool, FoalNet]:
    """For training steps: one encoder layer (CPU float16 GEMMs are slow: no fast kernel here)."""
    models = {}
    for packed in (True, False):
        torch.manual_seed(1)
        models[packed] = FoalNet(FoalNetConfig(
            audio_encoder="tiny-wavlm", video_dim=768, audio_packed_encoder=packed,
            audio_options={**WAVLM_LARGE_2_LAYERS, "num_hidden_layers": 1}))
    return models


def batch_with_empty_items(seed: int = 0, audio_samples: tuple[int, ...] = (8000, 0, 4800, 6400)) -> dict[str, torch.Tensor]:
    """4 items: 0.3-0.5 s of audio (default), 4-10 video frames; item 1 has no audio, item 2 no video."""
    gen = torch.Generator().manual_seed(seed)
    audio = torch.tensor(audio_samples)
    frames = torch.tensor([10, 6, 0, 4])
    waveform_mask = torch.arange(int(audio.max()))[None, :] < audio[:, None]
    video_mask = torch.arange(int(frames.max()))[None, :] < frames[:, None]
    return dict(waveform=torch.randn(4, int(audio.max()), generator=gen) * 0.1, waveform_mask=waveform_mask,
                video=torch.randn(4, int(frames.max()), 768, generator=gen), video_mask=video_mask,
                labels=torch.tensor([0, 1, 2, 3]))


def forward(model: FoalNet, batch: dict, dtype: torch.dtype | None, seed: int = 3, **kw):
    torch.manual_seed(seed)  # the same hard negatives in every run compared
    with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
        return model(**batch, **kw)


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "transformers"])
@pytest.mark.parametrize("name", list(DTYPES))
def test_eval_logits_and_losses_close_to_float32(paper_shaped, name, packed):
    model = paper_shaped[packed].eval()
    batch = batch_with_empty_items()
    with torch.no_grad():
        reference = forward(model, batch, None, compute_mem=True)
        low = forward(model, batch, DTYPES[name], compute_mem=True)
    assert torch.isfinite(low.logits).all()
    torch.testing.assert_close(low.logits.float(), reference.logits, atol=LOGIT_ATOL[name], rtol=0)
    for part, value in reference.losses.items():
        assert torch.isfinite(low.losses[part]), part
        assert low.losses[part].item() == pytest.approx(value.item(), abs=10 * LOGIT_ATOL[name]), part


@pytest.mark.slow  # CPU float16 GEMMs are slow (~20 s a case); CI runs it
@pytest.mark.parametrize("packed", [True, False], ids=["packed", "transformers"])
@pytest.mark.parametrize("name", list(DTYPES))
def test_training_steps_with_grad_scaler_change_weights_and_stay_finite(one_layer, name, packed):
    model = copy.deepcopy(one_layer[packed]).train()  # the steps change its weights
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    # a start scale that the first step's float16 gradients do not overflow (the default, 2^16,
    # skips the first steps until it has halved enough, as it does on a GPU)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, enabled=name == "fp16")
    for step in range(2):
        # 0.1-0.2 s of audio: CPU float16 GEMMs are slow, and the frame count changes no path taken
        out = forward(model, batch_with_empty_items(seed=step, audio_samples=(3200, 0, 1600, 2400)),
                      DTYPES[name], seed=step)
        assert torch.isfinite(out.loss), (step, {k: v.item() for k, v in out.losses.items()})
        optimizer.zero_grad()
        scaler.scale(out.loss).backward()
        scaler.step(optimizer)
        scaler.update()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    # every trainable part moved: the encoder's layers, both fusion stacks, the heads
    for part in ("audio_encoder.model.encoder.layers.0.", "a2v.", "v2a.", "a2v_head.", "classifier."):
        assert any(n.startswith(part) for n in changed), part
    if name == "fp16":
        assert scaler.get_scale() >= 2.0**8  # no step was skipped as overflowing


def test_low_precision_fusion_keeps_rows_with_only_padded_keys_finite():
    """An audio query whose video has no frame attends to nothing: its attention output is zero
    and the layer's output finite, in float16 and bfloat16, eval and training."""
    torch.manual_seed(0)
    config = FoalNetConfig(audio_encoder="tiny-wavlm", video_dim=768)
    model = FoalNet(config)
    batch = batch_with_empty_items()
    for dtype in DTYPES.values():
        for mode in (model.eval, model.train):
            mode()
            out = forward(model, batch, dtype)
            assert torch.isfinite(out.logits).all() and torch.isfinite(out.loss)
            assert torch.isfinite(out.audio_embeds).all() and torch.isfinite(out.video_embeds).all()
