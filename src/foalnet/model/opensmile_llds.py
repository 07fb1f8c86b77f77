"""openSMILE low-level descriptors (eGeMAPSv02, ComParE 2016) as frames of the offline front end.

Both sets come on openSMILE's 10 ms grid, which is the DSP front end's (frame i starts at sample
160 i); ``lld_frames`` runs one extractor per row's valid samples and puts a fixed transform on
the values, so the channels share a common range before the ``tiny`` preset's speaker z-scoring
(features/speaker_norm.py).

eGeMAPSv02 (25 LLDs, ``EGEMAPS_LLD_SCALE`` rows (name, offset, scale)): a minimal, interpretable
voice description; ``(x - offset) / scale``, offset and scale the rounded mean and std over 28
clips of RAVDESS actors 1-3.

ComParE 2016 (65 LLDs, ``COMPARE_LLD_SCALE`` rows (name, log floor, offset, scale)): adds what
eGeMAPS leaves out (26 RASTA auditory bands, MFCC 1-14, spectral roll-off, entropy, variance,
skewness, kurtosis, sharpness, harmonicity, zero-crossing rate). Energies and bands, heavy-tailed
and positive, are first ``log10(x + floor)``; then ``(x - offset) / scale``, offset and scale the
mean and standard deviation (2 significant digits) over the 31,263 frames of the 84 four-class
clips of RAVDESS actors 1-3, resampled to 16 kHz.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

SAMPLE_RATE = 16000
MIN_SAMPLES = 1024  # shorter than openSMILE's 60 ms pitch window (+ margin): no frames

# eGeMAPSv02 low-level descriptors (openSMILE, 10 ms hop) and the fixed affine scale each gets:
# (x - offset) / scale, offset and scale = rounded mean and std over 28 clips of RAVDESS actors 1-3
EGEMAPS_LLD_SCALE = (
    ("Loudness_sma3", 0.25, 0.5), ("alphaRatio_sma3", -5.0, 9.0), ("hammarbergIndex_sma3", 12.0, 11.0),
    ("slope0-500_sma3", 0.07, 0.04), ("slope500-1500_sma3", 0.02, 0.03), ("spectralFlux_sma3", 0.1, 0.3),
    ("mfcc1_sma3", 10.0, 15.0), ("mfcc2_sma3", 0.0, 13.0), ("mfcc3_sma3", 4.0, 14.0), ("mfcc4_sma3", -4.0, 17.0),
    ("F0semitoneFrom27.5Hz_sma3nz", 11.0, 17.0), ("jitterLocal_sma3nz", 0.0, 0.02),
    ("shimmerLocaldB_sma3nz", 0.4, 0.8), ("HNRdBACF_sma3nz", 2.0, 4.0), ("logRelF0-H1-H2_sma3nz", 2.0, 6.0),
    ("logRelF0-H1-A3_sma3nz", 6.0, 10.0), ("F1frequency_sma3nz", 630.0, 350.0),
    ("F1bandwidth_sma3nz", 1070.0, 530.0), ("F1amplitudeLogRelF0_sma3nz", -137.0, 89.0),
    ("F2frequency_sma3nz", 1450.0, 670.0), ("F2bandwidth_sma3nz", 920.0, 490.0),
    ("F2amplitudeLogRelF0_sma3nz", -140.0, 85.0), ("F3frequency_sma3nz", 2270.0, 1020.0),
    ("F3bandwidth_sma3nz", 820.0, 450.0), ("F3amplitudeLogRelF0_sma3nz", -142.0, 82.0),
)

COMPARE_LLD_SCALE = (
    ("F0final_sma", None, 72.0, 110.0),
    ("voicingFinalUnclipped_sma", None, 0.34, 0.38),
    ("jitterLocal_sma", None, 0.0087, 0.027),
    ("jitterDDP_sma", None, 0.0065, 0.022),
    ("shimmerLocal_sma", None, 0.053, 0.11),
    ("logHNR_sma", None, -64.0, 50.0),
    ("audspec_lengthL1norm_sma", 0.001, -1.4, 0.92),
    ("audspecRasta_lengthL1norm_sma", 0.01, 0.046, 0.37),
    ("pcm_RMSenergy_sma", 0.0001, -2.9, 1.0),
    ("pcm_zcr_sma", None, 0.44, 0.37),
    ("audSpec_Rfilt_sma[0]", 0.001, -0.86, 0.34),
    ("audSpec_Rfilt_sma[1]", 0.001, -0.54, 0.39),
    ("audSpec_Rfilt_sma[2]", 0.001, -0.36, 0.42),
    ("audSpec_Rfilt_sma[3]", 0.001, -0.24, 0.43),
    ("audSpec_Rfilt_sma[4]", 0.001, -0.15, 0.45),
    ("audSpec_Rfilt_sma[5]", 0.001, -0.095, 0.47),
    ("audSpec_Rfilt_sma[6]", 0.001, -0.053, 0.46),
    ("audSpec_Rfilt_sma[7]", 0.001, -0.019, 0.44),
    ("audSpec_Rfilt_sma[8]", 0.001, 0.0093, 0.43),
    ("audSpec_Rfilt_sma[9]", 0.001, 0.036, 0.43),
    ("audSpec_Rfilt_sma[10]", 0.001, 0.06, 0.43),
    ("audSpec_Rfilt_sma[11]", 0.001, 0.082, 0.42),
    ("audSpec_Rfilt_sma[12]", 0.001, 0.1, 0.41),
    ("audSpec_Rfilt_sma[13]", 0.001, 0.12, 0.39),
    ("audSpec_Rfilt_sma[14]", 0.001, 0.14, 0.38),
    ("audSpec_Rfilt_sma[15]", 0.001, 0.16, 0.39),
    ("audSpec_Rfilt_sma[16]", 0.001, 0.17, 0.38),
    ("audSpec_Rfilt_sma[17]", 0.001, 0.18, 0.39),
    ("audSpec_Rfilt_sma[18]", 0.001, 0.18, 0.39),
    ("audSpec_Rfilt_sma[19]", 0.001, 0.17, 0.37),
    ("audSpec_Rfilt_sma[20]", 0.001, 0.15, 0.36),
    ("audSpec_Rfilt_sma[21]", 0.001, 0.11, 0.36),
    ("audSpec_Rfilt_sma[22]", 0.001, 0.046, 0.36),
    ("audSpec_Rfilt_sma[23]", 0.001, -0.03, 0.35),
    ("audSpec_Rfilt_sma[24]", 0.001, -0.12, 0.33),
    ("audSpec_Rfilt_sma[25]", 0.001, -0.21, 0.32),
    ("pcm_fftMag_fband250-650_sma", 0.0001, -3.1, 1.2),
    ("pcm_fftMag_fband1000-4000_sma", 0.0001, -3.3, 1.1),
    ("pcm_fftMag_spectralRollOff25.0_sma", None, 640.0, 930.0),
    ("pcm_fftMag_spectralRollOff50.0_sma", None, 1100.0, 1300.0),
    ("pcm_fftMag_spectralRollOff75.0_sma", None, 1700.0, 1700.0),
    ("pcm_fftMag_spectralRollOff90.0_sma", None, 2500.0, 2200.0),
    ("pcm_fftMag_spectralFlux_sma", 0.001, -2.0, 0.92),
    ("pcm_fftMag_spectralCentroid_sma", None, 1300.0, 1200.0),
    ("pcm_fftMag_spectralEntropy_sma", None, 11.0, 20.0),
    ("pcm_fftMag_spectralVariance_sma", None, 1600000.0, 1800000.0),
    ("pcm_fftMag_spectralSkewness_sma", None, 3.0, 4.9),
    ("pcm_fftMag_spectralKurtosis_sma", 1.0, 1.0, 0.7),
    ("pcm_fftMag_spectralSlope_sma", None, -0.025, 0.14),
    ("pcm_fftMag_psySharpness_sma", None, 0.94, 0.81),
    ("pcm_fftMag_spectralHarmonicity_sma", 0.001, -2.5, 0.8),
    ("mfcc_sma[1]", None, 10.0, 16.0),
    ("mfcc_sma[2]", None, -0.34, 13.0),
    ("mfcc_sma[3]", None, 4.0, 14.0),
    ("mfcc_sma[4]", None, -3.7, 17.0),
    ("mfcc_sma[5]", None, -3.9, 14.0),
    ("mfcc_sma[6]", None, -11.0, 17.0),
    ("mfcc_sma[7]", None, -6.6, 14.0),
    ("mfcc_sma[8]", None, -6.0, 15.0),
    ("mfcc_sma[9]", None, 0.91, 14.0),
    ("mfcc_sma[10]", None, -3.7, 12.0),
    ("mfcc_sma[11]", None, -2.5, 14.0),
    ("mfcc_sma[12]", None, -3.4, 11.0),
    ("mfcc_sma[13]", None, -2.9, 10.0),
    ("mfcc_sma[14]", None, -1.2, 9.2),
)


def lld_frames(feature_set: str, names: list[str], wave: torch.Tensor, frames: torch.Tensor, L: int,
               samples: torch.Tensor, transform: Callable[[np.ndarray], np.ndarray]) -> torch.Tensor:
    """openSMILE ``feature_set`` LLDs of each row's valid samples on the 10 ms grid, transformed:
    (B, L, len(names)). wave (B, S) at 16 kHz, frames (B,) valid grid frames, samples (B,) valid
    samples. Grid frames openSMILE does not produce (its last windows), padded frames and rows
    shorter than ``MIN_SAMPLES`` are 0. RuntimeError when the set's LLD names differ from ``names``
    (another openSMILE release: the fixed scales would not fit)."""
    from foalnet.features.egemaps import smile

    extractor = smile(feature_set, "LowLevelDescriptors")
    if list(extractor.feature_names) != names:
        raise RuntimeError(f"openSMILE {feature_set} LLD names differ from the fixed scales' table: "
                           f"{list(extractor.feature_names)}")
    out = torch.zeros(wave.shape[0], L, len(names))
    for b in range(wave.shape[0]):
        signal = wave[b, : int(samples[b])].detach().cpu().numpy().astype(np.float32)
        if len(signal) < MIN_SAMPLES:
            continue
        values = extractor.process_signal(signal, SAMPLE_RATE).to_numpy(dtype=np.float32, copy=True)  # (T, D)
        n = min(len(values), int(frames[b]), L)
        out[b, :n] = torch.from_numpy(transform(values[:n]))
    return out.to(wave.device)


def egemaps_llds(wave: torch.Tensor, frames: torch.Tensor, L: int, samples: torch.Tensor) -> torch.Tensor:
    """eGeMAPSv02 LLDs on the grid, ``(x - offset) / scale``: (B, L, 25) (see ``lld_frames``)."""
    offset = np.array([o for _, o, _ in EGEMAPS_LLD_SCALE], dtype=np.float32)
    scale = np.array([s for _, _, s in EGEMAPS_LLD_SCALE], dtype=np.float32)
    return lld_frames("eGeMAPSv02", [name for name, _, _ in EGEMAPS_LLD_SCALE], wave, frames, L, samples,
                      lambda values: (values - offset) / scale)


def compare_llds(wave: torch.Tensor, frames: torch.Tensor, L: int, samples: torch.Tensor) -> torch.Tensor:
    """ComParE 2016 LLDs on the grid, logged where the row has a floor, then affine: (B, L, 65)."""
    logged = np.array([floor is not None for _, floor, _, _ in COMPARE_LLD_SCALE])
    floor = np.array([f for _, f, _, _ in COMPARE_LLD_SCALE if f is not None], dtype=np.float32)
    offset = np.array([o for _, _, o, _ in COMPARE_LLD_SCALE], dtype=np.float32)
    scale = np.array([s for _, _, _, s in COMPARE_LLD_SCALE], dtype=np.float32)

    def transform(values: np.ndarray) -> np.ndarray:
        values[:, logged] = np.log10(np.maximum(values[:, logged], 0.0) + floor)
        return (values - offset) / scale

    return lld_frames("ComParE_2016", [row[0] for row in COMPARE_LLD_SCALE], wave, frames, L, samples, transform)
