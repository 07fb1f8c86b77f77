"""import-reference: a state dict with the original MultiTaskModel's key layout (built here) loads
with no missing/unexpected keys, and the imported model's eval logits, AVEL and MEM equal a
straightforward computation of spec §1 on the same tensors (hand-written attention with -10000)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from foalnet.cli import main
from foalnet.model import FoalNet
from foalnet.model.reference import REFERENCE_LABELS, convert_reference_state_dict, import_reference

HA, DV, P, HEADS = 16, 12, 8, 4  # audio width, video width, projection width, heads (original: 4)
WAVLM = dict(hidden_size=HA, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
             conv_dim=[8, 8, 8, 8], conv_stride=[5, 4, 4, 4], conv_kernel=[10, 8, 4, 4],
             feat_extract_norm="layer", num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
             num_buckets=32, max_bucket_distance=128)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(config folder, reference WavLM, original-layout state dict with old and new weight-norm names)."""
    from transformers import WavLMConfig, WavLMModel

    folder = tmp_path_factory.mktemp("wavlm-config")
    WavLMConfig(**WAVLM).save_pretrained(folder)
    torch.manual_seed(0)
    wavlm = WavLMModel(WavLMConfig(**WAVLM)).eval()
    state = {f"wavlm.{k}": v.clone() for k, v in wavlm.state_dict().items()}
    g = torch.Generator().manual_seed(3)
    rnd = lambda *shape: torch.randn(*shape, generator=g) * 0.3  # noqa: E731
    for name, q_dim, kv_dim in (("a2v", HA, DV), ("v2a", DV, HA)):
        for i in range(2):
            for leaf, d_in in (("w_q", q_dim), ("w_k", kv_dim), ("w_v", kv_dim), ("w_concat", q_dim)):
                state[f"{name}.{i}.{leaf}.weight"], state[f"{name}.{i}.{leaf}.bias"] = rnd(q_dim, d_in), rnd(q_dim)
            state[f"{name}.{i}.ln.weight"], state[f"{name}.{i}.ln.bias"] = 1 + rnd(q_dim), rnd(q_dim)
    for name, d_in in (("audio_project", HA), ("video_project", DV)):
        state[f"{name}.linear1.weight"], state[f"{name}.linear2.weight"] = rnd(P, d_in), rnd(P, P)
        state[f"{name}.layer_norm.weight"], state[f"{name}.layer_norm.bias"] = 1 + rnd(P), rnd(P)
    state["a2v_head.weight"], state["a2v_head.bias"] = rnd(2, HA), rnd(2)
    state["v2a_head.weight"], state["v2a_head.bias"] = rnd(2, DV), rnd(2)
    state["cls_head.weight"], state["cls_head.bias"] = rnd(4, HA + DV), rnd(4)
    state["temp"] = torch.tensor(1.7)
    old = {k.replace("parametrizations.weight.original0", "weight_g")
            .replace("parametrizations.weight.original1", "weight_v"): v for k, v in state.items()}
    assert old.keys() != state.keys()
    return folder, wavlm, {"new": state, "old": old}


def make_batch():
    g = torch.Generator().manual_seed(11)
    audio_lens, video_lens = torch.tensor([8000, 5000, 6400, 3300]), torch.tensor([6, 3, 9, 4])
    wav_mask = torch.arange(8000)[None] < audio_lens[:, None]
    vid_mask = torch.arange(9)[None] < video_lens[:, None]
    wav = torch.randn(4, 8000, generator=g) * wav_mask
    vid = torch.randn(4, 9, DV, generator=g) * vid_mask[..., None]
    return wav, wav_mask, vid, vid_mask, torch.tensor([0, 1, 0, 2])


# ------------------------------------------------------- straightforward spec §1 computation
def ref_layer(sd, prefix, q_in, kv, kv_mask):
    lin = lambda x, name: x @ sd[f"{prefix}.{name}.weight"].T + sd[f"{prefix}.{name}.bias"]  # noqa: E731
    q, k, v = lin(q_in, "w_q"), lin(kv, "w_k"), lin(kv, "w_v")
    B, Lq, D = q.shape
    d = D // HEADS
    split = lambda x: x.view(B, x.shape[1], HEADS, d).transpose(1, 2)  # noqa: E731
    score = split(q) @ split(k).transpose(2, 3) / math.sqrt(d)
    score = score.masked_fill(~kv_mask[:, None, None, :], -10000)
    out = (score.softmax(-1) @ split(v)).transpose(1, 2).reshape(B, Lq, D)
    out = lin(out, "w_concat")
    return F.layer_norm(out + q_in, (D,), sd[f"{prefix}.ln.weight"], sd[f"{prefix}.ln.bias"])


def ref_stack(sd, name, q, q_mask, kv, kv_mask):
    for i in range(2):
        q = ref_layer(sd, f"{name}.{i}", q, kv, kv_mask)  # always the ORIGINAL kv
    q = q * q_mask[..., None]
    return q.sum(1) / q_mask.sum(1, keepdim=True)


def ref_project(sd, name, x):
    e1 = x @ sd[f"{name}.linear1.weight"].T
    e2 = F.gelu(e1) @ sd[f"{name}.linear2.weight"].T
    out = F.layer_norm(e1 + e2, (P,), sd[f"{name}.layer_norm.weight"], sd[f"{name}.layer_norm.bias"])
    return out / out.norm(dim=-1, keepdim=True)


def reference_forward(sd, wavlm, wav, wav_mask, vid, vid_mask, labels, seed):
    with torch.no_grad():
        hidden = wavlm(wav, attention_mask=wav_mask.long()).last_hidden_state
        a_mask = wavlm._get_feature_vector_attention_mask(hidden.shape[1], wav_mask.long())
        audio, video = hidden * a_mask[..., None], vid * vid_mask[..., None]
        a = ref_project(sd, "audio_project", audio.sum(1) / a_mask.sum(1, keepdim=True))
        v = ref_project(sd, "video_project", video.sum(1) / vid_mask.sum(1, keepdim=True))
        sim_av, sim_va = a @ v.T / sd["temp"], v @ a.T / sd["temp"]
        targets = (labels[:, None] == labels[None, :]).float()
        nll = lambda s: -(F.log_softmax(s, 1) * targets).sum(1).mean()  # noqa: E731
        avel = (nll(sim_av) + nll(sim_va)) / 2
        same = labels[:, None] == labels[None, :]
        probs_av = sim_av.clone().masked_fill(same, -10000).softmax(1)
        probs_va = sim_va.clone().masked_fill(same, -10000).softmax(1)
        torch.manual_seed(seed)
        neg_v = torch.multinomial(probs_av, 1)[:, 0]
        neg_a = torch.multinomial(probs_va, 1)[:, 0]
        audio_out = ref_stack(sd, "a2v", audio, a_mask, video, vid_mask)
        video_out = ref_stack(sd, "v2a", video, vid_mask, audio, a_mask)
        logits = torch.cat([audio_out, video_out], 1) @ sd["cls_head.weight"].T + sd["cls_head.bias"]
        a2v_neg = ref_stack(sd, "a2v", audio, a_mask, video[neg_v], vid_mask[neg_v])
        v2a_neg = ref_stack(sd, "v2a", video, vid_mask, audio[neg_a], a_mask[neg_a])
        itm = torch.tensor([1] * 4 + [0] * 4)
        head = lambda x, n: x @ sd[f"{n}.weight"].T + sd[f"{n}.bias"]  # noqa: E731
        mem = (F.cross_entropy(head(torch.cat([audio_out, a2v_neg]), "a2v_head"), itm)
               + F.cross_entropy(head(torch.cat([video_out, v2a_neg]), "v2a_head"), itm)) / 2
    return logits, avel, mem


# ---------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("naming", ["new", "old"])
def test_import_reference_cli_matches_straightforward_computation(tmp_path, reference, naming):
    folder, wavlm, states = reference
    torch.save(states[naming], tmp_path / "orig.pt")
    argv = ["import-reference", str(tmp_path / "orig.pt"), "--audio-encoder", str(folder), "--out", str(tmp_path / "m")]
    assert main(argv) == 0
    model = FoalNet.from_pretrained(tmp_path / "m").eval()
    assert model.labels == REFERENCE_LABELS == ["hap", "neu", "sad", "ang"]
    assert model.config.fusion_layers == 2 and model.config.video_dim == DV and model.config.proj_dim == P
    wav, wav_mask, vid, vid_mask, labels = make_batch()
    want_logits, want_avel, want_mem = reference_forward(states["new"], wavlm, wav, wav_mask, vid, vid_mask,
                                                         labels, seed=21)
    torch.manual_seed(21)
    with torch.no_grad():
        out = model(waveform=wav, waveform_mask=wav_mask, video=vid, video_mask=vid_mask, labels=labels,
                    compute_mem=True)
    assert torch.allclose(out.logits, want_logits, atol=1e-5), (out.logits - want_logits).abs().max()
    assert out.losses["avel"].item() == pytest.approx(want_avel.item(), abs=1e-5)
    assert out.losses["mem"].item() == pytest.approx(want_mem.item(), abs=1e-5)


@pytest.mark.parametrize("naming", ["new", "old"])
def test_every_original_key_maps_to_exactly_one_foalnet_key(reference, naming):
    folder, _, states = reference
    from foalnet.model.reference import reference_config
    from foalnet.model.audio import hf_encoder_from_config

    model = FoalNet(reference_config(states[naming], str(folder)), audio_encoder=hf_encoder_from_config(str(folder)))
    mapped, unmapped = convert_reference_state_dict(states[naming], set(model.state_dict()))
    assert unmapped == [] and set(mapped) == set(model.state_dict())
    assert mapped["tau"].item() == pytest.approx(1.7) and "a2v.layers.1.out_proj.weight" in mapped


def test_import_reference_rejects_extra_and_missing_keys_naming_them(tmp_path, reference, caplog):
    folder, _, states = reference
    extra = dict(states["new"], **{"spk_head.weight": torch.zeros(2, 2)})
    torch.save(extra, tmp_path / "extra.pt")
    argv = ["import-reference", str(tmp_path / "extra.pt"), "--audio-encoder", str(folder), "--out", str(tmp_path / "m")]
    assert main(argv) == 1
    assert "spk_head.weight" in caplog.text and not (tmp_path / "m").exists()
    missing = {k: v for k, v in states["new"].items() if k != "v2a.1.ln.bias"}
    torch.save({"state_dict": missing}, tmp_path / "missing.pt")  # wrapped dicts are unwrapped
    with pytest.raises(ValueError, match="missing keys \\['v2a.layers.1.norm.bias'\\]"):
        import_reference(tmp_path / "missing.pt", str(folder), tmp_path / "m2")


@pytest.mark.parametrize("content", [b"", b"junk\n", b"PK\x03\x04 not a zip"])
def test_import_reference_unreadable_file_is_a_named_error(tmp_path, content, caplog):
    """Junk, empty or truncated files fail with the file's name (exit 1), never a traceback."""
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    argv = ["import-reference", str(bad), "--audio-encoder", "unused", "--out", str(tmp_path / "m")]
    assert main(argv) == 1
    assert f"{bad}: not a readable torch checkpoint" in caplog.text and not (tmp_path / "m").exists()
