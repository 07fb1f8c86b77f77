"""`foalnet serve MODEL_DIR`: a local web page and an HTTP JSON endpoint over one Predictor.

The page (Gradio) and ``POST /api/predict`` (a FastAPI route on the same app) call one
``Service``: it checks a file (readable, the model's modalities present, not longer than the
limit), predicts it with a window timeline through ``Predictor.iter_predict`` (the bounded-memory
path of ``foalnet predict``) under ONE lock, so a model serves one prediction at a time and
further requests wait in a bounded queue (429 past it). Uploads above the size limit are refused
before they are read; every file the service writes lives in its own temporary folder, removed
per request (endpoint) or when the service closes (page results, which Gradio copies into its own
cache, pruned by ``delete_cache``).

Offline: Gradio's analytics are off through ``Blocks(analytics_enabled=False)``, the default
theme uses local fonts, and server-side rendering (a Node process) is off.
"""
from __future__ import annotations

import csv
import json
import logging
import re
import shutil
import tempfile
import threading
import time
import uuid
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np
from fastapi import FastAPI, Request  # the `serve` extra (Gradio ships FastAPI)
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from foalnet.infer.media import MediaError, MediaInfo, iter_audio, probe
from foalnet.infer.predictor import Predictor, Source

log = logging.getLogger(__name__)

DEFAULT_WINDOW, DEFAULT_HOP = 2.0, 1.0
API_PATH = "/api/predict"
PREVIEW_WIDTH = 640  # px: the player's copy of a video the browser cannot play as it is
PLAYABLE = {(".mp4", "h264"), (".webm", "vp8"), (".webm", "vp9"), (".mp4", "av1"), (".webm", "av1")}
COLORS = ("#7f7f7f", "#e6a700", "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2")


@dataclass(frozen=True)
class Limits:
    """What one server accepts; each bound keeps a shared machine usable."""

    max_upload_mb: float = 200.0  # bytes per upload (page and endpoint)
    max_duration: float = 600.0  # seconds of media per file
    max_waiting: int = 8  # requests queued behind the running prediction
    thumbnails: int = 6  # frames shown of what the visual encoder saw

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


class Refused(Exception):
    """A request the service will not predict: `status` is the HTTP status, the text names the
    file and the problem."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Analysis:
    """One predicted file: the `predict` result and what the page shows beside it."""

    result: dict
    info: MediaInfo
    crop: str | None
    folder: Path  # this request's files (preview, thumbnails, downloads)


# ------------------------------------------------------------------------------ the service
class Service:
    """One model behind a lock, with its limits and a private temporary folder."""

    def __init__(self, predictor: Predictor, window: float = DEFAULT_WINDOW, hop: float | None = None,
                 limits: Limits = Limits(), examples: int = 3) -> None:
        from foalnet.infer.predictor import check_window

        self.predictor = predictor
        self.window, self.hop = check_window(window, hop)
        self.limits = limits
        self.crop = predictor.resolve_crop(None) if "video" in predictor.modalities else None
        self.workdir = Path(tempfile.mkdtemp(prefix="foalnet-serve-"))
        self._lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._waiting = 0
        self.examples = make_examples(self.workdir / "examples", examples) if examples else []

    def close(self) -> None:
        """Remove every file the service wrote."""
        shutil.rmtree(self.workdir, ignore_errors=True)

    def new_folder(self, kind: str = "page", keep: int = 8) -> Path:
        """A fresh folder for one request's files. Of the page's, only the `keep` newest stay
        (Gradio has copied older ones into its own cache); the endpoint removes its own."""
        root = self.workdir / kind
        root.mkdir(parents=True, exist_ok=True)
        if kind == "page":
            for old in sorted(root.iterdir())[:-keep]:  # names start with the creation time
                shutil.rmtree(old, ignore_errors=True)
        folder = root / f"{time.time_ns()}-{uuid.uuid4().hex[:8]}"
        folder.mkdir()
        return folder

    def check(self, path: str | Path, name: str) -> MediaInfo:
        """Probe a file before any decoding: readable, modalities present, not too long."""
        try:
            info = probe(path)
        except MediaError as err:
            status = 400 if "empty file" in err.reason else 415
            raise Refused(status, f"{name}: {err.reason.replace(str(path), name)}") from err
        missing = [m for m in self.predictor.modalities if m not in info.modalities]
        if missing:
            raise Refused(422, f"{name}: has no {' and no '.join(missing)} stream, and this model "
                               f"(modality {self.predictor.config.modality!r}) needs "
                               f"{' + '.join(self.predictor.modalities)}")
        if info.duration is not None and info.duration > self.limits.max_duration:
            raise Refused(422, f"{name}: lasts {info.duration:.1f} s, longer than this server's "
                               f"limit of {self.limits.max_duration:g} s (--max-duration)")
        return info

    @contextmanager
    def _turn(self) -> Iterator[None]:
        """Wait for the model (one prediction at a time); refuse when the queue is full."""
        with self._count_lock:
            if self._waiting > self.limits.max_waiting:
                raise Refused(429, f"server busy: {self._waiting} requests already waiting")
            self._waiting += 1
        try:
            with self._lock:
                yield
        finally:
            with self._count_lock:
                self._waiting -= 1

    def predict(self, path: str | Path, name: str) -> tuple[dict, MediaInfo]:
        """The `foalnet predict --window` result of one file, reported under `name`."""
        info = self.check(path, name)
        with self._turn():
            source = Source(name, str(path), str(path))
            result = next(self.predictor.iter_predict([source], crop=self.crop, window=self.window,
                                                      hop=self.hop))
        if "error" in result:
            raise Refused(422, result["error"].replace(str(path), name))
        return result, info

    def analyse(self, path: str | Path, name: str) -> Analysis:
        """Prediction plus its downloads (JSON, CSV) in a new request folder."""
        result, info = self.predict(path, name)
        folder = self.new_folder()
        stem = Path(name).stem or "prediction"
        (folder / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        write_csv(result, folder / f"{stem}.csv")
        return Analysis(result, info, self.crop, folder)


def write_csv(result: dict, path: Path) -> None:
    """The `predict` fields as rows: the file first, then one row per window."""
    labels = list(result["probabilities"])
    with open(path, "w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(["input", "scope", "start", "end", "duration", "modalities", "label", *labels])
        common = [result["input"]]
        out.writerow([*common, "file", 0.0, result["duration"], result["duration"],
                      "+".join(result["modalities"]), result["label"],
                      *(result["probabilities"][c] for c in labels)])
        for w in result.get("timeline", []):
            out.writerow([*common, "window", w["start"], w["end"], result["duration"],
                          "+".join(result["modalities"]), w["label"],
                          *(w["probabilities"][c] for c in labels)])


# ------------------------------------------------------------------------------ example clips
def make_examples(folder: Path, count: int) -> list[Path]:
    """Dialog videos of the synthetic corpus (one per session, ~8 utterances, mixed emotions)."""
    from foalnet.data.synth import write_session

    root = folder / "corpus"
    clips = []
    for session in range(1, min(count, 5) + 1):
        write_session(str(root), session, seed=0, size="tiny")
        for avi in sorted((root / f"Session{session}" / "dialog" / "avi" / "DivX").glob("*.avi")):
            target = folder / avi.name
            shutil.move(str(avi), target)
            clips.append(target)
    shutil.rmtree(root, ignore_errors=True)
    return clips


# ------------------------------------------------------------------------------ what the page shows
def player_copy(path: str | Path, info: MediaInfo, folder: Path) -> Path:
    """A copy of the media the browser can play: the file itself when it can, else H.264/AAC
    mp4 (video) or 16 kHz mono wav (audio: what the model hears), written as it is decoded."""
    path = Path(path)
    if info.has_video:
        if (path.suffix.lower(), info.video_codec) in PLAYABLE:
            return path
        return _transcode_video(path, info, folder / f"{path.stem}.player.mp4")
    return _write_wav(path, folder / f"{path.stem}.player.wav")


def _write_wav(path: Path, target: Path, rate: int = 16000) -> Path:
    import soundfile as sf

    with sf.SoundFile(target, "w", samplerate=rate, channels=1, subtype="PCM_16") as out:
        for chunk in iter_audio(path, rate):
            out.write(chunk)
    return target


def _transcode_video(path: Path, info: MediaInfo, target: Path) -> Path:
    """Stream-transcode to a small H.264 mp4 (with the first audio stream as AAC)."""
    import av

    width = min(PREVIEW_WIDTH, info.width or PREVIEW_WIDTH) // 2 * 2
    height = max(2, round((info.height or width) * width / (info.width or width)) // 2 * 2)
    with av.open(str(path)) as src, av.open(str(target), "w") as dst:
        vin = src.streams.video[0]
        ain = src.streams.audio[0] if src.streams.audio else None
        rate = max(1, round(info.fps or 25))
        vout = dst.add_stream("libx264", rate=rate)
        vout.width, vout.height, vout.pix_fmt = width, height, "yuv420p"
        vout.options = {"preset": "ultrafast", "crf": "26"}
        aout = resampler = None
        if ain is not None:
            aout = dst.add_stream("aac", rate=48000)
            aout.layout = "stereo"
            resampler = av.AudioResampler(format="fltp", layout="stereo", rate=48000)
        frames = samples = 0  # pts counted in the encoders' own time bases (1/fps, 1/48000)
        for frame in src.decode(*(s for s in (vin, ain) if s is not None)):
            if isinstance(frame, av.VideoFrame):
                out = frame.reformat(width=width, height=height, format="yuv420p")
                out.pts, out.time_base, frames = frames, Fraction(1, rate), frames + 1
                for packet in vout.encode(out):
                    dst.mux(packet)
                continue
            for piece in resampler.resample(frame):
                piece.pts, piece.time_base, samples = samples, Fraction(1, 48000), samples + piece.samples
                for packet in aout.encode(piece):
                    dst.mux(packet)
        for stream in (vout, aout):
            if stream is not None:
                for packet in stream.encode(None):
                    dst.mux(packet)
    return target


def thumbnails(service: Service, path: str | Path, info: MediaInfo,
               count: int) -> list[tuple[np.ndarray, str]]:
    """A few frames as the visual encoder saw them (the crop), each with its time."""
    from foalnet.data.video import FaceCropper, read_spans, resolve_crop
    from foalnet.features.extract import crop_frame

    if service.crop is None or not info.has_video or count < 1:
        return []
    duration = info.duration or 0.0
    fps = service.predictor.frame_rate(info)
    times = [duration * (i + 0.5) / count for i in range(count)]
    spans = [(t, t + 1.5 / fps) for t in times]
    region = resolve_crop(service.crop, None)
    face = FaceCropper() if region.startswith("face:") else None
    out = []
    for index, frames in read_spans(path, spans, fps=service.predictor.settings.get("fps") or None):
        if isinstance(frames, Exception) or not len(frames):
            continue
        out.append((crop_frame(frames[0], region, face), f"{times[index]:.1f} s"))
    return out


def timeline_figure(result: dict):
    """Probability of each class over time: one line per class, a point per window."""
    from matplotlib.figure import Figure  # no pyplot: no process-wide backend

    timeline = result.get("timeline", [])
    fig = Figure(figsize=(8, 3.2), dpi=100)
    fig.subplots_adjust(left=0.08, right=0.87, bottom=0.16, top=0.84)  # top: under the page's label
    ax = fig.add_subplot()
    mids = [(w["start"] + w["end"]) / 2 for w in timeline]
    for i, label in enumerate(result["probabilities"]):
        ax.plot(mids, [w["probabilities"][label] for w in timeline], marker="o", markersize=3,
                linewidth=2, color=COLORS[i % len(COLORS)], label=label)
    ax.set_ylim(0, 1.02)
    ax.set_xlim(0, max([result["duration"] or 0.0] + [w["end"] for w in timeline]))
    ax.set_xlabel("time (s), window centres")
    ax.set_ylabel("probability")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig


def summary_markdown(service: Service, analysis: Analysis) -> str:
    """The status line of a good prediction: label, duration, modalities, windows, crop."""
    r = analysis.result
    p = r["probabilities"][r["label"]]
    crop = f"; frames cropped: **{analysis.crop}**" if analysis.crop else ""
    return (f"**{r['input']}**: **{r['label']}** (p = {p:.2f}) · {r['duration']} s · modalities "
            f"used: **{' + '.join(r['modalities'])}** · {len(r.get('timeline', []))} windows of "
            f"{service.window:g} s every {service.hop:g} s{crop}")


def error_markdown(message: str) -> str:
    return f"<div class='foalnet-error' role='alert'>⚠️ <b>Cannot predict</b>: {_escape(message)}</div>"


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# ------------------------------------------------------------------------------ the page
CSS = """
.foalnet-error {background: #fdecea; border: 1px solid #d62728; color: #611a15;
                padding: 10px 14px; border-radius: 6px;}
"""


def page_outputs(service: Service, file: str | None) -> tuple:
    """What the page shows for one upload: (status, player, audio, label, timeline, frames,
    downloads); a refused file gives the message and empties the rest."""
    empty = (None, None, None, None, None, None)
    if not file:
        return (error_markdown("no file: upload or drop a video or audio file"), *empty)
    name = Path(file).name
    if Path(file).stat().st_size > service.limits.max_upload_bytes:
        return (error_markdown(f"{name}: larger than the {service.limits.max_upload_mb:g} MB "
                               "upload limit"), *empty)
    try:
        analysis = service.analyse(file, name)
    except Refused as err:
        return (error_markdown(str(err)), *empty)
    folder, info = analysis.folder, analysis.info
    video = audio = None
    try:
        player = player_copy(file, info, folder)
        video, audio = (player, None) if info.has_video else (None, player)
    except Exception as err:  # the prediction stands even when the player copy fails
        log.warning("%s: no player copy (%s)", name, err)
    labels = {k: float(v) for k, v in analysis.result["probabilities"].items()}
    frames = thumbnails(service, file, info, service.limits.thumbnails) or None
    downloads = sorted(str(p) for p in folder.glob("*") if p.suffix in (".json", ".csv"))
    return (summary_markdown(service, analysis), video, audio, labels,
            timeline_figure(analysis.result), frames, downloads)


def _result_components(gr) -> list:
    """status, player, audio, label, timeline, frames, downloads (placed by build_page)."""
    return [
        gr.Markdown("Upload a file or pick an example clip.", elem_id="status", render=False),
        gr.Video(label="Video", interactive=False, elem_id="player", render=False),
        gr.Audio(label="Audio (16 kHz mono, as the model hears it)", interactive=False,
                 visible=False, elem_id="listen", render=False),
        gr.Label(label="File-level label (mean over windows)", elem_id="label", render=False),
        gr.Plot(label="Probability of each class over time", elem_id="timeline", render=False),
        gr.Gallery(label="Frames the visual encoder saw (crop)", columns=6, height=170,
                   object_fit="contain", elem_id="frames", render=False),
        gr.File(label="Download (same fields as foalnet predict)", file_count="multiple",
                interactive=False, elem_id="downloads", render=False),
    ]


def build_page(service: Service):
    """The Gradio Blocks: input, examples and player on the left, results on the right."""
    import gradio as gr

    labels = ", ".join(service.predictor.labels)
    with gr.Blocks(title="foalnet: emotion over time", analytics_enabled=False,
                   delete_cache=(600, 1800)) as page:
        gr.Markdown(f"## foalnet: emotion over time\nModel `{service.predictor.model_dir}` · classes "
                    f"{labels} · needs {' + '.join(service.predictor.modalities)} · windows of "
                    f"{service.window:g} s every {service.hop:g} s · files up to "
                    f"{service.limits.max_upload_mb:g} MB and {service.limits.max_duration:g} s")
        outputs = _result_components(gr)
        status, player, listen, label, timeline, frames, downloads = outputs

        def run(file: str | None) -> tuple:
            shown, video, audio, *rest = page_outputs(service, file)
            return (shown, gr.update(value=video, visible=audio is None),  # one player shown
                    gr.update(value=audio, visible=audio is not None), *rest)

        with gr.Row():
            with gr.Column(scale=2):
                upload = gr.File(label="Video or audio file", file_count="single", type="filepath",
                                 height=120, elem_id="upload")
                button = gr.Button("Predict", variant="primary", elem_id="predict")
                if service.examples:
                    gr.Examples([[str(p)] for p in service.examples], inputs=[upload],
                                outputs=outputs, fn=run, run_on_click=True, cache_examples=False,
                                label="Example clips: synthetic-corpus dialogs, mixed emotions")
                player.render()
                listen.render()
            with gr.Column(scale=3):
                for component in (status, label, timeline, frames, downloads):
                    component.render()
        for event in (upload.upload, button.click):
            event(run, inputs=[upload], outputs=outputs, concurrency_limit=1,
                  concurrency_id="model")
    # the running event counts in Gradio's queue; Service._turn gates the endpoint alike
    page.queue(max_size=service.limits.max_waiting + 1, default_concurrency_limit=1)
    return page


# ------------------------------------------------------------------------------ the JSON endpoint
def _json_error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def add_api(app: FastAPI, service: Service) -> None:
    """POST /api/predict (multipart field `file`) -> the `predict` JSON; {"error"} with 4xx."""

    @app.post(API_PATH)
    async def api_predict(request: Request):
        length = request.headers.get("content-length", "")
        if not length.isdigit():
            return _json_error(411, "send the upload with a Content-Length (curl -F file=@clip.mp4)")
        if int(length) > service.limits.max_upload_bytes + 64 * 1024:  # + multipart framing
            return _json_error(413, f"upload of {int(length) / 2**20:.1f} MB is larger than the "
                                    f"{service.limits.max_upload_mb:g} MB limit")
        try:
            form = await request.form(max_files=1, max_fields=4)
        except Exception as err:  # starlette's own 400s would answer {"detail"}, not {"error"}
            return _json_error(400, f"not a multipart upload with one file ({err})")
        upload = form.get("file")
        if upload is None or not hasattr(upload, "read"):
            return _json_error(400, "no file: send it as the multipart field 'file' "
                                    "(curl -F file=@clip.mp4 ...)")
        name = Path(upload.filename or "upload").name
        folder = service.new_folder("api")
        try:
            path = folder / (_UNSAFE.sub("_", name) or "upload")
            with open(path, "wb") as fh:
                shutil.copyfileobj(upload.file, fh, 1 << 20)
            result, _ = await run_in_threadpool(service.predict, path, name)
            return result
        except Refused as err:
            return _json_error(err.status, str(err))
        finally:
            await upload.close()
            shutil.rmtree(folder, ignore_errors=True)


def build_app(service: Service) -> FastAPI:
    """The FastAPI app: /api/predict, and the Gradio page at /."""
    import gradio as gr

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        service.close()  # here, not after uvicorn returns: it re-raises SIGTERM once shut down

    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    add_api(app, service)
    page = build_page(service)
    return gr.mount_gradio_app(
        app, page, path="", max_file_size=service.limits.max_upload_bytes, ssr_mode=False,
        mcp_server=False, allowed_paths=[str(service.workdir / "examples")], css=CSS,
        footer_links=[], run_history=False, show_error=True,
    )


def serve(predictor: Predictor, host: str = "127.0.0.1", port: int = 7860,
          window: float = DEFAULT_WINDOW, hop: float | None = DEFAULT_HOP,
          limits: Limits = Limits()) -> None:
    """Run the server until interrupted, then remove its files."""
    import uvicorn

    service = Service(predictor, window, hop, limits)
    try:
        app = build_app(service)
        log.info("serving %s on http://%s:%d (JSON: POST %s)", predictor.model_dir, host, port, API_PATH)
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        service.close()
