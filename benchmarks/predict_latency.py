"""Per-file prediction latency and peak memory of `foalnet.Predictor` with the `tiny` preset.

    python benchmarks/predict_latency.py                 # 5 s clips + a 30 s windowed recording
    python benchmarks/predict_latency.py --full          # adds a 120 s windowed recording
    python benchmarks/predict_latency.py --out runs/predict_latency.json --threads 2

Clip: 720x480 (IEMOCAP size) at 30 fps, H.264 video + AAC 48 kHz stereo audio in mp4, written
with PyAV. Models: `FoalNetConfig.tiny()` (offline audio front end, tiny 128-d visual encoder),
random init, saved to a temp folder and loaded with `Predictor.from_pretrained`.

Method: each configuration runs in a FRESH subprocess so that its peak resident memory
(`resource.getrusage(RUSAGE_SELF).ru_maxrss`) is its own. In the child: load the predictor,
record RSS (from /proc/self/status), predict once (cold), then `--repeats` more times; the
latency is the median warm time divided by the number of files in the call. "peak MB" is the
child's maxrss (python + torch + model + decoding), "Δ peak MB" is maxrss minus the RSS after
loading, i.e. what prediction itself added.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CONFIGS = {
    # name: (model modality, clip, files per call, window, hop, batch size)
    "av, 1 file": ("av", "clip5", 1, None, None, 1),
    "av, 8 files batched": ("av", "clip5", 8, None, None, 8),
    "audio-only, 1 file": ("audio", "clip5", 1, None, None, 1),
    "video-only, 1 file": ("video", "clip5", 1, None, None, 1),
    "av, window 2 s hop 1 s": ("av", "clip5", 1, 2.0, 1.0, 8),
    "av, 30 s file, window 2 s hop 1 s": ("av", "clip30", 1, 2.0, 1.0, 8),
}
FULL_CONFIGS = {
    "av, 120 s file, window 2 s hop 1 s": ("av", "clip120", 1, 2.0, 1.0, 8),
}


def make_clip(path: Path, seconds: float, fps: int = 30, size: tuple[int, int] = (720, 480),
              rate: int = 48000) -> Path:
    """H.264 + AAC stereo mp4 with a moving bar and a gliding tone."""
    import av

    W, H = size
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = W, H, "yuv420p"
        vs.options = {"preset": "ultrafast"}
        aus = out.add_stream("aac", rate=rate)
        aus.layout = "stereo"
        for i in range(int(seconds * fps)):
            img = np.full((H, W, 3), 50, np.uint8)
            img[:, (i * 11) % W : (i * 11) % W + 20] = (230, 190, 80)
            for packet in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in vs.encode():
            out.mux(packet)
        step = aus.codec_context.frame_size or 1024
        n = int(seconds * rate)
        for s in range(0, n, step):
            t = np.arange(s, min(n, s + step)) / rate
            x = (0.2 * np.sin(2 * np.pi * (150 + 20 * t) * t)).astype(np.float32)
            frame = av.AudioFrame.from_ndarray(np.stack([x, x]), format="fltp", layout="stereo")
            frame.sample_rate, frame.pts = rate, s
            for packet in aus.encode(frame):
                out.mux(packet)
        for packet in aus.encode():
            out.mux(packet)
    return path


def save_model(folder: Path, modality: str) -> Path:
    import torch

    from foalnet.model.foalnet import FoalNet, FoalNetConfig

    torch.manual_seed(0)
    extra = {} if modality == "av" else {"use_avel": False, "use_mem": False}
    config = FoalNetConfig.tiny(modality=modality, visual_settings={"crop": "full"}, **extra)
    return FoalNet(config).save_pretrained(folder / modality)


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(spec: dict) -> dict:
    """Runs in the subprocess: load, predict cold + warm, report times and memory."""
    import torch

    torch.set_num_threads(spec["threads"])
    from foalnet.infer.predictor import Predictor

    t0 = time.perf_counter()
    predictor = Predictor.from_pretrained(spec["model"], batch_size=spec["batch_size"])
    load_s = time.perf_counter() - t0
    rss_loaded = _rss_mb()
    files = [spec["clip"]] * spec["files"]
    kwargs = {"window": spec["window"], "hop": spec["hop"]}
    t0 = time.perf_counter()
    result = predictor.predict(files, **kwargs)
    cold = time.perf_counter() - t0
    errors = [r["error"] for r in result if "error" in r]
    if errors:
        raise SystemExit(f"prediction failed: {errors[0]}")
    warm = []
    for _ in range(spec["repeats"]):
        t0 = time.perf_counter()
        predictor.predict(files, **kwargs)
        warm.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return {
        "load_s": load_s,
        "cold_per_file_s": cold / len(files),
        "warm_per_file_s": statistics.median(warm) / len(files) if warm else None,
        "rss_after_load_mb": rss_loaded,
        "peak_rss_mb": peak,
        "delta_peak_mb": peak - rss_loaded,
        "windows": len(result[0].get("timeline", [])) or None,
    }


def measure(name: str, spec: dict) -> dict:
    """Run one configuration in a fresh interpreter."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(spec["threads"]))
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{name}: child failed\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    head = ("| configuration | clip s | files/call | windows | cold s/file | warm s/file | "
            "peak MB | Δ peak MB |")
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['seconds']:.0f} | {r['files']} | {r['windows'] or '-'} | "
            f"{r['cold_per_file_s']:.3f} | {r['warm_per_file_s']:.3f} | {r['peak_rss_mb']:.0f} | "
            f"{r['delta_peak_mb']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="also a 120 s windowed recording")
    parser.add_argument("--repeats", type=int, default=5, help="warm repetitions per configuration")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the CPU is shared)")
    parser.add_argument("--out", type=Path, default=Path("runs/predict_latency.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    configs = {**CONFIGS, **(FULL_CONFIGS if args.full else {})}
    seconds = {"clip5": 5.0, "clip30": 30.0, "clip120": 120.0}
    rows = []
    with tempfile.TemporaryDirectory(prefix="foalnet-predict-bench-") as tmp:
        root = Path(tmp)
        clips = {c[1] for c in configs.values()}
        clip_paths = {c: str(make_clip(root / f"{c}.mp4", seconds[c])) for c in sorted(clips)}
        models = {m: str(save_model(root, m)) for m in sorted({c[0] for c in configs.values()})}
        for name, (modality, clip, files, window, hop, batch) in configs.items():
            spec = {"model": models[modality], "clip": clip_paths[clip], "files": files,
                    "window": window, "hop": hop, "batch_size": batch, "threads": args.threads,
                    "repeats": args.repeats if seconds[clip] <= 5 else 1}
            row = {"name": name, "seconds": seconds[clip], "files": files, **measure(name, spec)}
            rows.append(row)
            print(f"{name}: {row['warm_per_file_s']:.3f} s/file, peak {row['peak_rss_mb']:.0f} MB",
                  flush=True)
    meta = {"threads": args.threads, "cpu_count": os.cpu_count(), "python": sys.version.split()[0],
            "load_average_1min_at_end": round(os.getloadavg()[0], 2),
            "clip": "720x480 30 fps H.264 + AAC 48 kHz stereo mp4", "preset": "tiny (random init)"}
    print()
    print(table(rows))
    print(f"\n{args.threads} torch thread(s), {os.cpu_count()} CPUs, load average "
          f"{meta['load_average_1min_at_end']} (other processes inflate the times)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
