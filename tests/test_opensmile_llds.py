"""openSMILE LLD frames of the offline front end (model/opensmile_llds.py): ComParE 2016."""
from __future__ import annotations

import math

import pytest
import torch

from foalnet.model.audio_offline import OfflineAudioEncoder
from foalnet.model.opensmile_llds import COMPARE_LLD_SCALE, compare_llds

pytest.importorskip("opensmile")


def column(name: str) -> int:
    return [row[0] for row in COMPARE_LLD_SCALE].index(name)


def unscaled(values: torch.Tensor, name: str) -> torch.Tensor:
    """Undo the row's affine scale (not its log)."""
    _, _, offset, scale = COMPARE_LLD_SCALE[column(name)]
    return values[..., column(name)] * scale + offset


def test_compare_llds_on_the_frame_grid_row_by_row() -> None:
    t = torch.arange(16000) / 16000
    wave = torch.stack([0.3 * torch.sin(2 * math.pi * 200 * t), 0.3 * torch.sin(2 * math.pi * 200 * t)])
    wave[1, 8000:] = 0.5  # padding, beyond the row's valid samples: must not matter
    samples, frames = torch.tensor([16000, 8000]), torch.tensor([100, 50])
    out = compare_llds(wave, frames, 100, samples)
    assert out.shape == (2, 100, 65) and torch.isfinite(out).all()
    assert (out[1, 50:] == 0).all()
    alone = compare_llds(wave[1:, :8000], frames[1:], 50, samples[1:])
    torch.testing.assert_close(out[1:, :50], alone)  # a row depends on its valid samples only
    f0 = unscaled(out[0, 20:80], "F0final_sma")  # openSMILE's F0 in Hz (not logged)
    assert abs(float(f0.median()) - 200.0) < 5.0
    # RMS energy of a 0.3 sine is 0.3 / sqrt(2); the row is log10(x + 1e-4)
    rms = unscaled(out[0, 20:80], "pcm_RMSenergy_sma")
    assert abs(float(rms.median()) - math.log10(0.3 / math.sqrt(2) + 1e-4)) < 0.05


def test_too_short_rows_are_zero_not_an_error() -> None:
    assert (compare_llds(torch.zeros(1, 500), torch.tensor([4]), 4, torch.tensor([500])) == 0).all()


def test_compare_option_adds_65_channels_and_its_own_cache_key() -> None:
    plain = OfflineAudioEncoder(egemaps=True, use_mel=False, use_prosody=False)
    both = OfflineAudioEncoder(egemaps=True, compare=True, use_mel=False, use_prosody=False)
    only = OfflineAudioEncoder(compare=True, use_mel=False, use_prosody=False)
    assert only.front_end.num_features == 65 and both.front_end.num_features == 25 + 65
    assert "compare" not in plain.frontend_fingerprint()  # caches made before stay valid
    assert both.frontend_fingerprint()["compare"]["lld_scale"][0][0] == "F0final_sma"
    assert only.frontend_fingerprint() != both.frontend_fingerprint()
