"""How good is `--crop face` (OpenCV Haar, `data.video.FaceCropper`) on a real face?

Run from the repository root (needs opencv-python-headless and scikit-image)::

    python benchmarks/face_detection.py

The face is scikit-image's astronaut photograph (512x512, a real portrait; the Haar detector
finds its face at x=176, y=65, 98x98 px at full size, the reference box). Clips of 960x720
frames (a textured grey background, 25 fps) paste the photograph scaled and moved, and hide
part of the face:

* move     the photo at 0.6x crosses the frame along a curved path;
* scale    0.25x -> 1.25x: face width 3 % -> 13 % of the frame... and 1.25x -> 2.5x in a
           second pass (13 % -> 26 %), to find the smallest face the settings can see;
* occlude  0.8x, a flat bar over the lower 0 / 20 / 40 / 60 % of the face, then over its left
           0 / 20 / 40 / 60 %;
* gap      30 frames with the face, 30 without (the photo removed), 30 with it again.

Per frame: ``detector`` = FaceCropper's own detector (largest box, at its `detect_width`)
finds a box overlapping the true face (IoU >= 0.3); ``cropper`` = the box the cropper
actually uses under its rule (detect every 3rd frame, hold the last box up to 15 frames, then
the full region) is on the face; ``full`` = frames served as the full region (no box);
``wrong`` = a box off the face (or any box where there is no face). Results: a table and
``results/face_detection.json``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

W, H = 960, 720
REF_BOX = (176, 65, 98, 98)  # the detector's box on the full-size photograph


def background(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.normal(110, 12, (H // 8, W // 8, 1)).clip(0, 255)
    return np.repeat(np.repeat(np.repeat(noise, 8, 0), 8, 1), 3, 2).astype(np.uint8)


def paste(canvas: np.ndarray, photo: np.ndarray, scale: float, x: int, y: int
          ) -> tuple[int, int, int, int]:
    """Paste the scaled photo at (x, y) (clipped to the frame); the true face box."""
    import cv2

    size = max(8, int(round(512 * scale)))
    img = cv2.resize(photo, (size, size), interpolation=cv2.INTER_AREA)
    x0, y0, x1, y1 = max(0, x), max(0, y), min(W, x + size), min(H, y + size)
    canvas[y0:y1, x0:x1] = img[y0 - y:y1 - y, x0 - x:x1 - x]
    fx, fy, fw, fh = REF_BOX
    return (int(x + fx * scale), int(y + fy * scale), int(fw * scale), int(fh * scale))


def iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    ix = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = ix * iy
    return inter / float(aw * ah + bw * bh - inter) if inter else 0.0


def frames_move(photo):
    for i in range(100):
        t = i / 99
        x = int(-60 + t * (W - 250))
        y = int(200 + 120 * np.sin(2 * np.pi * t))
        canvas = background(i)
        yield canvas, paste(canvas, photo, 0.6, x, y), "move"


def frames_scale(photo, lo: float, hi: float, name: str):
    for i in range(60):
        s = lo + (hi - lo) * i / 59
        canvas = background(i)
        size = int(512 * s)
        yield canvas, paste(canvas, photo, s, (W - size) // 2, max(-int(60 * s), (H - size) // 2)), \
            f"{name} face {int(REF_BOX[2] * s)} px"


def frames_occlude(photo):
    for side in ("lower", "left"):
        for frac in (0.0, 0.2, 0.4, 0.6):
            for i in range(20):
                canvas = background(i)
                fx, fy, fw, fh = box = paste(canvas, photo, 0.8, 300 + 2 * i, 150)
                if side == "lower":
                    canvas[fy + int(fh * (1 - frac)):fy + fh, fx:fx + fw] = 60
                else:
                    canvas[fy:fy + fh, fx:fx + int(fw * frac)] = 60
                yield canvas, box, f"occlude {side} {int(frac * 100)}%"


def frames_gap(photo):
    for i in range(90):
        canvas = background(i)
        if 30 <= i < 60:
            yield canvas, None, "gap: no face"
        else:
            yield canvas, paste(canvas, photo, 0.7, 250 + i, 120), "gap: face"


def run(clips) -> dict:
    """Per condition: frames, detector hits, cropper on-face / full-region / wrong frames."""
    from foalnet.data.video import FaceCropper

    out: dict[str, dict] = {}
    for clip in clips:
        cropper = FaceCropper()
        cropper.reset()
        for image, truth, cond in clip:
            row = out.setdefault(cond, {"frames": 0, "detector": 0, "cropper": 0, "full": 0,
                                        "wrong": 0})
            row["frames"] += 1
            found = cropper._detect(image)
            row["detector"] += bool(truth and found and iou(found, truth) >= 0.3)
            used = cropper._box(image, "face:full")
            if used is None:
                row["full"] += 1
            elif truth is not None and iou(used, truth) >= 0.3:
                row["cropper"] += 1
            else:
                row["wrong"] += 1
    return out


def main() -> int:
    from skimage.data import astronaut

    photo = astronaut()
    clips = [frames_move(photo), frames_scale(photo, 0.25, 1.25, "scale"),
             frames_scale(photo, 1.25, 2.5, "scale"), frames_occlude(photo), frames_gap(photo)]
    results = run(clips)
    groups = {}
    for cond, row in results.items():  # the scale sweeps: bucket by face width in frame %
        if cond.startswith("scale"):
            width = int(cond.split()[2])
            key = f"scale: face {5 * (100 * width // W // 5)}-{5 * (100 * width // W // 5) + 5} % of width"
            g = groups.setdefault(key, dict.fromkeys(row, 0))
            for k, v in row.items():
                g[k] += v
        else:
            groups[cond] = row
    print(f"{'condition':42s} {'frames':>6s} {'detector':>9s} {'cropper':>8s} {'full':>5s} {'wrong':>6s}")
    for cond, r in groups.items():
        print(f"{cond:42s} {r['frames']:6d} {r['detector'] / r['frames']:9.0%} "
              f"{r['cropper'] / r['frames']:8.0%} {r['full']:5d} {r['wrong']:6d}")
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "face_detection.json").write_text(json.dumps(
        {"frame": [W, H], "reference_box": REF_BOX, "conditions": groups}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
