"""FoalNet's optimised paths compute the same function as a straightforward reading of spec §1.

The reference is benchmarks/original_style.py (imported by path): fixed 6 s / 180-frame padding
(here scaled down), hand-written attention with a -10000 fill, fusion stacks run three times,
negatives drawn row by row, transformers' WavLM encoder on the padded batch. FoalNet: dynamic
padding, fused SDPA, one fusion pass on packed query frames, vectorised negatives, the packed
WavLM encoder with the positional conv by FFT. Same weights (copied through the documented mapping), same inputs, same seeded global
RNG for the negatives -> logits, losses (and gradients) agree within 1e-5 in float32.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from foalnet.model import FoalNet, FoalNetConfig
from foalnet.model.audio import TINY_WAVLM_DEFAULTS
from foalnet.model.losses import draw_negatives

ROOT = Path(__file__).resolve().parents[1]
ATOL = 1e-5
AUDIO_DIM, VIDEO_DIM = 64, 24
MAX_SAMPLES, MAX_FRAMES = 8000, 12  # the reference's fixed padding (6 s / 180 frames, scaled down)
NO_DROPOUT = dict(hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
                  final_dropout=0.0, layerdrop=0.0, mask_time_prob=0.0)


def _load_reference():
    name = "foalnet_original_style"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / "original_style.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


ref = _load_reference()


def _wavlm_folder(tmp_path_factory) -> Path:
    """A tiny random WavLM saved to disk, so FoalNet loads it through its real loading code."""
    from transformers import WavLMConfig, WavLMModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("wavlm")
    # WavLM-Large's positional conv shape (128 taps, 16 groups): FoalNet computes it by FFT
    pos_conv = dict(num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16)
    WavLMModel(WavLMConfig(**{**TINY_WAVLM_DEFAULTS, **NO_DROPOUT, **pos_conv})).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def wavlm_dir(tmp_path_factory) -> Path:
    return _wavlm_folder(tmp_path_factory)


def _pair(wavlm_dir: Path, dropout: float = 0.0):
    """(FoalNet, reference with FoalNet's weights). dropout=0 makes train mode deterministic."""
    torch.manual_seed(1)
    config = FoalNetConfig.paper(audio_encoder=str(wavlm_dir), video_dim=VIDEO_DIM, proj_dim=16,
                                 proj_dropout=dropout, fusion_dropout=dropout)
    model = FoalNet(config)
    with torch.no_grad():  # larger weights than the N(0, 0.02) init, so that every part matters:
        for name, p in model.named_parameters():  # at init the fused output hardly sees the keys
            if not name.startswith("audio_encoder"):
                p.add_(0.1 * torch.randn_like(p)) if p.dim() < 2 else p.mul_(10.0)
    rconfig = ref.OriginalStyleConfig(audio_dim=AUDIO_DIM, video_dim=VIDEO_DIM, proj_dim=16, num_heads=4,
                                      proj_dropout=dropout, fusion_dropout=dropout, max_samples=MAX_SAMPLES,
                                      max_frames=MAX_FRAMES)
    from transformers import WavLMModel

    encoder = WavLMModel.from_pretrained(wavlm_dir)
    reference = ref.OriginalStyleFoalNet.from_foalnet(model, rconfig, encoder)
    return model, reference


def _items(seed: int, samples=(8000, 3000, 5200, 1700, 6400, 2500), frames=(12, 5, 9, 3, 12, 1)):
    gen = torch.Generator().manual_seed(seed)
    waves = [0.3 * torch.randn(n, generator=gen) for n in samples]
    videos = [torch.randn(t, VIDEO_DIM, generator=gen) for t in frames]
    return waves, videos


def _dynamic(waves, videos):
    """Pad to the longest item only (what FoalNet's collator does)."""
    S, T = max(len(w) for w in waves), max(len(v) for v in videos)
    return ref.pad_fixed(waves, videos, S, T)


def _run(model, batch, labels, seed: int, **kwargs):
    torch.manual_seed(seed)  # the negatives come from the global RNG
    wav, wav_mask, vid, vid_mask = batch
    return model(waveform=wav, waveform_mask=wav_mask, video=vid, video_mask=vid_mask, labels=labels, **kwargs)


def _assert_same(ours, theirs, parts=("ce", "avel", "mem")):
    torch.testing.assert_close(ours.logits, theirs.logits, atol=ATOL, rtol=0)
    for part in parts:
        torch.testing.assert_close(ours.losses[part], theirs.losses[part], atol=ATOL, rtol=0, msg=part)
    torch.testing.assert_close(ours.loss, theirs.loss, atol=ATOL, rtol=0)


def test_dynamic_padding_is_shorter_than_the_reference_padding():
    waves, videos = _items(0, samples=(3000, 5200), frames=(5, 9))
    wav, _, vid, _ = _dynamic(waves, videos)
    assert wav.shape == (2, 5200) and vid.shape == (2, 9, VIDEO_DIM)
    wav, mask, vid, vmask = ref.pad_fixed(waves, videos, MAX_SAMPLES, MAX_FRAMES)
    assert wav.shape == (2, MAX_SAMPLES) and vid.shape == (2, MAX_FRAMES, VIDEO_DIM)
    assert mask.sum(1).tolist() == [3000, 5200] and vmask.sum(1).tolist() == [5, 9]


def test_mapping_covers_every_parameter(wavlm_dir):
    model, reference = _pair(wavlm_dir)
    mapped = ref.foalnet_state_dict_to_original(model.state_dict())
    assert set(mapped) == set(reference.state_dict())
    for name, tensor in reference.state_dict().items():
        assert torch.equal(tensor, mapped[name]), name


def test_looped_draws_equal_vectorised_draws_on_the_same_seed():
    probs_av = torch.softmax(torch.randn(7, 7), dim=1)
    probs_va = torch.softmax(torch.randn(7, 7), dim=1)
    torch.manual_seed(5)
    idx_av, idx_va = draw_negatives(probs_av, probs_va)
    torch.manual_seed(5)
    loop = ref.OriginalStyleFoalNet.draw_negatives_loop
    assert idx_av.tolist() == loop(None, probs_av)
    assert idx_va.tolist() == loop(None, probs_va)


@pytest.mark.parametrize("labels", [[0, 1, 1, 2, 3, 0], [2, 2, 2, 2, 2, 2]], ids=["mixed", "all-same"])
def test_eval_mode_with_padding_and_mem(wavlm_dir, labels):
    model, reference = _pair(wavlm_dir, dropout=0.3)  # dropout is inactive in eval mode
    model.eval(), reference.eval()
    waves, videos = _items(2)
    y = torch.tensor(labels)
    with torch.no_grad():
        ours = _run(model, _dynamic(waves, videos), y, seed=3, compute_mem=True)
        theirs = _run(reference, ref.pad_fixed(waves, videos, MAX_SAMPLES, MAX_FRAMES), y, seed=3)
        plain = _run(model, _dynamic(waves, videos), y, seed=3)  # default eval: no MEM, same logits
    _assert_same(ours, theirs)
    torch.testing.assert_close(plain.logits, theirs.logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(ours.audio_embeds, theirs.audio_embeds, atol=ATOL, rtol=0)
    torch.testing.assert_close(ours.video_embeds, theirs.video_embeds, atol=ATOL, rtol=0)
    assert "mem" not in plain.losses
    assert theirs.losses["mem"] > 0


def test_eval_mode_without_labels_gives_the_same_logits(wavlm_dir):
    model, reference = _pair(wavlm_dir)
    model.eval(), reference.eval()
    waves, videos = _items(4)
    with torch.no_grad():
        ours = _run(model, _dynamic(waves, videos), None, seed=0)
        theirs = _run(reference, ref.pad_fixed(waves, videos, MAX_SAMPLES, MAX_FRAMES), None, seed=0)
    assert ours.loss is None and theirs.loss is None
    torch.testing.assert_close(ours.logits, theirs.logits, atol=ATOL, rtol=0)


def test_train_mode_losses_and_gradients(wavlm_dir):
    model, reference = _pair(wavlm_dir, dropout=0.0)
    model.train(), reference.train()
    waves, videos = _items(6)
    y = torch.tensor([3, 1, 0, 1, 2, 3])
    ours = _run(model, _dynamic(waves, videos), y, seed=7)
    theirs = _run(reference, ref.pad_fixed(waves, videos, MAX_SAMPLES, MAX_FRAMES), y, seed=7)
    _assert_same(ours, theirs)
    ours.loss.backward()
    theirs.loss.backward()
    ref_params = dict(reference.named_parameters())
    mapped = {new: old for old, new in ((n, ref.foalnet_state_dict_to_original({n: p}).popitem()[0])
                                        for n, p in model.named_parameters())}
    checked = 0
    for name, p in ref_params.items():
        ours_p = dict(model.named_parameters())[mapped[name]]
        assert (p.grad is None) == (ours_p.grad is None), name
        if p.grad is not None:
            torch.testing.assert_close(ours_p.grad, p.grad, atol=1e-4, rtol=1e-4, msg=name)
            checked += 1
    assert checked > 40  # fusion, heads, projections, tau and the WavLM transformer all compared


def test_a_different_seed_draws_different_negatives_and_changes_mem(wavlm_dir):
    """Guards the test above: MEM really depends on the draws, so agreeing on it is informative."""
    model, _ = _pair(wavlm_dir)
    model.train()
    waves, videos = _items(6)
    y = torch.tensor([3, 1, 0, 1, 2, 3])
    batch = _dynamic(waves, videos)
    with torch.no_grad():
        mems = [_run(model, batch, y, seed=s).losses["mem"].item() for s in range(6)]
    assert max(mems) - min(mems) > 100 * ATOL
