"""`foalnet serve`: the JSON endpoint and the page, on a real server (uvicorn in a thread).

The model is trained here on the synthetic corpus (the conftest fixtures, `tiny` preset, one
epoch), as `make demo` does; clips are the service's own generated examples and the PyAV clips
of tests/test_predict.py. The page is driven in headless Debian chromium (skipped without it).
"""
from __future__ import annotations

import csv
import json
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")  # the `serve` extra (Gradio brings FastAPI, httpx, uvicorn)
import httpx  # noqa: E402
import uvicorn  # noqa: E402

from foalnet.cli import main  # noqa: E402
from foalnet.infer.predictor import Predictor  # noqa: E402
from foalnet.infer.serve import API_PATH, Limits, Service, build_app, page_outputs, thumbnails  # noqa: E402
from test_predict import _save, make_clip  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
WINDOW, HOP = 2.0, 1.0
LIMITS = Limits(max_upload_mb=2.0, max_duration=12.0, max_waiting=0)


# --------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module", autouse=True)
def gradio():
    """Imported by the tests, not at collection: every pytest-xdist worker collects this file,
    one runs it, and Gradio's import takes about 3.5 s."""
    return pytest.importorskip("gradio")


@pytest.fixture(scope="module")
def trained_model(trained_run) -> Path:
    """best/ of `foalnet train` (tiny preset, fold 1, one epoch) on the synthetic corpus."""
    return trained_run / "best"


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve_clips")
    out = {
        "audio_only.wav": make_clip(root / "audio_only.wav", vcodec=None, acodec="pcm_s16le"),
        "video_only.mp4": make_clip(root / "video_only.mp4", acodec=None),
        "too_long.mkv": make_clip(root / "too_long.mkv", seconds=14.0, acodec="pcm_s16le", rate=16000,
                                  channels=1,
                                  size=(64, 48), fps=10),
        "empty.mp4": root / "empty.mp4",
        "corrupt.mp4": root / "corrupt.mp4",
        "too_large.mp4": root / "too_large.mp4",
    }
    out["empty.mp4"].write_bytes(b"")
    rng = np.random.default_rng(0)
    out["corrupt.mp4"].write_bytes(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    out["too_large.mp4"].write_bytes(rng.integers(0, 256, 3 * 2**20, dtype=np.uint8).tobytes())
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A service's app on a real socket, in a thread (so a test can reach the service too)."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.url = f"http://127.0.0.1:{_free_port()}"
        port = int(self.url.rsplit(":", 1)[1])
        config = uvicorn.Config(build_app(service), host="127.0.0.1", port=port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.1)

    def post(self, path: Path, **kwargs) -> httpx.Response:
        with open(path, "rb") as fh:
            return httpx.post(self.url + API_PATH, files={"file": (path.name, fh)}, timeout=120, **kwargs)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def server(trained_model):
    service = Service(Predictor.from_pretrained(trained_model), WINDOW, HOP, LIMITS, examples=1)
    srv = Server(service)
    yield srv
    srv.stop()
    assert not service.workdir.exists()  # the app's shutdown removed every file it wrote


# --------------------------------------------------------------------------------- the endpoint
def test_api_equals_foalnet_predict(server, tmp_path):
    """A generated example clip: the endpoint's JSON is `foalnet predict --window 2 --hop 1`'s."""
    clip = server.service.examples[0]
    response = server.post(clip)
    assert response.status_code == 200, response.text
    got = response.json()
    out = tmp_path / "p.jsonl"
    assert main(["predict", server.service.predictor.model_dir, str(clip), "--window", "2",
                 "--hop", "1", "--out", str(out)]) == 0
    expected = json.loads(out.read_text())
    assert got["input"] == clip.name and expected["input"] == str(clip)
    got.pop("input"), expected.pop("input")
    assert got == expected
    assert got["modalities"] == ["audio", "video"] and got["duration"] > 8
    assert len(got["timeline"]) == 1 + int(np.ceil((got["duration"] - WINDOW) / HOP - 1e-9))
    assert [w["start"] for w in got["timeline"][:3]] == [0.0, 1.0, 2.0]


@pytest.mark.parametrize("name, status, reason", [
    ("audio_only.wav", 422, "has no video stream, and this model (modality 'av') needs audio + video"),
    ("video_only.mp4", 422, "has no audio stream"),
    ("corrupt.mp4", 415, "not a readable media container"),
    ("empty.mp4", 400, "empty file (0 bytes)"),
    ("too_long.mkv", 422, "lasts 14.0 s, longer than this server's limit of 12 s"),
    ("too_large.mp4", 413, "larger than the 2 MB limit"),
])
def test_api_refuses_with_named_reason(server, clips, name, status, reason):
    response = server.post(clips[name])
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert reason in error
    if name != "too_large.mp4":  # refused from its Content-Length, before the name is read
        assert error.startswith(f"{name}: ")
    assert str(server.service.workdir) not in error  # no temp path leaks into the message
    assert server.post(server.service.examples[0]).status_code == 200  # the server stays up


def test_api_bad_requests(server):
    assert httpx.post(server.url + API_PATH, data={"other": "1"}).status_code == 400
    assert "multipart field 'file'" in httpx.post(server.url + API_PATH, data={"x": "1"}).json()["error"]


def test_api_two_files_refused(server, clips):
    with open(clips["corrupt.mp4"], "rb") as a, open(clips["empty.mp4"], "rb") as b:
        response = httpx.post(server.url + API_PATH, files=[("file", ("a.mp4", a)), ("file", ("b.mp4", b))])
    assert response.status_code == 400 and "one file" in response.json()["error"]


def test_page_results_pruned(server):
    """A long-running page keeps the files of its 8 latest results (+ the new one) only."""
    folders = [server.service.new_folder() for _ in range(12)]
    kept = sorted((server.service.workdir / "page").iterdir())
    assert kept == folders[-9:]


def test_api_removes_its_temp_files(server, clips):
    requests = server.service.workdir / "api"
    before = set(requests.iterdir()) if requests.exists() else set()
    server.post(server.service.examples[0])
    server.post(clips["corrupt.mp4"])
    assert set(requests.iterdir()) == before


def test_one_prediction_at_a_time_and_a_bounded_queue(server, monkeypatch):
    """While the model is busy, one request waits (max_waiting=0 lets nobody else queue: 429);
    it runs when the model is free. Predictions never overlap."""
    service, active, peak = server.service, [0], [0]
    original = service.predictor.iter_predict

    def counting(*args, **kwargs):
        active[0] += 1
        peak[0] = max(peak[0], active[0])
        try:
            yield from original(*args, **kwargs)
        finally:
            active[0] -= 1

    monkeypatch.setattr(service.predictor, "iter_predict", counting)
    clip = service.examples[0]
    results: list[httpx.Response] = []
    service._lock.acquire()  # the model is busy
    try:
        waiting = threading.Thread(target=lambda: results.append(server.post(clip)))
        waiting.start()
        deadline = time.monotonic() + 30
        while service._waiting < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        refused = server.post(clip)
        assert refused.status_code == 429 and "busy" in refused.json()["error"]
    finally:
        service._lock.release()
    waiting.join(120)
    assert results[0].status_code == 200
    threads = [threading.Thread(target=lambda: server.post(clip)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert peak[0] == 1


def test_audio_model_takes_audio_files(tmp_path, clips):
    """An audio-only model predicts an audio file (and says it used audio only)."""
    model = _save(tmp_path, "audio", modality="audio", use_avel=False, use_mem=False)
    service = Service(Predictor.from_pretrained(model), 0.5, 0.5, LIMITS, examples=0)
    srv = Server(service)
    try:
        response = srv.post(clips["audio_only.wav"])
        assert response.status_code == 200, response.text
        assert response.json()["modalities"] == ["audio"] and len(response.json()["timeline"]) == 4
    finally:
        srv.stop()


# --------------------------------------------------------------------------------- page pieces
def test_page_outputs_and_downloads(server, clips):
    service = server.service
    clip = service.examples[0]
    status, player, audio, label, figure, frames, downloads = page_outputs(service, str(clip))
    assert clip.name in status and "audio + video" in status and "foalnet-error" not in status
    assert Path(player).suffix == ".mp4" and audio is None  # AVI/MPEG-4 copied to H.264 mp4
    import av

    with av.open(player) as c:
        assert c.streams.video[0].codec_context.name == "h264" and c.streams.audio
    assert set(label) == set(service.predictor.labels) and abs(sum(label.values()) - 1) < 1e-9
    assert len(figure.axes[0].lines) == len(service.predictor.labels)  # one line per class
    assert len(frames) == LIMITS.thumbnails
    by_suffix = {Path(p).suffix: Path(p) for p in downloads}
    result = json.loads(by_suffix[".json"].read_text())
    assert result["input"] == clip.name and "timeline" in result
    rows = list(csv.DictReader(by_suffix[".csv"].open()))
    assert len(rows) == 1 + len(result["timeline"]) and rows[0]["scope"] == "file"
    assert rows[0]["label"] == result["label"]
    for row, window in zip(rows[1:], result["timeline"]):
        assert float(row["start"]) == window["start"] and row["label"] == window["label"]
        for c in service.predictor.labels:
            assert float(row[c]) == pytest.approx(window["probabilities"][c])


@pytest.mark.parametrize("name, reason", [("corrupt.mp4", "not a readable media container"),
                                          ("audio_only.wav", "has no video stream"),
                                          ("too_long.mkv", "longer than this server's limit"),
                                          ("too_large.mp4", "larger than the 2 MB upload limit")])
def test_page_messages_for_bad_files(server, clips, name, reason):
    status, *rest = page_outputs(server.service, str(clips[name]))
    assert "foalnet-error" in status and f"{name}: " in status and reason in status
    assert rest == [None] * 6


def test_thumbnails_show_the_crop(server):
    """Thumbnails are the frames cut as the encoder sees them: the left half with crop left."""
    service = server.service
    clip = service.examples[0]
    info = service.check(clip, clip.name)
    full = thumbnails(service, clip, info, 3)
    assert [im.shape for im, _ in full] == [(480, 720, 3)] * 3
    old, service.crop = service.crop, "left"
    try:
        left = thumbnails(service, clip, info, 3)
    finally:
        service.crop = old
    assert [im.shape for im, _ in left] == [(480, 360, 3)] * 3
    np.testing.assert_array_equal(left[0][0], full[0][0][:, :360])


def test_cli_serve_usage_errors(tmp_path, capsys):
    assert main(["serve", str(tmp_path), "--window", "0"]) == 2
    assert main(["serve", str(tmp_path)]) == 2
    assert "not a foalnet model folder" in capsys.readouterr().err


# --------------------------------------------------------------------------------- the page
@pytest.mark.slow  # an end-to-end run of its own; CI runs it
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium (/usr/bin/chromium)")
def test_page_in_headless_chromium(server, clips, tmp_path):
    """Load the page, upload a bad file (message, server up), then a clip: timeline, label,
    thumbnails, downloads; no request leaves the machine. Screenshot in tmp_path (or
    FOALNET_SERVE_SCREENSHOT)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    shot = Path(os.environ.get("FOALNET_SERVE_SCREENSHOT", tmp_path / "serve.png"))
    outside: list[str] = []
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, args=args, headless=True,
            viewport={"width": 1400, "height": 1100})
        try:
            page = browser.new_page()
            page.on("request", lambda r: None if r.url.startswith((server.url, "data:", "blob:"))
                    else outside.append(r.url))
            page.goto(server.url, wait_until="networkidle")
            upload = page.locator("#upload input[type=file]")
            upload.set_input_files(str(clips["corrupt.mp4"]))
            page.wait_for_selector("#status .foalnet-error", timeout=60_000)
            assert "corrupt.mp4: not a readable media container" in page.inner_text("#status")
            page.locator("#upload button[aria-label='Clear']").first.click()
            page.locator("#upload input[type=file]").set_input_files(str(server.service.examples[0]))
            page.wait_for_selector("#timeline img", timeout=120_000)
            page.wait_for_selector("#frames img", timeout=30_000)
            page.wait_for_selector("#player video", timeout=30_000)
            status = page.inner_text("#status")
            assert server.service.examples[0].name in status and "audio + video" in status
            label = page.inner_text("#label")
            assert any(c in label for c in server.service.predictor.labels)
            assert page.locator("#downloads").inner_text().count(".json") >= 1
            page.wait_for_timeout(500)
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
    assert outside == []  # offline: fonts, scripts and analytics all served locally or not at all
