"""Visual encoders (tiny, CLIP from a local folder), the feature store, SpanEmbedder, embed_video."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from foalnet.features.base import (ENCODERS, FeatureError, VisualEncoder, build_visual_encoder,
                                   encoder_slug)
from foalnet.features.extract import SpanEmbedder, embed_video
from foalnet.features.store import VisualFeatureStore, feature_key, store_slug
from foalnet.features.tiny import TinyVisualEncoder, area_thumbnail, centre_square
from test_video_io import cartoon_face, make_avi


# ----------------------------------------------------------------------------- tiny
def test_area_thumbnail_pinned_by_hand():
    img = np.zeros((1, 67, 67, 3), np.uint8)
    img[0, 1:33, 1:33] = (100, 0, 0)  # the top-left block after trimming 1 px each side
    thumb = area_thumbnail(img, 2)
    # 67 = 2 * 33 + 1: blocks of 33 px from offset 0; the red square fills 32x32 of 33x33
    assert thumb.shape == (1, 2, 2)
    assert thumb[0, 0, 0] == pytest.approx(0.299 * 100 * 32 * 32 / 33 ** 2, rel=1e-5)
    assert thumb[0, 0, 1] == thumb[0, 1, 0] == thumb[0, 1, 1] == 0
    small = area_thumbnail(np.full((1, 3, 3, 3), 10, np.uint8), 6)  # smaller than the grid
    assert small.shape == (1, 6, 6) and np.allclose(small, 10.0, atol=1e-4)


def test_centre_square_is_centred():
    frames = np.arange(2 * 6 * 4 * 3).reshape(2, 6, 4, 3)
    sq = centre_square(frames, 1.0)
    assert sq.shape == (2, 4, 4, 3) and (sq == frames[:, 1:5]).all()


def test_tiny_shapes_dtype_and_pinned_projection():
    enc = build_visual_encoder("tiny")
    assert isinstance(enc, TinyVisualEncoder) and enc.dim == 128
    # the projection is random signs from a seeded integer stream: same bits everywhere
    assert enc.settings()["projection_sha1"] == "33083d4c8262"
    assert set(np.unique(np.abs(enc.projection))) == {np.float32(1 / 32)}
    out = enc.embed(np.random.default_rng(0).integers(0, 256, (5, 480, 360, 3), np.uint8))
    assert out.shape == (5, 128) and out.dtype == np.float32
    assert 0.7 < out.std() < 1.3  # standardised input -> about unit variance


def test_tiny_constant_image_maps_to_zero():
    out = TinyVisualEncoder().embed(np.full((2, 48, 48, 3), 77, np.uint8))
    np.testing.assert_allclose(out, 0.0, atol=1e-6)


def test_tiny_is_deterministic_and_ignores_lighting_but_sees_the_mouth():
    a, b = TinyVisualEncoder(), TinyVisualEncoder()
    face = cartoon_face()
    darker = (face.astype(np.float32) * 0.6 + 30).round().astype(np.uint8)  # lighting change
    smile = face.copy()
    smile[330:340, 120:140] = (150, 40, 50)  # mouth corners drawn up...
    smile[330:340, 220:240] = (150, 40, 50)
    e = a.embed(np.stack([face, darker, smile]))
    np.testing.assert_array_equal(e, b.embed(np.stack([face, darker, smile])))
    lighting = np.linalg.norm(e[0] - e[1])
    expression = np.linalg.norm(e[0] - e[2])
    assert lighting < 0.05 * np.linalg.norm(e[0])
    assert expression > 5 * lighting


def test_embed_images_mixed_sizes_equals_one_by_one():
    enc = TinyVisualEncoder()
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, s, np.uint8) for s in [(40, 30, 3), (64, 64, 3), (40, 30, 3)]]
    batched = enc.embed_images(images)
    single = np.concatenate([enc.embed(im[None]) for im in images])
    np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-5)


class _MeanColour(VisualEncoder):
    """A 3-d encoder for plumbing tests: the mean RGB of each image."""

    name, dim = "mean-colour", 3

    def settings(self) -> dict:
        return {}

    def embed(self, frames: np.ndarray) -> np.ndarray:
        return frames[:, ::8, ::8].reshape(len(frames), -1, 3).mean(axis=1).astype(np.float32)


def test_base_embed_images_groups_sizes_and_keeps_order():
    images = [np.full((4, 4, 3), 1, np.uint8), np.full((2, 6, 3), 2, np.uint8),
              np.full((4, 4, 3), 3, np.uint8)]
    np.testing.assert_array_equal(_MeanColour().embed_images(images)[:, 0], [1, 2, 3])


def test_slugs_and_registry(tmp_path):
    assert encoder_slug("tiny") == "tiny"
    assert encoder_slug("openai/clip-vit-large-patch14") == "openai--clip-vit-large-patch14"
    folder = tmp_path / "my clip"
    folder.mkdir()
    assert encoder_slug(str(folder)) == "my_clip"
    assert store_slug("tiny") == "tiny" and store_slug("tiny", "face", 5) == "tiny-face-fps5"
    assert ENCODERS["tiny"].endswith(":TinyVisualEncoder")


# ----------------------------------------------------------------------------- CLIP
@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    """A tiny random CLIP vision tower + processor saved like a hub checkpoint."""
    torch = pytest.importorskip("torch")
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from foalnet.features.clip import _image_processor_class

    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, image_size=32, patch_size=8,
                              projection_dim=24)
    folder = tmp_path_factory.mktemp("ckpt") / "clip-tiny"
    CLIPVisionModelWithProjection(config).save_pretrained(folder)
    _image_processor_class()(size={"shortest_edge": 32},
                             crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def test_clip_loads_from_a_folder_and_gives_projected_embeddings(clip_dir):
    import torch
    from transformers import CLIPVisionModelWithProjection

    from foalnet.features.clip import _image_processor_class

    enc = build_visual_encoder(str(clip_dir))
    assert enc.dim == 24 and enc.slug == "clip-tiny"
    frames = np.random.default_rng(0).integers(0, 256, (3, 480, 360, 3), np.uint8)
    out = enc.embed(frames)
    assert out.shape == (3, 24) and out.dtype == np.float32
    # the same numbers as transformers' own pipeline (processor -> image_embeds)
    model = CLIPVisionModelWithProjection.from_pretrained(clip_dir).eval()
    pixels = _image_processor_class().from_pretrained(clip_dir)(
        images=list(frames), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        ref = model(pixel_values=pixels).image_embeds.numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    settings = enc.settings()
    assert settings["projection_dim"] == 24 and len(settings["weights_sha1"]) == 12
    assert not any(p.requires_grad for p in enc.model.parameters())


def test_clip_mixed_sizes(clip_dir):
    enc = build_visual_encoder(str(clip_dir))
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (50, 40, 3), np.uint8), rng.integers(0, 256, (64, 64, 3), np.uint8)]
    out = enc.embed_images(images)
    np.testing.assert_allclose(out[1], enc.embed(images[1][None])[0], rtol=1e-4, atol=1e-5)


def test_missing_clip_folder_fails_clearly(tmp_path):
    with pytest.raises(OSError):
        build_visual_encoder(str(tmp_path / "nowhere"))


# ----------------------------------------------------------------------------- store
META = {"encoder": "mean-colour", "dim": 3, "crop": "side", "fps": None}


def test_store_round_trip_memory_mapped(tmp_path):
    store = VisualFeatureStore.create(tmp_path, "mean-colour", META)
    feats = np.arange(12, dtype=np.float32).reshape(4, 3) / 7
    store.put("utt1", "k1", feats)
    again = VisualFeatureStore.open(tmp_path)  # the only store: found without a name
    assert again.dim == 3 and again.meta == META and again.has("utt1") and "utt1" in again
    loaded = again.load("utt1")
    assert isinstance(loaded, np.memmap) and loaded.dtype == np.float16
    np.testing.assert_array_equal(loaded, feats.astype(np.float16))
    assert again.key_of("utt1") == "k1" and not again.has("utt2")
    assert VisualFeatureStore.open(tmp_path, encoder="mean-colour").has("utt1")


def test_store_errors_name_the_file(tmp_path):
    store = VisualFeatureStore.create(tmp_path, "mean-colour", META)
    with pytest.raises(FeatureError, match="no visual features for 'ghost'"):
        store.load("ghost")
    path = store.put("bad", "kbad", np.ones((2, 3)))
    path.write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(FeatureError) as err:
        store.load("bad")
    assert str(path) in str(err.value)
    path2 = store.put("gone", "kgone", np.ones((2, 3)))
    path2.unlink()
    assert not store.has("gone")
    with pytest.raises(FeatureError, match="missing"):
        store.load("gone")
    np.save(store.root / "arrays" / "kwrong.npy", np.ones((2, 5), np.float16))
    with open(store.root / "index.jsonl", "a") as fh:
        fh.write(json.dumps({"id": "wrong", "key": "kwrong", "file": "arrays/kwrong.npy",
                             "frames": 2}) + "\n")
    with pytest.raises(FeatureError, match=r"float16 \[T, 3\]"):
        VisualFeatureStore.open(tmp_path).load("wrong")


def test_store_open_errors(tmp_path):
    with pytest.raises(FeatureError, match="no visual feature store"):
        VisualFeatureStore.open(tmp_path)
    VisualFeatureStore.create(tmp_path, "a", META)
    VisualFeatureStore.create(tmp_path, "b", META)
    with pytest.raises(FeatureError, match="several"):
        VisualFeatureStore.open(tmp_path)
    with pytest.raises(FeatureError, match="no visual features for encoder 'c'"):
        VisualFeatureStore.open(tmp_path, encoder="c")


def test_store_refuses_other_settings(tmp_path):
    VisualFeatureStore.create(tmp_path, "s", META)
    with pytest.raises(FeatureError, match="crop: stored 'side', asked 'full'"):
        VisualFeatureStore.create(tmp_path, "s", {**META, "crop": "full"})


def test_torn_index_line_is_skipped(tmp_path):
    store = VisualFeatureStore.create(tmp_path, "s", META)
    store.put("a", "ka", np.ones((1, 3)))
    store.put("b", "kb", np.ones((2, 3)))
    index = store.root / "index.jsonl"
    index.write_text(index.read_text()[:-15])  # an interrupted append
    again = VisualFeatureStore.open(tmp_path)
    assert again.has("a") and not again.has("b")
    writer = VisualFeatureStore.create(tmp_path, "s", META)
    writer.put("c", "kc", np.ones((1, 3)))  # the next append starts a new line
    assert VisualFeatureStore.open(tmp_path).has("c")


def test_shards_of_several_writers_are_read_and_merged(tmp_path):
    """Process shards (features/workers.py) are read after index.jsonl and merged into it."""
    main = VisualFeatureStore.create(tmp_path, "s", META)
    main.put("a", "ka", np.ones((1, 3)))
    other = VisualFeatureStore.create(tmp_path, "s", META, shard="r1")
    other.put("b", "kb", np.ones((2, 3)))
    other.put("a", "ka2", np.zeros((1, 3)))  # later than index.jsonl's line: wins
    assert (other.root / "index.r1.jsonl").is_file()
    store = VisualFeatureStore.open(tmp_path)
    assert set(store.ids) == {"a", "b"} and store.key_of("a") == "ka2"
    store.merge_index()
    assert not list(store.root.glob("index.r*.jsonl"))
    lines = (store.root / "index.jsonl").read_text().splitlines()
    assert len(lines) == 2 and VisualFeatureStore.open(tmp_path).key_of("a") == "ka2"


def test_put_never_overwrites_a_different_array(tmp_path):
    store = VisualFeatureStore.create(tmp_path, "s", META)
    first = store.put("a", feature_key({"span": 1}), np.zeros((2, 3)))
    second = store.put("a", feature_key({"span": 2}), np.ones((3, 3)))
    assert first != second and first.is_file() and second.is_file()
    assert VisualFeatureStore.open(tmp_path).load("a").shape == (3, 3)  # the last entry wins


# ----------------------------------------------------------------------------- embedder
@pytest.fixture(scope="module")
def avi(tmp_path_factory) -> Path:
    return make_avi(tmp_path_factory.mktemp("video") / "d.avi", seconds=2.0)


def _run_embedder(avi, spans, regions, batch_size):
    from foalnet.data.video import walk_spans

    embedder = SpanEmbedder(_MeanColour(), regions, batch_size)
    out = {}
    for event in walk_spans(avi, spans):
        out.update(embedder.feed(event))
    out.update(embedder.finish())
    return out, embedder.embedded_frames


def test_embedder_shares_frames_of_the_same_region_and_batches_invisibly(avi):
    spans = [(0.0, 1.0), (0.5, 1.5), (0.5, 1.5)]
    out, n = _run_embedder(avi, spans, ["left", "left", "right"], batch_size=7)
    assert [out[i].shape for i in range(3)] == [(30, 3), (30, 3), (30, 3)]
    assert n == 45 + 30  # left frames 0..44 once, right frames 15..44
    assert all(out[i].dtype == np.float16 for i in range(3))
    np.testing.assert_array_equal(out[0][15:], out[1][:15])  # the shared frames
    assert out[2][:, 2].mean() > out[1][:, 2].mean()  # right half: brighter bottom
    big, _ = _run_embedder(avi, spans, ["left", "left", "right"], batch_size=1000)
    for i in range(3):
        np.testing.assert_array_equal(out[i], big[i])


def test_embedder_reports_span_errors(avi):
    out, _ = _run_embedder(avi, [(0.0, 0.5), (5.0, 6.0)], ["left", "left"], batch_size=4)
    assert out[0].shape == (15, 3) and "outside the video" in out[1]


def test_embed_video_matches_the_embedder_and_checks_input(avi, tmp_path):
    from foalnet.data.video import VideoError

    enc = TinyVisualEncoder()
    feats = embed_video(avi, enc, "left", start=0.5, end=1.0)
    assert feats.shape == (15, 128) and feats.dtype == np.float16
    out = {}
    embedder = SpanEmbedder(enc, ["left"], 32)
    from foalnet.data.video import walk_spans

    for event in walk_spans(avi, [(0.5, 1.0)]):
        out.update(embedder.feed(event))
    out.update(embedder.finish())
    np.testing.assert_array_equal(feats, out[0])
    assert embed_video(avi, enc, "full").shape == (60, 128)
    assert embed_video(avi, enc, "side", fps=10).shape == (20, 128)
    with pytest.raises(VideoError, match="outside the video"):
        embed_video(avi, enc, "full", start=9.0, end=10.0)
    with pytest.raises(VideoError, match="not found"):
        embed_video(tmp_path / "missing.avi", enc, "full")
    with pytest.raises(ValueError):
        embed_video(avi, enc, "mouth")
