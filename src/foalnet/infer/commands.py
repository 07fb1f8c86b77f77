"""`foalnet predict MODEL_DIR INPUT... [--out FILE.jsonl] [--crop ...] [--window S --hop S]`.

INPUT is a media file, a folder of them (searched recursively), or a text file listing paths
(one per line, `#` comments, relative paths taken from the list's folder). One JSON line per
input goes to --out (or stdout); failed inputs also go to `<out>.rejected.jsonl` and the
console. Exit status: 0 all inputs predicted, 1 any failed, 2 usage error or unusable model.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Iterator, TextIO
from foalnet.errors import UsageError

log = logging.getLogger(__name__)

# Containers a folder is searched for (anything PyAV reads can still be named explicitly).
MEDIA_SUFFIXES = {
    ".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".flv", ".mpg", ".mpeg", ".ts", ".wmv",
    ".3gp", ".ogv", ".wav", ".flac", ".mp3", ".m4a", ".aac", ".ogg", ".oga", ".opus", ".wma",
}
LIST_SUFFIXES = {".txt", ".lst", ".list"}


class _IntermixedParser(argparse.ArgumentParser):
    """Lets options sit between the paths (`predict MODEL --window 2 a.mp4 b.mp4`).

    Plain argparse binds the empty INPUT list at MODEL_DIR and then rejects the later paths.
    """

    _inner = False

    def parse_known_args(self, args=None, namespace=None):
        if self._inner:  # parse_known_intermixed_args calls back into this method
            return super().parse_known_args(args, namespace)
        self._inner = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inner = False


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict",
        help="predict the emotion of new recordings with a trained model folder",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model_dir", metavar="MODEL_DIR", help="model folder (or run folder: uses best/)")
    p.add_argument("inputs", metavar="INPUT", nargs="*",
                   help="media file, folder of media files, or a .txt/.lst list of paths")
    p.add_argument("--audio", help="audio file to pair with --video (instead of INPUT)")
    p.add_argument("--video", help="video file to pair with --audio (instead of INPUT)")
    p.add_argument("--out", type=Path, help="write JSON lines here (default: stdout)")
    p.add_argument("--crop", choices=("full", "left", "right", "face"),
                   help="part of the frame showing the speaker (default: the training crop if "
                   "it applies to any file, else full)")
    p.add_argument("--window", type=float, help="cut each input into windows of this many seconds")
    p.add_argument("--hop", type=float, help="seconds between window starts (default: --window)")
    p.add_argument("--batch-size", type=int, default=8, help="model rows per forward pass")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    p.add_argument("--visual-encoder", help="override the visual encoder recorded in the model "
                   "folder (e.g. a local copy of the CLIP checkpoint)")
    p.set_defaults(func=run)
    p.__class__ = _IntermixedParser  # same object, one overridden method (see the class)
    _register_serve(subparsers)


def _register_serve(subparsers: argparse._SubParsersAction) -> None:
    """`foalnet serve MODEL_DIR`: the web page and JSON endpoint of infer/serve.py."""
    p = subparsers.add_parser(
        "serve",
        help="local web page + JSON endpoint showing a model's predictions over time",
        description="Serve a model folder: a web page (upload a video/audio file or pick a "
        "generated example; player, per-class probability timeline, label, crop thumbnails, "
        "JSON/CSV download) and POST /api/predict (curl -F file=@clip.mp4 "
        "http://127.0.0.1:7860/api/predict). Needs the `serve` extra: pip install 'foalnet[serve]'.",
    )
    p.add_argument("model_dir", metavar="MODEL_DIR", help="model folder (or run folder: uses best/)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default: this machine only; 0.0.0.0 = every network)")
    p.add_argument("--port", type=int, default=7860, help="TCP port of the page and the API (default 7860)")
    p.add_argument("--window", type=float, default=2.0, help="window length in seconds (default 2)")
    p.add_argument("--hop", type=float, default=1.0, help="seconds between windows (default 1)")
    p.add_argument("--max-upload-mb", type=float, default=200.0, help="largest upload (default 200)")
    p.add_argument("--max-duration", type=float, default=600.0,
                   help="longest file in seconds (default 600)")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, ...)")
    p.add_argument("--visual-encoder", help="override the visual encoder recorded in the model folder")
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    """The `serve` command; returns the exit status (2: usage, missing extra, bad model)."""
    from foalnet.infer.predictor import Predictor, PredictorError, check_window

    def usage(message: str) -> int:
        print(f"foalnet serve: error: {message}", file=sys.stderr)
        return 2

    try:
        check_window(args.window, args.hop)
    except UsageError as err:
        return usage(str(err))
    if not (args.max_upload_mb > 0 and args.max_duration > 0 and 0 < args.port < 65536):
        return usage("--max-upload-mb and --max-duration must be > 0, --port in 1..65535")
    try:
        from foalnet.infer.serve import Limits, serve
        import gradio  # noqa: F401
    except ImportError as err:
        return usage(f"serve needs Gradio ({err}): pip install 'foalnet[serve]'")
    try:
        predictor = Predictor.from_pretrained(args.model_dir, device=args.device,
                                              visual_encoder=args.visual_encoder)
    except PredictorError as err:
        return usage(str(err))
    limits = Limits(max_upload_mb=args.max_upload_mb, max_duration=args.max_duration)
    serve(predictor, args.host, args.port, args.window, args.hop, limits)
    return 0


def _list_file(path: Path) -> Iterator[str]:
    """Paths listed in a text file; a relative one is taken from the list's folder, or from the
    current folder when only that one exists."""
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            entry = Path(line).expanduser()
            if not entry.is_absolute():
                beside = path.parent / entry
                entry = beside if beside.exists() or not entry.exists() else entry
            yield str(entry)


def expand_inputs(inputs: list[str]) -> list[str]:
    """Files to predict, in the given order; folders sorted, lists read line by line.

    A missing path stays in the list so that it is reported as a failed input.
    """
    out: list[str] = []
    for raw in inputs:
        path = Path(raw).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in MEDIA_SUFFIXES)
            if not found:
                log.warning("%s: folder holds no media files (%s)", path, ", ".join(sorted(MEDIA_SUFFIXES)))
            out += [str(p) for p in found]
        elif path.suffix.lower() in LIST_SUFFIXES and path.is_file():
            out += list(_list_file(path))
        else:
            out.append(str(path))
    return out


def _usage(message: str) -> int:
    print(f"foalnet predict: error: {message}", file=sys.stderr)
    return 2


def _summary(result: dict) -> str:
    """One console line per input."""
    if "error" in result:
        error = str(result["error"])  # errors name their file already: say it once
        return f"FAILED {error}" if error.startswith(str(result["input"])) else f"FAILED {result['input']}: {error}"
    p = result["probabilities"][result["label"]]
    extra = f", {len(result['timeline'])} windows" if "timeline" in result else ""
    return (f"{result['input']}: {result['label']} (p={p:.3f}; {result['duration']} s; "
            f"{'+'.join(result['modalities'])}{extra})")


def _write(results: Iterator[dict], out: TextIO, rejected: TextIO | None, echo: bool) -> tuple[int, int]:
    """Stream results as JSON lines; (number ok, number failed)."""
    ok = failed = 0
    for result in results:
        out.write(json.dumps(result) + "\n")
        out.flush()
        if "error" in result:
            failed += 1
            log.error("%s", _summary(result))
            if rejected is not None:
                rejected.write(json.dumps({"id": result["input"], "path": result["input"],
                                           "reason": result["error"]}) + "\n")
                rejected.flush()
        else:
            ok += 1
            if echo:
                log.info("%s", _summary(result))
    return ok, failed


def run(args: argparse.Namespace) -> int:
    """The `predict` command; returns the exit status."""
    from foalnet.infer.predictor import Predictor, PredictorError, Source, check_window, make_sources

    if args.inputs and (args.audio or args.video):
        return _usage("give INPUT paths or --audio/--video, not both")
    if not args.inputs and not (args.audio or args.video):
        return _usage("nothing to predict: give INPUT paths or --audio/--video")
    if args.batch_size < 1:
        return _usage(f"--batch-size must be >= 1, got {args.batch_size}")
    try:
        check_window(args.window, args.hop)
    except UsageError as err:
        return _usage(str(err))
    if args.inputs:
        sources = [Source(p, p, p) for p in expand_inputs(args.inputs)]
        if not sources:
            return _usage("the INPUT folders/lists name no media files")
    else:
        sources, _ = make_sources(None, args.audio, args.video)
    try:
        predictor = Predictor.from_pretrained(args.model_dir, device=args.device,
                                              batch_size=args.batch_size,
                                              visual_encoder=args.visual_encoder)
    except PredictorError as err:
        return _usage(str(err))
    try:
        crop = predictor.resolve_crop(args.crop)  # resolved once: its warning is printed once
    except UsageError as err:
        return _usage(str(err))
    results = predictor.iter_predict(sources, crop=crop, window=args.window, hop=args.hop)
    if args.out is None:
        ok, failed = _write(results, sys.stdout, None, echo=False)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        rejected_path = args.out.with_name(args.out.stem + ".rejected.jsonl")
        tmp = args.out.with_name(args.out.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as out, open(rejected_path, "w", encoding="utf-8") as rej:
            ok, failed = _write(results, out, rej, echo=True)
        os.replace(tmp, args.out)
        if not failed:
            rejected_path.unlink()  # no empty reject list beside a clean run
        log.info("wrote %s (%d predicted, %d failed%s)", args.out, ok, failed,
                 f"; reasons in {rejected_path}" if failed else "")
    return 1 if failed else 0
