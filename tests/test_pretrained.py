"""The paper preset's real encoders, when the user has them (hub ids with a cache, or local folders).

FOALNET_WAVLM: a wav2vec2-family checkpoint (e.g. microsoft/wavlm-large or a folder);
FOALNET_CLIP: a CLIP checkpoint (e.g. openai/clip-vit-large-patch14 or a folder).
Skipped otherwise: this machine has no hub access, so these never run in our CI.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

WAVLM = os.environ.get("FOALNET_WAVLM")
CLIP = os.environ.get("FOALNET_CLIP")


@pytest.mark.pretrained
@pytest.mark.skipif(not WAVLM, reason="set FOALNET_WAVLM to a wav2vec2-family checkpoint")
def test_paper_model_on_a_real_audio_encoder(tmp_path):
    from foalnet import FoalNet, FoalNetConfig

    torch.manual_seed(0)
    model = FoalNet(FoalNetConfig.paper(audio_encoder=WAVLM)).eval()
    hidden = model.audio_encoder.hidden_size
    assert model.audio_dim == hidden  # read from the encoder's config, not hard-coded
    B, S, T = 2, 16000, 30
    wave = torch.randn(B, S) * 0.1
    wave_mask = torch.ones(B, S, dtype=torch.bool)
    wave_mask[1, 8000:] = False
    video = torch.randn(B, T, 768)
    video_mask = torch.ones(B, T, dtype=torch.bool)
    with torch.no_grad():
        out = model(waveform=wave, waveform_mask=wave_mask, video=video, video_mask=video_mask,
                    labels=torch.tensor([0, 1]))
    assert out.logits.shape == (B, 4) and torch.isfinite(out.loss)
    frozen = [p for n, p in model.named_parameters() if "feature_extractor" in n]
    assert frozen and not any(p.requires_grad for p in frozen)  # CNN feature encoder frozen
    model.save_pretrained(tmp_path / "m")
    again = FoalNet.from_pretrained(tmp_path / "m").eval()  # no download: config saved beside
    with torch.no_grad():
        out2 = again(waveform=wave, waveform_mask=wave_mask, video=video, video_mask=video_mask)
    torch.testing.assert_close(out2.logits, out.logits)


@pytest.mark.pretrained
@pytest.mark.skipif(not CLIP, reason="set FOALNET_CLIP to a CLIP checkpoint")
def test_real_clip_gives_projected_embeddings():
    from foalnet.features.base import build_visual_encoder

    encoder = build_visual_encoder(CLIP, device="cpu")
    frames = np.random.default_rng(0).integers(0, 255, size=(3, 480, 360, 3), dtype=np.uint8)
    embeds = encoder.embed(frames)
    assert embeds.shape == (3, encoder.dim)
    assert np.isfinite(embeds).all()
    if "large-patch14" in CLIP:
        assert encoder.dim == 768  # spec §1.2
