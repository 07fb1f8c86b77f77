"""FoalNet behaviour: calling convention, padding invariance, edge cases, gradients, ablations,
save/load (spec §1, §3). Tiny encoders only: a frame encoder and a small WavLM."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from foalnet.model import FoalNet, FoalNetConfig
from foalnet.model.audio import AUDIO_ENCODERS, HFAudioEncoder, build_audio_encoder, register_audio_encoder

D_VIDEO = 12
# at least 16 channels per convolution group: oneDNN's AMX bfloat16 convolution (torch 2.13 on CPUs
# with AMX) returns wrong values for some narrower ones (4 or 8 channels per group); the paper's
# widths (512 CNN channels, 64 per positional group) are not affected (docs/ARCHITECTURE.md)
TINY_WAVLM = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
              "conv_dim": [32, 32, 32, 32], "num_conv_pos_embedding_groups": 1}


class FrameEncoder(nn.Module):
    """Test encoder: 160-sample frames -> Linear; a frame is valid iff all its samples are."""

    def __init__(self, hidden_size: int = 8, hop: int = 160) -> None:
        super().__init__()
        self.hidden_size, self.hop = hidden_size, hop
        self.proj = nn.Linear(hop, hidden_size)

    def forward(self, waveform, waveform_mask):
        B, S = waveform.shape
        L = max(S // self.hop, 1)
        frames = F.pad(waveform, (0, L * self.hop - S))[:, : L * self.hop].reshape(B, L, self.hop)
        mask = torch.arange(L) < (waveform_mask.sum(-1) // self.hop)[:, None]
        return self.proj(frames), mask


register_audio_encoder("test-frames", FrameEncoder)


def make_config(encoder: str = "test-frames", **overrides) -> FoalNetConfig:
    options = {"hidden_size": 8} if encoder == "test-frames" else dict(TINY_WAVLM)
    base = dict(audio_encoder=encoder, audio_options=options, video_dim=D_VIDEO, proj_dim=6, fusion_heads=2)
    return FoalNetConfig(**{**base, **overrides})


def make_model(encoder: str = "test-frames", seed: int = 0, **overrides) -> FoalNet:
    torch.manual_seed(seed)
    return FoalNet(make_config(encoder, **overrides))


def make_batch(audio_lens=(3200, 2000, 1600, 2800), video_lens=(7, 3, 5, 6), labels=(0, 1, 0, 2), seed=1):
    g = torch.Generator().manual_seed(seed)
    B, S, T = len(audio_lens), max(audio_lens), max(video_lens)
    wav_mask = torch.arange(S)[None] < torch.tensor(audio_lens)[:, None]
    vid_mask = torch.arange(T)[None] < torch.tensor(video_lens)[:, None]
    return dict(waveform=torch.randn(B, S, generator=g) * 0.1, waveform_mask=wav_mask,
                video=torch.randn(B, T, D_VIDEO, generator=g), video_mask=vid_mask,
                labels=torch.tensor(labels))


def pad_batch(batch, extra_samples=700, extra_frames=4, fill=float("nan")):
    """Longer tensors with garbage beyond the masks."""
    out = dict(batch)
    for x, m, extra in (("waveform", "waveform_mask", extra_samples), ("video", "video_mask", extra_frames)):
        value, mask = batch[x], batch[m]
        pad_shape = (value.shape[0], extra) + tuple(value.shape[2:])
        value = torch.cat([value, torch.zeros(pad_shape)], dim=1)
        mask = torch.cat([mask, torch.zeros(mask.shape[0], extra, dtype=torch.bool)], dim=1)
        value[~mask] = fill
        out[x], out[m] = value, mask
    return out


def run(model, batch, seed=5, **kw):
    torch.manual_seed(seed)  # same hard-negative draws for both calls being compared
    return model(**batch, **kw)


# ------------------------------------------------------------------------------------- config
def test_config_rejects_bad_values_naming_them():
    with pytest.raises(ValueError, match="modality='both'"):
        FoalNetConfig(modality="both")
    with pytest.raises(ValueError, match="fusion_heads=5 does not divide video_dim=768"):
        FoalNetConfig(fusion_heads=5)
    with pytest.raises(ValueError, match="use_avel=True"):
        FoalNetConfig(modality="audio")
    with pytest.raises(ValueError, match="proj_dropout=1.5"):
        FoalNetConfig(proj_dropout=1.5)
    with pytest.raises(ValueError, match="unique"):
        FoalNetConfig(labels=["a", "a"])
    with pytest.raises(ValueError, match="fusion_heads=3 does not divide the query width 8"):
        FoalNet(make_config(fusion_heads=3, video_dim=9))


def test_presets_and_dict_round_trip():
    paper = FoalNetConfig.paper()
    assert (paper.audio_encoder, paper.video_dim, paper.labels) == ("microsoft/wavlm-large", 768,
                                                                   ["neu", "hap", "sad", "ang"])
    assert (paper.ce_weight, paper.avel_weight, paper.mem_weight) == (1.0, 1.0, 0.1)
    assert paper.tau_init == pytest.approx(2.6593, abs=1e-4) and paper.visual_encoder.endswith("patch14")
    tiny = FoalNetConfig.tiny(labels=["a", "b"])
    assert (tiny.audio_encoder, tiny.video_dim, tiny.labels) == ("offline", 128, ["a", "b"])
    assert FoalNetConfig.from_dict(json.loads(json.dumps(tiny.to_dict()))) == tiny
    with pytest.raises(ValueError, match="unknown FoalNetConfig fields: \\['bogus'\\]"):
        FoalNetConfig.from_dict({"bogus": 1})


# --------------------------------------------------------------------------- calling convention
def test_train_forward_returns_all_parts_with_configured_weights():
    model = make_model(ce_weight=1.0, avel_weight=0.5, mem_weight=2.0).train()
    out = run(model, make_batch())
    assert out.logits.shape == (4, 4) and model.labels == ["neu", "hap", "sad", "ang"]
    assert set(out.losses) == {"ce", "avel", "mem"}
    want = out.losses["ce"] + 0.5 * out.losses["avel"] + 2.0 * out.losses["mem"]
    assert out.loss.item() == pytest.approx(want.item(), rel=1e-6)
    assert out.audio_embeds.shape == (4, 8) and out.video_embeds.shape == (4, D_VIDEO)
    assert torch.allclose(out.audio_align.norm(dim=-1), torch.ones(4), atol=1e-5)


def test_eval_skips_mem_unless_asked_and_no_labels_means_no_loss():
    model = make_model().eval()
    batch = make_batch()
    with torch.no_grad():
        assert set(model(**batch).losses) == {"ce", "avel"}
        assert set(run(model, batch, compute_mem=True).losses) == {"ce", "avel", "mem"}
        unlabelled = {k: v for k, v in batch.items() if k != "labels"}
        out = model(**unlabelled)
    assert out.loss is None and out.losses == {} and out.logits.shape == (4, 4)
    # the logits do not depend on whether MEM ran (fusion computed once, positive half reused)
    with torch.no_grad():
        assert torch.allclose(out.logits, run(model, batch, compute_mem=True).logits, atol=1e-6)


@pytest.mark.parametrize("encoder", ["test-frames", "tiny-wavlm"])
def test_padding_beyond_masks_changes_nothing(encoder):
    model = make_model(encoder).eval()
    batch = make_batch()
    with torch.no_grad():
        a = run(model, batch, compute_mem=True)
        b = run(model, pad_batch(batch), compute_mem=True)
    assert torch.allclose(a.logits, b.logits, atol=1e-5)
    for name in ("ce", "avel", "mem"):
        assert a.losses[name].item() == pytest.approx(b.losses[name].item(), abs=1e-5), name
    assert torch.allclose(a.audio_embeds, b.audio_embeds, atol=1e-5)


def test_batch_of_one_trains_without_nan():
    model = make_model().train()
    out = run(model, make_batch(audio_lens=(2400,), video_lens=(5,), labels=(3,)))
    assert all(torch.isfinite(v) for v in out.losses.values())
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_all_same_label_batch_counts_only_true_pairs_in_mem():
    model = make_model().eval()
    with torch.no_grad():
        out = run(model, make_batch(labels=(2, 2, 2, 2)), compute_mem=True)
        ones = torch.ones(4, dtype=torch.long)
        want = (F.cross_entropy(model.a2v_head(out.audio_embeds), ones)
                + F.cross_entropy(model.v2a_head(out.video_embeds), ones)) / 2
    assert out.losses["mem"].item() == pytest.approx(want.item(), abs=1e-6)
    # all-same labels: every AVEL target is 1, so L_av = mean_i(B * lse_i - sum_j S_ij) > 0 and finite
    assert math.isfinite(out.losses["avel"].item())


@pytest.mark.parametrize("encoder", ["test-frames", "tiny-wavlm"])
def test_zero_length_audio_and_video_give_finite_outputs_and_gradients(encoder):
    model = make_model(encoder).train()
    batch = make_batch(audio_lens=(3200, 0, 1600, 2400), video_lens=(7, 3, 0, 0))
    out = run(model, batch)
    assert torch.isfinite(out.logits).all() and all(torch.isfinite(v) for v in out.losses.values())
    assert out.audio_embeds[1].abs().sum() == 0  # no valid audio frame: pooled fused audio is zero
    assert out.video_embeds[2].abs().sum() == 0 and out.video_embeds[3].abs().sum() == 0
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    # a whole batch without video, in eval with MEM
    model.eval()
    with torch.no_grad():
        out = run(model, make_batch(video_lens=(0, 0, 0, 0)), compute_mem=True)
    assert torch.isfinite(out.logits).all() and all(torch.isfinite(v) for v in out.losses.values())


@pytest.mark.parametrize("video_lens", [(7, 3, 5, 6, 2, 7), (7, 3, 0, 0, 5, 1)])
def test_fusion_in_length_groups_equals_one_padded_block(monkeypatch, video_lens):
    """The fusion attends per length group of its query rows (MEM's repeated rows included):
    the same logits, losses and gradients as one block padded to the batch's longest row,
    also with video-less items (rows without keys, and query rows without frames)."""
    import foalnet.model.foalnet as foalnet_module

    model = make_model(fusion_dropout=0.0).train()
    batch = make_batch(audio_lens=(3200, 2000, 1600, 2800, 900, 3100), video_lens=video_lens,
                       labels=(0, 1, 0, 2, 1, 3))
    results = {}
    for groups in (1, 3, 4):
        monkeypatch.setattr(foalnet_module, "ATTENTION_GROUPS", groups)
        model.zero_grad()
        out = run(model, batch)
        out.loss.backward()
        results[groups] = (out.logits, torch.stack([out.losses[k] for k in sorted(out.losses)]),
                           {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    logits, losses, grads = results[1]
    assert losses.shape == (3,) and len(grads) > 10
    for groups in (3, 4):
        torch.testing.assert_close(results[groups][0], logits, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(results[groups][1], losses, rtol=1e-5, atol=1e-6)
        for name, grad in grads.items():
            torch.testing.assert_close(results[groups][2][name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_cached_fp16_video_and_wrong_video_dim():
    model = make_model().eval()
    batch = make_batch()
    with torch.no_grad():
        full = model(**batch).logits
        half = model(**{**batch, "video": batch["video"].half()}).logits
    assert torch.allclose(full, half, atol=1e-2)
    with pytest.raises(ValueError, match="video embeddings have dim 5, the model expects video_dim=12"):
        model(**{**batch, "video": torch.zeros(4, 7, 5)})


def test_normalize_audio_switch_removes_gain():
    model = make_model(normalize_audio=True).eval()
    batch = make_batch()
    with torch.no_grad():
        a = model(**batch).logits
        b = model(**{**batch, "waveform": batch["waveform"] * 3.0}).logits
    assert torch.allclose(a, b, atol=1e-4)


# ---------------------------------------------------------------------- transformers encoder
def test_hf_frame_mask_matches_transformers_and_empty_inputs_get_no_frame():
    encoder = build_audio_encoder("tiny-wavlm", TINY_WAVLM)
    assert isinstance(encoder, HFAudioEncoder) and encoder.hidden_size == 16
    assert encoder.min_samples == 345 + 9 * 320  # one frame needs 345 samples; SpecAugment needs 10 frames
    lengths = torch.tensor([16000, 5000, 345, 344, 0])
    wav_mask = torch.arange(16000)[None] < lengths[:, None]
    L = int(encoder.model._get_feat_extract_output_lengths(16000))
    ours = encoder.frame_mask(wav_mask, L)
    theirs = encoder.model._get_feature_vector_attention_mask(L, wav_mask.long())
    assert torch.equal(ours[:3], theirs[:3]) and ours.sum(1).tolist() == [L, 15, 1, 0, 0]
    assert theirs[4].any()  # transformers' index trick marks frames valid for an empty input (spec §3)
    with torch.no_grad():  # shorter than one frame in total: padded internally, still no valid frame
        hidden, mask = encoder(torch.zeros(2, 100), torch.zeros(2, 100, dtype=torch.bool))
    assert hidden.shape[0] == 2 and not mask.any() and torch.isfinite(hidden).all()


@pytest.mark.parametrize("learn_tau", [True, False])
def test_gradients_reach_trainable_parts_never_frozen_ones(learn_tau):
    model = make_model("tiny-wavlm", learn_tau=learn_tau).train()
    cnn = model.audio_encoder.model.feature_extractor
    seen = {}
    cnn.register_forward_hook(lambda mod, inp, out: seen.update(requires_grad=out.requires_grad))
    out = run(model, make_batch())
    out.loss.backward()
    assert seen == {"requires_grad": False}  # the frozen CNN builds no autograd graph
    for name, p in cnn.named_parameters():
        assert not p.requires_grad and p.grad is None, name
    assert model.tau.requires_grad is learn_tau
    assert (model.tau.grad is not None and model.tau.grad.abs() > 0) if learn_tau else model.tau.grad is None
    trainable = [n for n, p in model.named_parameters() if p.requires_grad and "masked_spec_embed" not in n]
    no_grad = [n for n in trainable if (p := model.get_parameter(n)).grad is None or p.grad.abs().sum() == 0]
    assert no_grad == []
    assert any(n.startswith("audio_encoder.model.encoder.layers.0") for n in trainable)


# -------------------------------------------------------------------------------- ablations
ABLATIONS = {  # name: (config overrides, modules that must exist, modules that must not)
    "audio": (dict(modality="audio", use_avel=False, use_mem=False), {"audio_encoder"},
              {"a2v", "v2a", "audio_proj", "tau", "a2v_head"}),
    "video": (dict(modality="video", use_avel=False, use_mem=False), set(),
              {"audio_encoder", "a2v", "video_proj", "tau", "v2a_head"}),
    "baseline": (dict(use_avel=False, use_mem=False), {"a2v", "v2a"}, {"audio_proj", "tau", "a2v_head"}),
    "avel": (dict(use_mem=False), {"audio_proj", "video_proj", "tau"}, {"a2v_head", "v2a_head"}),
    "mem": (dict(use_avel=False), {"a2v_head", "v2a_head"}, {"audio_proj", "tau"}),
    "full": (dict(), {"audio_proj", "tau", "a2v", "a2v_head", "classifier"}, set()),
}


@pytest.mark.parametrize("name", list(ABLATIONS))
def test_ablation_builds_only_used_modules_and_all_get_gradients(name):
    overrides, present, absent = ABLATIONS[name]
    model = make_model(**overrides).train()
    assert all(hasattr(model, m) for m in present) and not any(hasattr(model, m) for m in absent)
    batch = make_batch()
    if model.config.modality == "video":
        batch.update(waveform=None, waveform_mask=None)
    if model.config.modality == "audio":
        batch.update(video=None, video_mask=None)
    out = run(model, batch)
    in_features = {"audio": 8, "video": D_VIDEO}.get(model.config.modality, 8 + D_VIDEO)
    assert model.classifier.in_features == in_features and out.logits.shape == (4, 4)
    out.loss.backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []  # DDP would complain about unused parameters


# ------------------------------------------------------------------------------ save / load
@pytest.mark.parametrize("encoder", ["test-frames", "tiny-wavlm"])
def test_save_load_round_trip_gives_identical_outputs(tmp_path, encoder):
    model = make_model(encoder, labels=["a", "b", "c"], visual_encoder="tiny",
                       visual_settings={"crop": "left", "fps": 5}).train()
    batch = make_batch(labels=(0, 1, 2, 1))
    run(model, batch).loss.backward()  # move away from init: a non-trivial state
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["audio_encoder", "config.json",
                                                                  "model.safetensors"]
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert saved["labels"] == ["a", "b", "c"] and saved["visual_settings"] == {"crop": "left", "fps": 5}
    assert (tmp_path / "m" / "audio_encoder" / "config.json").is_file()
    loaded = FoalNet.from_pretrained(tmp_path / "m").eval()
    model.eval()
    assert loaded.labels == ["a", "b", "c"] and loaded.config == model.config
    with torch.no_grad():
        a, b = run(model, batch, compute_mem=True), run(loaded, batch, compute_mem=True)
    assert torch.equal(a.logits, b.logits)
    assert all(a.losses[k].item() == b.losses[k].item() for k in a.losses)


def test_from_pretrained_names_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json: missing"):
        FoalNet.from_pretrained(tmp_path)


def test_registry_has_offline_entry_as_lazy_string():
    assert AUDIO_ENCODERS["offline"] == "foalnet.model.audio_offline:OfflineAudioEncoder"


def test_audio_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        model = make_model("tiny-wavlm", audio_gradient_checkpointing=checkpointing,
                           audio_options={**TINY_WAVLM, "mask_time_prob": 0.0, "layerdrop": 0.0}).train()
        assert model.audio_encoder.model.encoder.gradient_checkpointing is checkpointing
        run(model, make_batch()).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-6) for n in grads[0])


# ---------------------------------------------------------------------------- data parallel
def _trim(batch):
    """Cut a sub-batch's padding down to its own longest item (ranks differ in lengths)."""
    S, T = int(batch["waveform_mask"].sum(1).max()), int(batch["video_mask"].sum(1).max())
    return dict(batch, waveform=batch["waveform"][:, :S], waveform_mask=batch["waveform_mask"][:, :S],
                video=batch["video"][:, :T], video_mask=batch["video_mask"][:, :T])


def _data_parallel_worker(rank: int, world: int, init_file: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    model = make_model().eval()  # same seed: same weights on both ranks
    full = make_batch(audio_lens=(3200, 2000, 1600, 2800, 2400), video_lens=(7, 3, 5, 6, 2), labels=(0, 1, 0, 2, 1))
    with torch.no_grad():
        ref = model(**full)  # single-process reference on the whole batch (before joining the group)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        rows = (slice(0, 2), slice(2, 5))[rank]
        local = _trim({k: v[rows] for k, v in full.items()})
        with torch.no_grad():
            out = run(model, local, compute_mem=True, seed=rank)
        losses = [torch.zeros(2) for _ in range(world)]
        dist.all_gather(losses, torch.stack([out.losses["avel"], out.losses["mem"]]))
        assert torch.allclose(out.logits, ref.logits[rows], atol=1e-5)
        dp_avel = (2 * losses[0][0] + 3 * losses[1][0]) / 5  # each rank averages its own rows
        assert abs(dp_avel.item() - ref.losses["avel"].item()) < 1e-5, (dp_avel, ref.losses["avel"])
        assert all(torch.isfinite(x).all() for x in losses)
        model.train()
        out = run(model, local, seed=rank)
        out.loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    finally:
        dist.destroy_process_group()


def test_data_parallel_two_gloo_processes_match_the_single_process_batch(tmp_path):
    import torch.multiprocessing as mp

    # fork: the children reuse the imported modules (spawn would re-import torch)
    mp.start_processes(_data_parallel_worker, args=(2, str(tmp_path / "init")), nprocs=2, join=True,
                       start_method="fork")


def test_training_step_under_cpu_bf16_autocast_matches_float32():
    """mixed_precision=bf16 on CPU: the lean attention / GELU ops of the WavLM encoder and of
    the fusion cast for themselves (autocast does not reach backward). Dropout off, the same
    hard negatives: loss and gradients close to the float32 step, each in its parameter's dtype."""
    model = make_model("tiny-wavlm", proj_dropout=0.0, fusion_dropout=0.0).train()
    batch = make_batch()

    def step(autocast: bool):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = run(model, batch)
        out.loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        assert all(g.dtype == torch.float32 for g in grads.values())
        return out.loss.item(), torch.cat([g.flatten() for g in grads.values()])

    (loss32, grad32), (loss16, grad16) = step(False), step(True)
    assert loss16 == pytest.approx(loss32, rel=0.02)
    assert torch.isfinite(grad16).all()
    assert torch.nn.functional.cosine_similarity(grad16, grad32, dim=0) > 0.99
