"""Offline audio encoder for the ``tiny`` preset: fixed DSP front end + small trainable conv stack.

Design (chosen by measurement, see below):

* Front end: fixed signal processing in torch, no download, no parameters (buffers only):
  40 log-mel bands (25 ms Hann window, 10 ms hop) plus eight prosodic low-level descriptors that
  carry arousal in real and synthetic voices -- F0 in semitones (normalised autocorrelation with
  window correction, Boersma 1993; shortest-lag peak within 90 % of the best, against octave
  jumps), voicing strength, frame energy (dB), spectral tilt (slope of the log spectrum,
  50 Hz-5 kHz), alpha ratio (1-5 kHz vs 50 Hz-1 kHz), spectral centroid, zero-crossing rate and
  spectral flux.  Each is put on a fixed, roughly unit scale ("global" normalisation).
* Trainable part: a strided 1-D conv (2 front-end frames -> one 20 ms output frame) and
  ``num_layers`` residual dilated temporal conv blocks (pre-LayerNorm, GELU), then LayerNorm.
  The downstream head is masked mean + Linear, so these non-linear frame features are what the
  mean pool turns into utterance statistics (like openSMILE functionals).

Measured with ``OMP_NUM_THREADS=1 python benchmarks/real_speech_dev.py --candidates NAME
--seeds ... --epochs E`` (96 RAVDESS clips, 6 speaker-disjoint folds of 2 actors, encoder +
masked mean + Linear, AdamW lr 1e-3 wd 0.01, batch 16 class-balanced, hidden 64; UA = mean over
folds and seeds +- std over folds; reference eGeMAPS + RBF-SVM 0.562 +- 0.114):

    default (mel + prosody, global), E=80   0.622 +- 0.210, seed std 0.026 (seeds 0-2)
    default, E=40                           0.580 +- 0.178, seed std 0.034 (seeds 0-2)
    default, E=40, lr 3e-4                  0.521 +- 0.165, seed std 0.015 (seeds 0-1)
    default, E=160                          0.646 +- 0.196 (seed 0; E=80 seed 0: 0.625)
    mel + prosody, global + centred, E=80   0.594 +- 0.162 (seed 0)
    mel + prosody, global + centred copy    0.521 +- 0.161, seed std 0.031 (E=40, seeds 0-2)
    mel + prosody, utterance-centred only   0.510 +- 0.155 (E=40, seed 0)
    + per-utterance std context per frame   0.448 +- 0.092 (E=40, seed 0)
    frame-wise MLP (num_layers=0), both     0.531 +- 0.086 (E=40, seed 0)
    log-mel with utterance mean removed     0.469 +- 0.117 (E=40, seed 0)
    prosodic LLDs only, both                0.365 +- 0.134 (E=40, seed 0)

Optional generalisation aids (all off by default; seeds 0-2, E=80, same protocol; measured
2026-11-25 with ``--candidates specaug|attention|variance|feat_drop``):

    default (for comparison, as above)      0.622 +- 0.210, seed std 0.026
      seeds 0-4                             0.619 +- 0.213, seed std 0.024
    attention_heads=4 (one self-attn block) 0.635 +- 0.106, seed std 0.018
      seeds 0-4                             0.640 +- 0.109, seed std 0.020
    time_masks=2, freq_masks=2 (SpecAugment, mean fill, widths 20 frames / 8 bands)
                                            0.503 +- 0.114, seed std 0.037
    utterance_var=True ((x - mean)^2 chans) 0.538 +- 0.136, seed std 0.051
    feature_dropout=0.1 (channel dropout)   0.594 +- 0.136, seed std 0.036

None beats the default mean UA by more than the seed noise, so the default is unchanged.  The
self-attention block gains +0.021 mean UA over 5 seeds (never worse per seed, but under the
seed std) and halves the spread over speaker folds (worst fold 0.54 instead of 0.43, averaged
over seeds 0-4); it is the option to try first on new speakers.  The
augmentations hurt: 400 AdamW steps already under-fit (E=160 > E=80 above), and hiding evidence
from an under-fitted model costs more than it regularises.
The attention block raises the 16 x 6 s forward+backward from 0.35-0.40 s to 0.44-0.66 s
(one thread, 5 repeats, machine shared).

With 80 training clips an epoch is 5 steps, so E=80 is 400 AdamW steps; fewer steps or a lower
learning rate under-train.  Keeping absolute levels (loudness, pitch height, tilt) beats
removing utterance means: in acted emotion, level cues carry arousal.  A small WavLM trained
from scratch (candidate ``wavlm_scratch``, 0.1 M parameters) took about 9 s wall time per
training step of 16 x 4 s on one thread of the loaded shared machine, so its 6 folds x 400 steps
were not run; with ~80 training clips there is also little for it to learn a front end from --
the DSP features supply that prior.  Front end + encoder forward+backward of a 16 x 6 s batch
(300 output frames): 0.36-0.43 s wall time on one thread (5 repeats, machine lightly loaded).

Since 2026-12-02 the ``tiny`` preset uses ``egemaps=True, use_mel=False, use_prosody=False,
speaker_norm=True`` (FoalNetConfig.tiny): the frames are openSMILE's 25 eGeMAPSv02 low-level
descriptors (model/opensmile_llds.py, ``egemaps_llds``: F0, jitter, shimmer, loudness, HNR, formants, spectral slopes and
balance, MFCC 1-4, on the same 10 ms grid, each put on a fixed scale, EGEMAPS_LLD_SCALE), and
each channel is z-scored with the speaker's own statistics before the trainable part
(features/speaker_norm.py; the dataset does it from the manifest's speakers, while ``forward``
on a waveform, i.e. prediction, where no speaker is known, uses the training speakers' pooled
statistics kept in the buffers ``norm_mean`` / ``norm_std``). Since 2026-12-03 the preset also
sets ``compare=True``: openSMILE's 65 ComParE 2016 LLDs beside the eGeMAPS ones (90 channels,
model/opensmile_llds.py). Chosen through ``foalnet cv
--modality audio`` on real speech, speaker-disjoint folds, with held-out folds reported apart:
docs/benchmarks.md ("The offline audio path on real speech") has every candidate and command.
The measurements above (benchmarks/real_speech_dev.py) are of the log-mel + prosody frames.

Padding contract: samples beyond ``waveform_mask`` are replaced by +0.0, frames are valid when
they start inside the valid samples, every convolution sees padded frames zeroed, and utterance
statistics are masked means -- so padding never changes the valid frames' outputs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from foalnet.model.opensmile_llds import COMPARE_LLD_SCALE, EGEMAPS_LLD_SCALE, compare_llds, egemaps_llds
from foalnet.model.losses import masked_mean as _masked_mean
from foalnet.errors import UsageError

SAMPLE_RATE = 16000


# Options read by the fixed front end (DSPFrontEnd + normalisation); the others only shape the
# trainable part, so changing them keeps cached front-end features valid.
FRONTEND_VERSION = 1  # bump when DSPFrontEnd's computation changes: invalidates cached features
FRONTEND_FIELDS = ("n_mels", "use_mel", "use_prosody", "normalization", "utterance_std", "utterance_var",
                   "f0_min", "f0_max", "voicing_threshold")


@dataclass
class OfflineAudioConfig:
    """Options of :class:`OfflineAudioEncoder` (all JSON-serialisable, all defaulted)."""

    hidden_size: int = 64  # width of the output frames
    stride: int = 2  # front-end frames (10 ms) merged per output frame; 2 -> 20 ms frames
    num_layers: int = 2  # dilated residual conv blocks after the input projection
    kernel_size: int = 5  # temporal kernel of each conv block (output frames)
    dropout: float = 0.1  # dropout after the input projection and inside the conv blocks
    n_mels: int = 40  # log-mel bands
    use_mel: bool = True  # include the log-mel bands
    use_prosody: bool = True  # include the prosodic LLDs (F0, voicing, energy, tilt, ...)
    egemaps: bool = False  # include openSMILE's 25 eGeMAPSv02 LLDs (needs the opensmile package)
    compare: bool = False  # include openSMILE's 65 ComParE 2016 LLDs (model/opensmile_llds.py)
    normalization: str = "global"  # "global" (fixed scale), "utterance" (mean-centred) or "both"
    utterance_std: bool = False  # append each feature's utterance std to every frame (context)
    utterance_var: bool = False  # append (x - utterance mean)^2 per frame: its pooled mean is the variance
    time_masks: int = 0  # SpecAugment (training only): time spans per clip filled with the clip's mean
    time_mask_width: int = 20  # longest time span (front-end 10 ms frames)
    freq_masks: int = 0  # SpecAugment (training only): mel band spans per clip filled with the clip's mean
    freq_mask_width: int = 8  # widest mel span (bands)
    feature_dropout: float = 0.0  # training only: drop whole feature channels per clip (Dropout1d)
    attention_heads: int = 0  # > 0: one residual self-attention block after the convs (utterance context)
    # z-score the front-end channels per speaker (training: each speaker's own statistics,
    # features/speaker_norm.py); the waveform path (prediction) uses the kept pooled statistics
    speaker_norm: bool = False
    f0_min: float = 60.0  # lowest F0 searched (Hz)
    f0_max: float = 500.0  # highest F0 searched (Hz)
    voicing_threshold: float = 0.45  # normalised autocorrelation peak needed to call a frame voiced

    def __post_init__(self) -> None:
        bad = []
        if self.hidden_size < 1:
            bad.append(f"hidden_size={self.hidden_size}")
        if self.stride < 1:
            bad.append(f"stride={self.stride}")
        if self.num_layers < 0:
            bad.append(f"num_layers={self.num_layers}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            bad.append(f"kernel_size={self.kernel_size} (odd, >= 1)")
        if not 0.0 <= self.dropout < 1.0:
            bad.append(f"dropout={self.dropout}")
        if not 0.0 <= self.feature_dropout < 1.0:
            bad.append(f"feature_dropout={self.feature_dropout}")
        if min(self.time_masks, self.time_mask_width, self.freq_masks, self.freq_mask_width) < 0:
            bad.append("time/freq mask counts and widths must be >= 0")
        if self.attention_heads < 0 or (self.attention_heads and self.hidden_size % self.attention_heads):
            bad.append(f"attention_heads={self.attention_heads} (>= 0, divides hidden_size)")
        if self.normalization not in ("global", "utterance", "both"):
            bad.append(f"normalization={self.normalization!r} (global, utterance or both)")
        if not (self.use_mel or self.use_prosody or self.egemaps or self.compare):
            bad.append("use_mel, use_prosody, egemaps and compare all False")
        if not 0 < self.f0_min < self.f0_max < SAMPLE_RATE / 4:
            bad.append(f"f0_min={self.f0_min}, f0_max={self.f0_max}")
        if bad:
            raise UsageError("OfflineAudioConfig: invalid " + ", ".join(bad))


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int, fmin: float, fmax: float) -> torch.Tensor:
    """HTK-style triangular mel filters, shape (n_fft // 2 + 1, n_mels)."""
    def hz_to_mel(f: torch.Tensor) -> torch.Tensor:
        return 2595.0 * torch.log10(1.0 + f / 700.0)

    def mel_to_hz(m: torch.Tensor) -> torch.Tensor:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    freqs = torch.linspace(0.0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    edges = mel_to_hz(torch.linspace(hz_to_mel(torch.tensor(fmin)), hz_to_mel(torch.tensor(fmax)),
                                     n_mels + 2, dtype=torch.float64))
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]  # (n_mels,)
    up = (freqs[:, None] - lower) / (center - lower)
    down = (upper - freqs[:, None]) / (upper - center)
    return torch.clamp(torch.minimum(up, down), min=0.0).float()  # (K, n_mels)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x (B, L, D) over valid frames (B, L) -> (B, 1, D), broadcastable over frames; 0
    for empty items (the losses' masked mean, kept 3-d)."""
    return _masked_mean(x, mask).unsqueeze(1)


class DSPFrontEnd(nn.Module):
    """Fixed frame features at 100 Hz: log-mel bands and prosodic LLDs (buffers, no parameters).

    Buffers are non-persistent: they are rebuilt from the options, so saved weights hold only the
    trainable part.
    """

    win = 400  # 25 ms analysis window for spectra
    pitch_win = 640  # 40 ms window for F0: > 2 periods of 60 Hz, the lowest F0 searched
    hop = 160  # 10 ms
    n_fft = 512
    pitch_fft = 1024  # >= pitch_win + max lag, so the FFT autocorrelation does not wrap

    def __init__(self, cfg: OfflineAudioConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("window", torch.hann_window(self.win, periodic=False), persistent=False)
        pw = torch.hann_window(self.pitch_win, periodic=False)
        self.register_buffer("pitch_window", pw, persistent=False)
        self.register_buffer("window_acf", self._autocorr(pw[None, None])[0, 0], persistent=False)
        self.register_buffer("mel_fb", mel_filterbank(cfg.n_mels, self.n_fft, SAMPLE_RATE, 20.0, 8000.0),
                             persistent=False)
        freqs = torch.linspace(0.0, SAMPLE_RATE / 2, self.n_fft // 2 + 1)
        self.register_buffer("freqs", freqs, persistent=False)
        self.min_lag = int(math.floor(SAMPLE_RATE / cfg.f0_max))
        self.max_lag = int(math.ceil(SAMPLE_RATE / cfg.f0_min))

    @property
    def num_features(self) -> int:
        return ((self.cfg.n_mels if self.cfg.use_mel else 0) + (8 if self.cfg.use_prosody else 0)
                + (len(EGEMAPS_LLD_SCALE) if self.cfg.egemaps else 0)
                + (len(COMPARE_LLD_SCALE) if self.cfg.compare else 0))

    def _autocorr(self, frames: torch.Tensor) -> torch.Tensor:
        """Autocorrelation of frames (..., W) for lags 0..W-1 via FFT (no circular wrap)."""
        spec = torch.fft.rfft(frames, n=self.pitch_fft)
        return torch.fft.irfft(spec.abs() ** 2, n=self.pitch_fft)[..., : frames.shape[-1]]

    def frame_mask(self, waveform_mask: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Valid frames (B, L) and L: frame i is valid when it starts inside the valid samples."""
        lengths = waveform_mask.sum(-1)  # (B,)
        num_frames = max(1, math.ceil(waveform_mask.shape[-1] / self.hop))
        starts = torch.arange(num_frames, device=lengths.device) * self.hop
        return starts[None, :] < lengths[:, None], num_frames

    def _frames(self, wave: torch.Tensor, num_frames: int, width: int) -> torch.Tensor:
        """(B, S) -> (B, L, width) frames starting every hop, zero-padded on the right."""
        B, S = wave.shape
        need = (num_frames - 1) * self.hop + width
        wave = F.pad(wave, (0, max(0, need - S)))
        return wave.unfold(-1, width, self.hop)[:, :num_frames]  # (B, L, width)

    def _pick_lag(self, norm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Shortest-lag local maximum within 90% of the best one (avoids octave jumps): (B, L) each."""
        lo, hi = self.min_lag, self.max_lag
        search = norm[..., lo : hi + 1]  # (B, L, lags)
        is_peak = (search >= norm[..., lo - 1 : hi]) & (search >= norm[..., lo + 1 : hi + 2])
        best = search.max(-1, keepdim=True).values
        candidate = is_peak & (search >= 0.9 * best)
        idx = candidate.to(torch.uint8).argmax(-1)  # first candidate; 0 if none
        return idx + lo, search.gather(-1, idx.unsqueeze(-1)).squeeze(-1)

    def pitch(self, wave: torch.Tensor, num_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """F0 in Hz (0 when unvoiced) and voicing strength in [0, 1], each (B, L)."""
        frames = self._frames(wave, num_frames, self.pitch_win)
        frames = frames - frames.mean(-1, keepdim=True)
        acf = self._autocorr(frames * self.pitch_window)  # (B, L, W)
        norm = acf / acf[..., :1].clamp(min=1e-8)
        norm = norm / (self.window_acf / self.window_acf[0]).clamp(min=1e-3)
        lag, peak = self._pick_lag(norm)
        # parabolic interpolation around the peak for sub-sample lag
        left = norm.gather(-1, (lag - 1).unsqueeze(-1)).squeeze(-1)
        right = norm.gather(-1, (lag + 1).clamp(max=norm.shape[-1] - 1).unsqueeze(-1)).squeeze(-1)
        denom = left - 2 * peak + right
        shift = torch.where(denom.abs() > 1e-8, 0.5 * (left - right) / denom, torch.zeros_like(denom))
        f0 = SAMPLE_RATE / (lag.to(wave.dtype) + shift.clamp(-0.5, 0.5))
        energy = acf[..., 0]
        voiced = (peak > self.cfg.voicing_threshold) & (energy > 1e-6)
        return torch.where(voiced, f0, torch.zeros_like(f0)), peak.clamp(0.0, 1.0) * (energy > 1e-6)

    def forward(self, waveform: torch.Tensor, waveform_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """waveform (B, S), waveform_mask (B, S) -> features (B, L, F) globally scaled, mask (B, L)."""
        mask, L = self.frame_mask(waveform_mask)
        wave = torch.where(waveform_mask, waveform.float(), torch.zeros((), dtype=torch.float32))  # +0.0 padding
        frames = self._frames(wave, L, self.win)  # (B, L, 400)
        power = torch.fft.rfft(frames * self.window, n=self.n_fft).abs() ** 2  # (B, L, K)
        feats = []
        if self.cfg.use_mel:
            mel = torch.log10(power @ self.mel_fb + 1e-8)  # (B, L, M)
            feats.append((mel + 4.0) / 2.0)
        if self.cfg.use_prosody:
            feats.append(self._prosody(wave, frames, power, L))
        if self.cfg.egemaps:
            feats.append(egemaps_llds(wave, mask.sum(-1), L, waveform_mask.sum(-1)))
        if self.cfg.compare:
            feats.append(compare_llds(wave, mask.sum(-1), L, waveform_mask.sum(-1)))
        x = torch.cat(feats, -1) * mask.unsqueeze(-1)
        return x, mask

    def _prosody(self, wave: torch.Tensor, frames: torch.Tensor, power: torch.Tensor, L: int) -> torch.Tensor:
        """Eight LLDs per frame, each scaled to roughly unit range: (B, L, 8)."""
        f0, voicing = self.pitch(wave, L)
        semitones = torch.where(f0 > 0, 12.0 * torch.log2(f0.clamp(min=1.0) / 100.0), torch.zeros_like(f0))
        energy_db = 10.0 * torch.log10(frames.pow(2).mean(-1) + 1e-10)  # (B, L)
        log_spec = torch.log10(power + 1e-10)  # (B, L, K)
        band = (self.freqs > 50) & (self.freqs < 5000)
        fx = self.freqs[band] / 1000.0
        fx = fx - fx.mean()
        tilt = (log_spec[..., band] * fx).sum(-1) / (fx * fx).sum()  # log10 power per kHz
        low = power[..., (self.freqs >= 50) & (self.freqs < 1000)].sum(-1)
        high = power[..., (self.freqs >= 1000) & (self.freqs < 5000)].sum(-1)
        alpha = torch.log10((high + 1e-10) / (low + 1e-10))
        total = power.sum(-1)
        centroid = (power * self.freqs).sum(-1) / (total + 1e-10) / 1000.0  # kHz
        signs = (frames >= 0).to(frames.dtype)
        zcr = (signs[..., 1:] - signs[..., :-1]).abs().mean(-1)
        flux = torch.zeros_like(total)
        floored = torch.log10(power + 1e-8)  # higher floor than log_spec: less noise from silent bins
        flux[:, 1:] = (floored[:, 1:] - floored[:, :-1]).abs().mean(-1)  # spectral change per hop
        return torch.stack([
            semitones / 12.0, voicing, (energy_db + 50.0) / 20.0, tilt, alpha / 2.0,
            centroid / 2.0, zcr * 5.0, flux,
        ], -1)


class ConvBlock(nn.Module):
    """Residual dilated temporal conv that ignores padded frames."""

    def __init__(self, size: int, kernel: int, dilation: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(size)
        self.conv = nn.Conv1d(size, size, kernel, padding=dilation * (kernel - 1) // 2, dilation=dilation)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, L, H), mask (B, L) -> (B, L, H)."""
        h = self.norm(x) * mask.unsqueeze(-1)
        h = self.conv(h.transpose(1, 2)).transpose(1, 2)  # (B, L, H)
        return x + self.drop(F.gelu(h))


class AttentionBlock(nn.Module):
    """Residual pre-LN self-attention over valid frames: gives every frame the utterance context."""

    def __init__(self, size: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(size)
        self.heads = heads
        self.qkv = nn.Linear(size, 3 * size)
        self.out = nn.Linear(size, size)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, L, H), mask (B, L) -> (B, L, H); padded keys get exactly zero weight."""
        B, L, H = x.shape
        q, k, v = self.qkv(self.norm(x)).view(B, L, 3, self.heads, H // self.heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(H // self.heads)  # (B, heads, L, L)
        scores = scores.masked_fill(~mask[:, None, None, :], torch.finfo(scores.dtype).min)
        h = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, L, H)  # (B, L, H)
        return x + self.drop(self.out(h)) * mask.unsqueeze(-1)


def span_mask(B: int, size: int, count: int, width: int, device: torch.device) -> torch.Tensor:
    """(B, size) bool: ``count`` random spans per row, each of 0..width positions (SpecAugment)."""
    pos = torch.arange(size, device=device)
    hit = torch.zeros(B, size, dtype=torch.bool, device=device)
    for _ in range(count):
        w = torch.randint(0, width + 1, (B, 1), device=device)
        start = (torch.rand(B, 1, device=device) * (size - w + 1).clamp(min=1)).long()
        hit |= (pos >= start) & (pos < start + w)
    return hit


class OfflineAudioEncoder(nn.Module):
    """DSP front end (buffers) + trainable frame encoder; see the module docstring for why."""

    def __init__(self, **options: object) -> None:
        super().__init__()
        self.config = OfflineAudioConfig(**options)  # type: ignore[arg-type]
        cfg = self.config
        self.front_end = DSPFrontEnd(cfg)
        self.hidden_size = cfg.hidden_size
        copies = (2 if cfg.normalization == "both" else 1) + int(cfg.utterance_std) + int(cfg.utterance_var)
        in_features = self.front_end.num_features * copies
        self.input_proj = nn.Conv1d(in_features, cfg.hidden_size, cfg.stride, stride=cfg.stride)
        self.input_drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            ConvBlock(cfg.hidden_size, cfg.kernel_size, 2**i, cfg.dropout) for i in range(cfg.num_layers)
        )
        self.out_norm = nn.LayerNorm(cfg.hidden_size)
        # created last so that the default modules are initialised exactly as without it
        self.attention = AttentionBlock(cfg.hidden_size, cfg.attention_heads, cfg.dropout) if cfg.attention_heads else None
        if cfg.speaker_norm:  # saved with the weights: the training speakers' pooled statistics
            self.register_buffer("norm_mean", torch.zeros(in_features))
            self.register_buffer("norm_std", torch.ones(in_features))

    def to_dict(self) -> dict:
        """The options this encoder was built with (JSON-serialisable)."""
        return asdict(self.config)

    def frontend_fingerprint(self) -> dict:
        """The options that determine ``frontend``'s output (the audio-cache key)."""
        options = asdict(self.config)
        fingerprint = {"kind": "offline-dsp", "version": FRONTEND_VERSION,
                       **{name: options[name] for name in FRONTEND_FIELDS}}
        for name, table in (("egemaps", EGEMAPS_LLD_SCALE), ("compare", COMPARE_LLD_SCALE)):
            if options[name]:  # only then: caches made without the set keep their key
                import opensmile

                fingerprint[name] = {"opensmile": opensmile.__version__,
                                     "lld_scale": [list(row) for row in table]}
        return fingerprint

    def frontend(self, waveform: torch.Tensor, waveform_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fixed front-end features (B, L, F') after normalisation, and the frame mask (B, L)."""
        with torch.no_grad():
            x, mask = self.front_end(waveform, waveform_mask)
            valid = mask.unsqueeze(-1)
            centred = (x - masked_mean(x, mask)) * valid
            parts = {"global": [x], "utterance": [centred], "both": [x, centred]}[self.config.normalization]
            if self.config.utterance_std:
                std = masked_mean(centred.pow(2), mask).sqrt()  # (B, 1, F)
                parts.append(std.expand_as(x) * valid)
            if self.config.utterance_var:
                parts.append(centred.pow(2))
            return torch.cat(parts, -1), mask

    def set_speaker_fallback(self, mean, std) -> None:
        """Keep the pooled statistics [F'] that ``forward`` normalises with (speaker_norm only)."""
        if not self.config.speaker_norm:
            raise ValueError("set_speaker_fallback: the encoder was built without speaker_norm")
        self.norm_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.norm_std.copy_(torch.as_tensor(std, dtype=torch.float32))

    def output_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """Front-end frame mask (B, L) -> output frame mask (B, ceil(L / stride))."""
        return mask[:, :: self.config.stride]

    def augment(self, feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Training-time SpecAugment + channel dropout on features (B, L, F'); identity in eval mode.

        Masked spans are filled with the clip's mean of that feature (not 0), so the pooled
        utterance statistics stay near their true values while local evidence is hidden.
        """
        cfg = self.config
        if not self.training:
            return feats
        B, L, Fp = feats.shape
        hide = torch.zeros(B, L, Fp, dtype=torch.bool, device=feats.device)
        if cfg.time_masks and cfg.time_mask_width:
            hide |= span_mask(B, L, cfg.time_masks, cfg.time_mask_width, feats.device).unsqueeze(-1)
        if cfg.use_mel and cfg.freq_masks and cfg.freq_mask_width:
            bands = span_mask(B, cfg.n_mels, cfg.freq_masks, cfg.freq_mask_width, feats.device)  # (B, M)
            per_copy = F.pad(bands, (0, self.front_end.num_features - cfg.n_mels))  # mel bands come first
            hide |= per_copy.repeat(1, Fp // self.front_end.num_features).unsqueeze(1)
        if hide.any():
            feats = torch.where(hide, masked_mean(feats, mask), feats)
        if cfg.feature_dropout:
            feats = F.dropout1d(feats.transpose(1, 2), cfg.feature_dropout, training=True).transpose(1, 2)
        return feats

    def encode_frontend(self, feats: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Trainable part: features (B, L, F'), mask (B, L) -> hidden (B, L', H), mask (B, L')."""
        mask = mask.bool()
        feats = self.augment(feats.to(self.input_proj.weight.dtype), mask)
        B, L, _ = feats.shape
        extra = -L % self.config.stride
        x = F.pad(feats * mask.unsqueeze(-1), (0, 0, 0, extra)).transpose(1, 2)  # (B, F', L + extra)
        out_mask = self.output_mask(mask)  # (B, L')
        h = self.input_drop(F.gelu(self.input_proj(x).transpose(1, 2)))  # (B, L', H)
        for block in self.blocks:
            h = block(h, out_mask)
        if self.attention is not None:
            h = self.attention(h, out_mask)
        return self.out_norm(h) * out_mask.unsqueeze(-1), out_mask

    def forward(self, waveform: torch.Tensor, waveform_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """waveform (B, S) at 16 kHz, waveform_mask (B, S) bool -> hidden (B, L, H), frame_mask (B, L)."""
        if waveform.dim() != 2 or waveform.shape != waveform_mask.shape:
            raise ValueError(f"waveform {tuple(waveform.shape)} and mask {tuple(waveform_mask.shape)} must be equal (B, S)")
        feats, mask = self.frontend(waveform, waveform_mask.bool())
        if self.config.speaker_norm:  # no speaker known here: the training speakers' pooled statistics
            feats = (feats - self.norm_mean) / self.norm_std * mask.unsqueeze(-1)
        return self.encode_frontend(feats, mask)
