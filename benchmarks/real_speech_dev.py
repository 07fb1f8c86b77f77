"""Measure the offline audio encoder on real speech: 6 speaker-disjoint folds of real-speech-dev.

Protocol (docs/ARCHITECTURE.md, issue 2 item 4): actors sorted and paired ({1,2}, {3,4}, ...);
train on 10 actors, test on 2; UA = mean per-class recall.  Model = OfflineAudioEncoder + masked
mean pool + Linear(H, 4), the audio-only head of FoalNet, trained with AdamW, batch 16,
class-balanced sampling, a fixed number of epochs (no early stopping: no dev set is touched).

    OMP_NUM_THREADS=1 python benchmarks/real_speech_dev.py --candidates default --seeds 0 1 2 \
        --out benchmarks/results/real_speech_dev.json

Since the front end is fixed, its features are computed once per clip and only the trainable
part (``encoder.encode``) runs in the loop; this equals running ``encoder(waveform, mask)``.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch
import torch.nn.functional as F
from torch import nn

from foalnet.model.audio_offline import OfflineAudioEncoder, masked_mean

LABELS = ["neu", "hap", "sad", "ang"]
# the project's shared data folder next to the work tree; override with --data
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-speech-dev"

# name -> encoder options; "default" is OfflineAudioEncoder() as shipped
CANDIDATES: dict[str, dict] = {
    "default": {},
    "mel_cmn": {"use_prosody": False, "normalization": "utterance"},
    "prosody_only": {"use_mel": False, "normalization": "both"},
    "mel_prosody_both": {"normalization": "both"},
    "mel_prosody_utterance": {"normalization": "utterance"},
    "frame_mlp": {"num_layers": 0, "normalization": "both"},
    "context_std": {"utterance_std": True, "normalization": "both"},
    "specaug": {"time_masks": 2, "freq_masks": 2},
    "feat_drop": {"feature_dropout": 0.1},
    "attention": {"attention_heads": 4},
    "variance": {"utterance_var": True},
    "wavlm_scratch": {},  # WavLMConfig overrides; see ScratchWavLMHead
}


def load_corpus(root: Path) -> tuple[list[np.ndarray], list[int], list[str]]:
    """Read labels.csv and every clip as mono float32 at 16 kHz."""
    waves, labels, speakers = [], [], []
    if not (root / "labels.csv").is_file():
        raise SystemExit(f"{root / 'labels.csv'}: not found (pass --data DIR with labels.csv path,label,speaker)")
    with open(root / "labels.csv", newline="") as f:
        for row in csv.DictReader(f):
            audio, sr = sf.read(root / row["path"], dtype="float32", always_2d=True)
            audio = audio.mean(1)
            if sr != 16000:
                audio = soxr.resample(audio, sr, 16000).astype(np.float32)
            waves.append(audio)
            labels.append(LABELS.index(row["label"]))
            speakers.append(row["speaker"])
    return waves, labels, speakers


def speaker_folds(speakers: list[str], n_folds: int = 6) -> list[list[str]]:
    """Sorted speakers split into n_folds consecutive groups."""
    ordered = sorted(set(speakers))
    size = len(ordered) // n_folds
    return [ordered[i * size : (i + 1) * size] for i in range(n_folds)]


def pad_batch(waves: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """List of 1-D arrays -> waveform (B, S) and mask (B, S)."""
    S = max(len(w) for w in waves)
    x = torch.zeros(len(waves), S)
    m = torch.zeros(len(waves), S, dtype=torch.bool)
    for i, w in enumerate(waves):
        x[i, : len(w)] = torch.from_numpy(w)
        m[i, : len(w)] = True
    return x, m


def front_end_features(options: dict, waves: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed front-end features for all clips: (N, L, F) and mask (N, L)."""
    enc = OfflineAudioEncoder(**options)
    x, m = pad_batch(waves)
    return enc.frontend(x, m)


class AudioOnlyHead(nn.Module):
    """Encoder's trainable part + masked mean + Linear, as FoalNet's audio-only mode."""

    def __init__(self, options: dict) -> None:
        super().__init__()
        self.encoder = OfflineAudioEncoder(**options)
        self.classifier = nn.Linear(self.encoder.hidden_size, len(LABELS))

    def forward(self, feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h, out_mask = self.encoder.encode_frontend(feats, mask)  # (B, L', H), (B, L')
        return self.classifier(masked_mean(h, out_mask).squeeze(1))  # (B, C)


class ScratchWavLMHead(nn.Module):
    """Candidate: a small WavLM trained from scratch on waveforms + masked mean + Linear."""

    def __init__(self, options: dict) -> None:
        super().__init__()
        from transformers import WavLMConfig, WavLMModel

        cfg = WavLMConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                          conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                          feat_extract_norm="layer", mask_time_prob=0.0, **options)
        self.wavlm = WavLMModel(cfg)
        self.classifier = nn.Linear(cfg.hidden_size, len(LABELS))

    def forward(self, wave: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.wavlm(wave, attention_mask=mask.long()).last_hidden_state  # (B, L, H)
        frame_mask = self.wavlm._get_feature_vector_attention_mask(h.shape[1], mask.long()).bool()
        return self.classifier(masked_mean(h, frame_mask).squeeze(1))


def unweighted_accuracy(pred: np.ndarray, gold: np.ndarray) -> float:
    """Mean per-class recall over the classes present in gold."""
    return float(np.mean([(pred[gold == c] == c).mean() for c in np.unique(gold)]))


def train_and_test(options: dict, feats: torch.Tensor, mask: torch.Tensor, y: torch.Tensor,
                   train_idx: np.ndarray, test_idx: np.ndarray, args: argparse.Namespace, seed: int) -> float:
    """Train a fresh model on train_idx for a fixed number of epochs, return UA on test_idx."""
    torch.manual_seed(seed)
    model = ScratchWavLMHead(options) if args.wavlm else AudioOnlyHead(options)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    counts = torch.bincount(y[train_idx], minlength=len(LABELS)).float()
    weights = (1.0 / counts)[y[train_idx]]
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = max(1, len(train_idx) // args.batch_size)
    model.train()
    for _ in range(args.epochs * steps_per_epoch):
        pick = torch.multinomial(weights, args.batch_size, replacement=True, generator=gen)
        idx = torch.as_tensor(train_idx)[pick]
        L = int(mask[idx].sum(1).max())
        loss = F.cross_entropy(model(feats[idx, :L], mask[idx, :L]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        pred = model(feats[test_idx], mask[test_idx]).argmax(-1).numpy()
    return unweighted_accuracy(pred, y[test_idx].numpy())


def run_candidate(name: str, options: dict, corpus: tuple, args: argparse.Namespace) -> dict:
    """All folds x seeds for one candidate; prints per-fold UA and the summary."""
    waves, labels, speakers = corpus
    feats, mask = pad_batch(waves) if args.wavlm else front_end_features(options, waves)
    y = torch.tensor(labels)
    spk = np.array(speakers)
    folds = speaker_folds(speakers)
    per_seed = []
    for seed in args.seeds:
        uas = []
        for k, test_spk in enumerate(folds):
            test_idx = np.flatnonzero(np.isin(spk, test_spk))
            train_idx = np.flatnonzero(~np.isin(spk, test_spk))
            uas.append(train_and_test(options, feats, mask, y, train_idx, test_idx, args, seed * 100 + k))
        per_seed.append(uas)
        print(f"{name} seed={seed} folds=" + " ".join(f"{u:.3f}" for u in uas)
              + f"  UA {statistics.mean(uas):.3f} +- {statistics.stdev(uas):.3f}", flush=True)
    all_uas = [u for uas in per_seed for u in uas]
    seed_means = [statistics.mean(uas) for uas in per_seed]
    result = {
        "options": options,
        "per_seed_fold_ua": per_seed,
        "ua_mean": statistics.mean(all_uas),
        "ua_fold_std": statistics.mean(statistics.stdev(uas) for uas in per_seed),
        "ua_seed_std": statistics.stdev(seed_means) if len(seed_means) > 1 else 0.0,
    }
    print(f"== {name}: UA {result['ua_mean']:.3f} +- {result['ua_fold_std']:.3f} (folds), "
          f"+- {result['ua_seed_std']:.3f} (seeds)", flush=True)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--candidates", nargs="+", default=["default"], choices=sorted(CANDIDATES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=JSON",
                        help="extra encoder options applied to every candidate, e.g. hidden_size=64")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "real_speech_dev.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    extra = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    corpus = load_corpus(args.data)
    results = {}
    for name in args.candidates:
        start = time.time()
        args.wavlm = name == "wavlm_scratch"
        results[name] = run_candidate(name, {**CANDIDATES[name], **extra}, corpus, args)
        results[name]["seconds"] = round(time.time() - start, 1)
    settings = {k: v for k, v in vars(args).items() if k not in ("data", "out")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"settings": settings, "results": results}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
