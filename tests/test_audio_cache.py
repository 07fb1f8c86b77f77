"""Audio front-end cache: training from cached front-end features is training from the waveform.

The front end (frozen WavLM CNN, offline DSP features) is run once per utterance and stored;
these tests pin that (1) the model gives the same logits and losses from the cache as from the
padded waveform batch, (2) the cache key follows what determines the features, (3) the store is
filled, reused, refreshed and reports bad files, and (4) a training run from the cache matches
one from the waveform.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from foalnet.cli import main
from foalnet.model.foalnet import FoalNet, FoalNetConfig
from foalnet.data.padding import pad_sequences

ENCODERS = {
    "offline": ("offline", {}),
    "offline-attention": ("offline", {"attention_heads": 4}),
    "tiny-wavlm": ("tiny-wavlm", {}),
}
# 1 s, 0.5 s, a CNN-sized scrap, too short for one WavLM frame, empty, 1.5 s
LENGTHS = [16000, 8000, 3000, 200, 0, 24000]


def _model(name: str, **overrides) -> FoalNet:
    encoder, options = ENCODERS[name]
    torch.manual_seed(0)
    return FoalNet(dataclasses.replace(FoalNetConfig.tiny(), audio_encoder=encoder, audio_options=options,
                                       **overrides))


def _inputs(model: FoalNet, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    waves = [0.1 * torch.randn(n, generator=gen) for n in LENGTHS]
    video = [torch.randn(5 + 3 * i, model.video_dim, generator=gen).numpy() for i in range(len(LENGTHS))]
    W, WM = pad_sequences([w.numpy() for w in waves], ())
    V, VM = pad_sequences(video, (model.video_dim,))
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    return waves, W, WM, V, VM, labels


def _cached(model: FoalNet, waves: list[torch.Tensor]):
    """What the cache holds: each utterance's front end alone, valid frames only, padded by collate."""
    from foalnet.features.audio_cache import utterance_frontend

    arrays = [utterance_frontend(model, w) for w in waves]
    return pad_sequences(arrays, (arrays[0].shape[-1],))


@pytest.mark.parametrize("name", list(ENCODERS))
def test_logits_and_losses_from_cache_equal_those_from_the_waveform(name):
    model = _model(name)
    waves, W, WM, V, VM, labels = _inputs(model)
    F, FM = _cached(model, waves)
    model.eval()
    with torch.no_grad():
        torch.manual_seed(3)  # the MEM negatives are drawn: the same draws on both sides
        ref = model(W, WM, V, VM, labels=labels, compute_mem=True)
        torch.manual_seed(3)
        got = model(video=V, video_mask=VM, labels=labels, compute_mem=True, audio_features=F,
                    audio_features_mask=FM)
    torch.testing.assert_close(got.logits, ref.logits, atol=1e-5, rtol=0)
    for part in ("ce", "avel", "mem"):
        torch.testing.assert_close(got.losses[part], ref.losses[part], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["offline-attention", "tiny-wavlm"])
def test_training_step_from_cache_gives_the_same_loss_and_gradients(name):
    """Train mode (dropout, SpecAugment, negative draws) under one seed: same loss, same grads."""
    model = _model(name)
    model.train()
    waves, W, WM, V, VM, labels = _inputs(model)
    F, FM = _cached(model, waves)
    results = []
    for kwargs in (dict(waveform=W, waveform_mask=WM), dict(audio_features=F, audio_features_mask=FM)):
        model.zero_grad()
        torch.manual_seed(7)
        np.random.seed(7)  # transformers draws SpecAugment spans with numpy
        out = model(video=V, video_mask=VM, labels=labels, **kwargs)
        out.loss.backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        results.append((out.loss.detach(), grads))
    (loss_w, grads_w), (loss_f, grads_f) = results
    torch.testing.assert_close(loss_f, loss_w, atol=1e-5, rtol=0)
    assert grads_w.keys() == grads_f.keys() and grads_w
    for key in grads_w:
        torch.testing.assert_close(grads_f[key], grads_w[key], atol=1e-5, rtol=1e-4, msg=key)


def test_cached_features_do_not_depend_on_how_the_batch_was_padded():
    """The frozen CNN of the batch, cut to each item's valid frames, is the item's CNN alone."""
    model = _model("tiny-wavlm").eval()
    waves, W, WM, *_ = _inputs(model)
    batch_feats, batch_mask = model.audio_frontend(W, WM)
    alone, alone_mask = _cached(model, waves)
    assert torch.equal(batch_mask[:, : alone.shape[1]], alone_mask)
    assert not batch_mask[:, alone.shape[1]:].any()
    torch.testing.assert_close(batch_feats[:, : alone.shape[1]] * alone_mask[..., None], alone, atol=1e-5, rtol=0)


def test_fingerprint_follows_what_determines_the_front_end():
    base = _model("offline").audio_frontend_fingerprint()
    # trainable-part options keep the cache; front-end options and waveform handling change it
    same = FoalNet(dataclasses.replace(FoalNetConfig.tiny(), audio_options={"hidden_size": 32, "num_layers": 1}))
    assert same.audio_frontend_fingerprint() == base
    other_mels = FoalNet(dataclasses.replace(FoalNetConfig.tiny(), audio_options={"n_mels": 20}))
    assert other_mels.audio_frontend_fingerprint() != base
    normalised = FoalNet(dataclasses.replace(FoalNetConfig.tiny(), normalize_audio=True))
    assert normalised.audio_frontend_fingerprint() != base

    wavlm = _model("tiny-wavlm")
    fp = wavlm.audio_frontend_fingerprint()
    assert fp["encoder"]["kind"] == "wavlm-cnn"
    with torch.no_grad():
        wavlm.audio_encoder.model.feature_extractor.conv_layers[0].conv.weight.add_(1e-3)
    assert wavlm.audio_frontend_fingerprint()["encoder"]["weights_sha1"] != fp["encoder"]["weights_sha1"]
    # a CNN that trains, or one normalising over (padded) time, has nothing cacheable
    assert _model("tiny-wavlm", freeze_feature_encoder=False).audio_frontend_fingerprint() is None
    group_norm = FoalNet(dataclasses.replace(FoalNetConfig.tiny(), audio_encoder="tiny-wavlm",
                                             audio_options={"feat_extract_norm": "group"}))
    assert group_norm.audio_frontend_fingerprint() is None
    video_only = FoalNet(dataclasses.replace(FoalNetConfig.tiny(), modality="video", use_avel=False, use_mem=False))
    assert video_only.audio_frontend_fingerprint() is None


# ----------------------------------------------------------------------------- the store


@pytest.fixture()
def private_data(prepared_dir, tmp_path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(prepared_dir, data)
    return data


def test_build_fills_reuses_refreshes_and_reports(private_data, tmp_path):
    from foalnet.data.audio import load_record_audio
    from foalnet.data.manifest import read_manifest
    from foalnet.features.audio_cache import build_audio_cache

    model = _model("offline")
    records = read_manifest(private_data)[:12]
    store, report = build_audio_cache(private_data, model, records, progress=False)
    assert (report.done, report.reused, report.failed) == (len(records), 0, 0)
    # the stored array is the front end of the training crop, valid frames only
    rec = records[0]
    wave = torch.from_numpy(load_record_audio(rec, 16000, 6.0))
    feats, mask = model.audio_frontend(wave[None], torch.ones(1, len(wave), dtype=torch.bool))
    stored = store.load(rec["id"])
    assert stored.dtype == np.float32 and stored.shape == (int(mask.sum()), feats.shape[-1])
    np.testing.assert_array_equal(stored, feats[0, mask[0]].numpy())

    # second run: everything reused, nothing rewritten
    _, again = build_audio_cache(private_data, model, records, progress=False)
    assert (again.done, again.reused, again.failed) == (0, len(records), 0)

    # a changed wav is recomputed; a broken one is reported by id, path and reason, the rest kept
    changed, broken = records[1], records[2]
    new_wav = tmp_path / "changed.wav"
    shutil.copy(changed["wav"], new_wav)
    broken_wav = tmp_path / "broken.wav"
    broken_wav.write_bytes(Path(broken["wav"]).read_bytes()[:30])
    edited = [dict(r, wav=str(new_wav)) if r is changed else dict(r, wav=str(broken_wav)) if r is broken else r
              for r in records]
    store, third = build_audio_cache(private_data, model, edited, progress=False)
    assert (third.done, third.reused, third.failed) == (1, len(records) - 2, 1)
    assert third.rejected[0]["id"] == broken["id"] and third.rejected[0]["path"] == str(broken_wav)
    assert third.rejected[0]["reason"]
    on_disk = [json.loads(x) for x in (store.root / "rejected.jsonl").read_text().splitlines()]
    assert on_disk == third.rejected
    assert store.has(broken["id"])  # the old array is still there, but its key no longer matches

    # a different front end gets its own folder, never the other's arrays
    other, _ = build_audio_cache(private_data, _model("tiny-wavlm"), records[:2], progress=False)
    assert other.root != store.root and other.load(records[0]["id"]).shape[1] == 32


def test_empty_utterance_is_cached_as_zero_frames(private_data):
    from foalnet.data.manifest import read_manifest
    from foalnet.features.audio_cache import build_audio_cache

    rec = dict(read_manifest(private_data)[0])
    rec["audio_start"], rec["audio_end"] = 0.0, 0.005  # 80 samples: no WavLM frame
    store, report = build_audio_cache(private_data, _model("tiny-wavlm"), [rec], progress=False)
    assert report.done == 1 and store.load(rec["id"]).shape == (0, 32)


def test_extract_audio_cli_and_training_from_cache_matches_training_from_waveform(private_data, tmp_path):
    # speaker_norm off: it needs the cache (the waveform path normalises with pooled statistics)
    fast = ["--preset", "tiny", "--modality", "audio", "--set", "train.batch_size=4",
            "--set", "train.eval_batch_size=8", "--set", "train.epochs=1", "--set", "train.ensemble=1",
            "--set", "model.audio_options={attention_heads: 4, egemaps: true, use_mel: false, use_prosody: false}"]
    assert main(["extract-audio", str(private_data), "--preset", "tiny", "--no-progress"]) == 0
    slugs = [p.name for p in (private_data / "audio_frontend").iterdir()]
    assert len(slugs) == 1 and slugs[0].startswith("offline-dsp-")
    runs = {}
    for cache in ("true", "false"):
        run = tmp_path / f"cache-{cache}"
        assert main(["train", str(private_data), "--fold", "1", "--out", str(run), *fast,
                     "--set", f"data.cache_audio={cache}"]) == 0
        runs[cache] = list(csv.DictReader((run / "predictions.csv").open()))
    cached, plain = runs["true"], runs["false"]
    assert [r["id"] for r in cached] == [r["id"] for r in plain] and cached
    prob_cols = [k for k in cached[0] if k.startswith("p_")]
    diff = max(abs(float(a[k]) - float(b[k])) for a, b in zip(cached, plain) for k in prob_cols)
    assert diff < 1e-4


def test_extract_audio_usage_errors_exit_2(private_data, tmp_path, caplog):
    assert main(["extract-audio", str(tmp_path / "nowhere"), "--preset", "tiny", "--no-progress"]) == 2
    assert "no manifest.jsonl" in caplog.text
    caplog.clear()
    unfrozen = ["--set", "model.audio_encoder=tiny-wavlm", "--set", "model.audio_options={}",
                "--set", "model.freeze_feature_encoder=false"]
    assert main(["extract-audio", str(private_data), "--preset", "tiny", "--no-progress", *unfrozen]) == 2
    assert "no fixed front end" in caplog.text
    assert not (private_data / "audio_frontend").exists()


def test_extract_audio_reports_a_broken_wav_and_caches_the_rest(private_data, tmp_path, capsys):
    from foalnet.data.manifest import read_manifest

    records = read_manifest(private_data)
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF")
    lines = (private_data / "manifest.jsonl").read_text().splitlines()
    lines = [ln.replace(json.dumps(records[0]["wav"]), json.dumps(str(broken))) for ln in lines]
    (private_data / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["extract-audio", str(private_data), "--preset", "tiny", "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert f"done {len(records) - 1}, reused 0, failed 1" in out and "rejected.jsonl" in out
    (store_dir,) = (private_data / "audio_frontend").iterdir()
    (rejected,) = [json.loads(x) for x in (store_dir / "rejected.jsonl").read_text().splitlines()]
    assert rejected["id"] == records[0]["id"] and rejected["path"] == str(broken) and rejected["reason"]
