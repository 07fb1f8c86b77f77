"""foalnet.data.video: spans decoded once, frame rule, seeking, fps policy, crops, bad files.

The test videos carry their frame number as a binary code (8 stripes, black/white) in the top
half of each 360-px side, the left side coding i and the right side i ^ 0xA5, so a frame's
index and which half was cut can be read back after MPEG-4 compression.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")

from foalnet.data import video as V  # noqa: E402
from foalnet.data.video import (SpanClosed, SpanFrame, VideoError, crop_region, probe_video,  # noqa: E402
                                read_frames, read_spans, resolve_crop, walk_spans)

RIGHT_XOR = 0xA5


def code_image(code: int, width: int, height: int) -> np.ndarray:
    """One side: 8 stripes in the top half (bit 7 first), grey level in the bottom half."""
    img = np.zeros((height, width, 3), np.uint8)
    stripe = width // 8
    for bit in range(8):
        if code >> (7 - bit) & 1:
            img[: height // 2, bit * stripe:(bit + 1) * stripe] = 255
    return img


def frame_image(i: int, width: int = 720, height: int = 480) -> np.ndarray:
    half = width // 2
    left = code_image(i % 256, half, height)
    left[height // 2:] = 40
    right = code_image((i % 256) ^ RIGHT_XOR, half, height)
    right[height // 2:] = 200
    return np.concatenate([left, right], axis=1)


def read_code(side: np.ndarray) -> int:
    """The frame code of one side (H, W, 3) from its stripes."""
    H, W, _ = side.shape
    stripe = W // 8
    code = 0
    for bit in range(8):
        cell = side[H // 8: 3 * H // 8, bit * stripe + stripe // 4:(bit + 1) * stripe - stripe // 4]
        code = code << 1 | int(cell.mean() > 127)
    return code


def frame_indices(frames: np.ndarray, side: str = "left") -> list[int]:
    codes = [read_code(crop_region(f, side) if side != "full" else f[:, : f.shape[1] // 2])
             for f in frames]
    return [c ^ RIGHT_XOR if side == "right" else c for c in codes]


def make_avi(path: Path, seconds: float = 3.0, fps: int = 30, width: int = 720,
             height: int = 480) -> Path:
    """An MPEG-4 Part 2 AVI (the IEMOCAP/synthetic format) of coded frames."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"qscale": "2"}
        for i in range(int(round(seconds * fps))):
            frame = av.VideoFrame.from_ndarray(frame_image(i, width, height), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def avi(tmp_path_factory) -> Path:
    return make_avi(tmp_path_factory.mktemp("video") / "dialog.avi")


@pytest.fixture(scope="module")
def long_avi(tmp_path_factory) -> Path:
    """12 s, small frames: long enough for seeking to pay."""
    return make_avi(tmp_path_factory.mktemp("video") / "long.avi", seconds=12.0, width=160,
                    height=96)


def test_probe_reads_size_and_rate(avi):
    info = probe_video(avi)
    assert (info.width, info.height) == (720, 480)
    assert info.fps == pytest.approx(30.0)
    assert info.duration == pytest.approx(3.0, abs=0.05)


def test_whole_file_every_frame_in_order(avi):
    frames = read_frames(avi)
    assert frames.shape == (90, 480, 720, 3) and frames.dtype == np.uint8
    assert frame_indices(frames, "left") == list(range(90))
    assert frame_indices(frames, "right") == list(range(90))


def test_spans_served_in_end_order_with_overlap_rule(avi):
    spans = [(1.0, 2.0), (0.5, 1.5), (0.0, 0.1), (0.51, 0.52)]
    results = list(read_spans(avi, spans))
    assert [i for i, _ in results] == [2, 3, 1, 0]  # in the order the spans end
    got = {i: frame_indices(r) for i, r in results}
    assert got[0] == list(range(30, 60))  # [1.0, 2.0): frames 30..59
    assert got[1] == list(range(15, 45))
    assert got[2] == [0, 1, 2]  # frame 3 starts at 0.1: not inside [0, 0.1)
    assert got[3] == [15]  # shorter than a frame: the frame on screen


def test_one_decode_pass_for_many_spans(avi, monkeypatch):
    opened = []
    real_open = V._open
    monkeypatch.setattr(V, "_open", lambda p: opened.append(p) or real_open(p))
    events = list(walk_spans(avi, [(0.2, 0.9), (0.3, 2.5), (2.0, 3.0)]))
    assert len(opened) == 1
    closed = [e for e in events if isinstance(e, SpanClosed)]
    assert sorted(e.span for e in closed) == [0, 1, 2] and all(e.error is None for e in closed)
    # each frame is reported once, listing every span it belongs to
    frames = [e for e in events if isinstance(e, SpanFrame)]
    assert [f.index for f in frames] == list(range(6, 90))
    assert next(f for f in frames if f.index == 70).spans == [1, 2]


def test_seeking_skips_the_gap_and_lands_on_the_right_frames(long_avi, monkeypatch):
    decoded = []
    real_frames = V._Decoder.frames

    def counting(self):
        for item in real_frames(self):
            decoded.append(item[0])
            yield item

    monkeypatch.setattr(V._Decoder, "frames", counting)
    results = dict(read_spans(long_avi, [(0.0, 0.5), (10.0, 10.5)]))
    assert frame_indices(results[0]) == list(range(15))
    assert frame_indices(results[1]) == [i % 256 for i in range(300, 315)]
    assert len(decoded) < 200, "the 9.5 s gap was decoded instead of skipped"


def test_seek_free_decoding_gives_the_same_frames(long_avi, monkeypatch):
    spans = [(0.0, 0.5), (10.0, 10.5)]
    with_seek = dict(read_spans(long_avi, spans))
    monkeypatch.setattr(V, "SEEK_GAP", math.inf)
    no_seek = dict(read_spans(long_avi, spans))
    for i in (0, 1):
        assert frame_indices(with_seek[i]) == frame_indices(no_seek[i])


def test_fps_policy_resamples_to_a_grid(avi):
    down = read_frames(avi, 0.0, 1.0, fps=10)
    assert frame_indices(down) == list(range(0, 30, 3))  # grid k/10: every third frame
    up = read_frames(avi, 0.0, 0.2, fps=60)
    assert frame_indices(up) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    with pytest.raises(ValueError):
        list(walk_spans(avi, [(0, 1)], fps=0))


def test_span_errors_are_per_span(avi):
    spans = [(0.0, 0.5), (3.5, 4.0), (2.5, 5.0), (2.9, 3.5), (1.0, 1.0)]
    results = dict(read_spans(avi, spans))
    assert frame_indices(results[0]) == list(range(15))
    assert "outside the video" in results[1].reason
    assert "ends after the video" in results[2].reason  # 2 s past the end
    assert frame_indices(results[3]) == [87, 88, 89]  # 0.5 s past the end: truncated
    assert "empty span" in results[4].reason
    assert isinstance(results[1], VideoError) and results[1].path == str(avi)


@pytest.mark.parametrize("content, reason", [
    (None, "file not found"),
    (b"", "empty file"),
    (b"RIFF\x00\x00garbage" * 50, "cannot open"),
])
def test_bad_files_raise_video_error_naming_the_file(tmp_path, content, reason):
    path = tmp_path / "bad.avi"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(VideoError) as err:
        read_frames(path)
    assert reason in str(err.value) and str(path) in str(err.value)


def test_truncated_file_serves_what_is_left(avi, tmp_path):
    data = avi.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])
    results = dict(read_spans(cut, [(0.0, 0.3), (2.5, 2.9)]))
    assert frame_indices(results[0]) == list(range(9))
    assert isinstance(results[1], VideoError)


def test_resolve_crop_follows_the_record_side():
    assert resolve_crop("side", "left") == "left"
    assert resolve_crop("side", "right") == "right"
    assert resolve_crop("side", None) == "full" and resolve_crop("side", "full") == "full"
    assert resolve_crop("full", "left") == "full"
    assert resolve_crop("face", "right") == "face:right"
    with pytest.raises(ValueError):
        resolve_crop("mouth", "left")


def test_crop_region_cuts_the_speaker_half(avi):
    frame = read_frames(avi, 1.0, 1.01)[0]
    left, right = crop_region(frame, "left"), crop_region(frame, "right")
    assert left.shape == right.shape == (480, 360, 3)
    assert read_code(left) == 30 and read_code(right) == 30 ^ RIGHT_XOR
    assert abs(left[300:].mean() - 40) < 4 and abs(right[300:].mean() - 200) < 4
    assert crop_region(frame, "full").shape == (480, 720, 3)


def cartoon_face(height: int = 480, width: int = 360) -> np.ndarray:
    """A flat-colour face (skin ellipse, eyes, brows, mouth) like the synthetic corpus draws."""
    yy, xx = np.mgrid[:height, :width]
    img = np.full((height, width, 3), (50, 90, 130), np.uint8)
    cy, cx = 240, 180

    def ellipse(y, x, ry, rx):
        return ((yy - y) / ry) ** 2 + ((xx - x) / rx) ** 2 <= 1

    img[ellipse(cy, cx, 170, 120)] = (220, 170, 130)
    for ex in (cx - 45, cx + 45):
        img[ellipse(cy - 35, ex, 12, 20)] = (255, 255, 255)
        img[ellipse(cy - 35, ex, 7, 7)] = (20, 20, 20)
        img[(abs(yy - (cy - 65)) < 5) & (abs(xx - ex) < 30)] = (60, 40, 20)
    img[ellipse(cy + 80, cx, 12, 45)] = (150, 40, 50)
    return img


def test_face_cropper_finds_a_cartoon_face_and_falls_back():
    pytest.importorskip("cv2")
    cropper = V.FaceCropper()
    face = cropper(cartoon_face(), key="left")
    H, W, _ = face.shape
    assert 150 < H < 480 and 150 < W <= 360 and cropper.fallbacks == 0
    blank = np.full((480, 360, 3), 90, np.uint8)
    cropper.hold = 0
    assert cropper(blank, key="other") is blank and cropper.fallbacks == 1


def test_face_cropper_holds_the_last_box_for_a_while(monkeypatch):
    pytest.importorskip("cv2")
    cropper = V.FaceCropper(margin=0.0, hold=2, every=1)
    boxes = iter([(10, 20, 100, 100), None, None, None])
    monkeypatch.setattr(cropper, "_detect", lambda image: next(boxes))
    image = np.zeros((480, 360, 3), np.uint8)
    shapes = [cropper(image, key="left").shape for _ in range(4)]
    assert shapes[:3] == [(100, 100, 3)] * 3  # found, then held twice
    assert shapes[3] == image.shape and cropper.fallbacks == 1


def test_span_far_past_the_end_terminates(long_avi):
    """Seeking towards a start past the end must not loop (each target is sought once)."""
    results = dict(read_spans(long_avi, [(0.0, 0.2), (30.0, 31.0)]))
    assert frame_indices(results[0]) == list(range(6))
    assert "outside the video" in results[1].reason
