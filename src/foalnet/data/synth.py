"""``foalnet synth``: an offline corpus laid out exactly like IEMOCAP_full_release.

Emotion design (so that neither modality alone separates the four classes):

* the VOICE carries arousal: ang/hap/exc are higher in pitch level and range, louder, faster and
  tenser (flatter spectral tilt, less breath noise) than neu/sad;
* the FACE carries valence: mouth corners up, raised brows and blush for hap/exc, corners down
  and frowning brows for ang and sad alike, a neutral face for neu;
* so audio tells {hap, ang} from {neu, sad}, the face tells hap / neu / {ang, sad}, and only both
  together give all four. Speakers differ in voice and face; intensities, noise and head
  position vary per utterance.

Each dialog video is MPEG-4 Part 2 in AVI, 720x480, 30 fps, the marker wearer (id[5]) on the
left, the speaking actor's mouth opening with the envelope of the speech, a mono PCM audio track
with the dialog's sound. Label spans are the seconds where the utterance sits in the video, the
dialog wav and the utterance wav. Frames are composed from per-actor sprites (cached per
valence level and mouth opening), so drawing costs a copy per frame. Sessions are generated in
parallel processes, each from its own seed, so the output does not depend on ``workers``.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf
from foalnet.errors import UsageError

SR = 16000
FPS = 30
WIDTH, HEIGHT = 720, 480
HALF = WIDTH // 2
PAD = 1  # sprite margin for per-utterance head shifts
MARKER_FILE = "foalnet_synth.json"

# code -> (arousal, valence) centres; the codes after "ang" are dropped by the protocol.
EMOTIONS = {
    "neu": (0.0, 0.0), "hap": (1.0, 1.0), "exc": (1.1, 0.9), "sad": (-0.1, -1.0),
    "ang": (1.1, -1.0), "fru": (0.6, -0.6), "sur": (1.0, 0.3), "fea": (0.9, -0.8),
    "dis": (0.4, -0.8), "oth": (0.5, 0.0), "xxx": (0.5, 0.0),
}
WORDS = {
    "neu": "Neutral", "hap": "Happiness", "exc": "Excited", "sad": "Sadness", "ang": "Anger",
    "fru": "Frustration", "fea": "Fear", "sur": "Surprise", "dis": "Disgust", "oth": "Other",
}
# Codes of a dialog in order of priority: the first n are used (so even a tiny dialog covers
# all four classes, exc and a dropped code), then shuffled.
CODE_PATTERN = (
    "neu", "hap", "sad", "ang", "exc", "fru", "neu", "sad", "ang", "xxx", "neu", "hap", "sad",
    "ang", "exc", "sur", "neu", "hap", "sad", "ang", "exc", "oth", "neu", "ang", "sad",
)
VALENCE_LEVELS = np.linspace(-1.5, 1.5, 11)
MOUTH_LEVELS = 6
VOWELS = ((730, 1090), (270, 2290), (530, 1840), (570, 840), (300, 870), (660, 1720), (440, 1020))


@dataclass(frozen=True)
class SizeSpec:
    dialogs_per_session: int
    utterances_per_dialog: int
    duration: tuple[float, float]  # utterance length range (s)


SIZES = {
    "tiny": SizeSpec(1, 8, (0.6, 1.0)),
    "small": SizeSpec(2, 25, (1.0, 2.0)),
    "medium": SizeSpec(4, 30, (1.0, 2.6)),
}


@dataclass(frozen=True)
class Voice:
    f0: float          # base pitch (Hz)
    gain_db: float     # speech RMS at arousal 0 (dBFS)
    tilt: float        # harmonic roll-off exponent at arousal 0 (higher = softer voice)
    syl_rate: float    # syllables per second at arousal 0
    formant_scale: float
    breath: float


@dataclass(frozen=True)
class Face:
    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    bg: tuple[int, int, int]
    rx: float
    ry: float
    cy: float
    eye_dx: float
    eye_dy: float
    eye_r: float
    mouth_dy: float
    mouth_w: float


@dataclass(frozen=True)
class Actor:
    speaker: str
    gender: str
    voice: Voice
    face: Face


@dataclass
class Utt:
    id: str
    code: str
    actor: Actor
    start: float
    end: float
    arousal: float
    valence: float
    wave: np.ndarray  # (S,) float32, includes background noise
    env: np.ndarray   # (S,) speech envelope 0..1


# --- actors -----------------------------------------------------------------------------------

def make_actor(rng: np.random.Generator, session: int, gender: str) -> Actor:
    """Speaker-specific voice and face (10 distinct speakers over 5 sessions)."""
    base_f0 = 210.0 if gender == "F" else 118.0
    voice = Voice(
        f0=base_f0 * 2 ** rng.uniform(-0.2, 0.2), gain_db=rng.uniform(-30, -26),
        tilt=rng.uniform(1.9, 2.3), syl_rate=rng.uniform(3.2, 4.2),
        formant_scale=(1.12 if gender == "F" else 1.0) * rng.uniform(0.95, 1.05),
        breath=rng.uniform(0.03, 0.07))
    skin = tuple(int(c) for c in rng.uniform([170, 120, 90], [240, 200, 170]))
    hair = tuple(int(c) for c in rng.uniform([10, 10, 10], [120, 80, 60]))
    bg = tuple(int(c) for c in rng.uniform([40, 40, 60], [110, 110, 140]))
    # geometry varies a little between speakers (colours carry most of the identity), so the
    # expression cues sit at comparable places in every face
    face = Face(skin=skin, hair=hair, bg=bg, rx=rng.uniform(110, 124), ry=rng.uniform(148, 160),
                cy=rng.uniform(244, 256), eye_dx=rng.uniform(42, 50), eye_dy=rng.uniform(38, 46),
                eye_r=rng.uniform(10, 12), mouth_dy=rng.uniform(62, 70), mouth_w=rng.uniform(58, 66))
    return Actor(f"Ses0{session}{gender}", gender, voice, face)


# --- faces ------------------------------------------------------------------------------------

_YY, _XX = np.mgrid[0:HEIGHT + 2 * PAD, 0:HALF + 2 * PAD].astype(np.float32)


def _box(x0: float, y0: float, x1: float, y1: float) -> tuple[slice, slice]:
    """Clipped pixel window [y0, y1] x [x0, x1]: shapes are evaluated there only (cheap)."""
    h, w = _YY.shape
    return (slice(max(0, int(y0)), min(h, int(math.ceil(y1)) + 1)),
            slice(max(0, int(x0)), min(w, int(math.ceil(x1)) + 1)))


def _fill(img: np.ndarray, box: tuple[slice, slice], mask: np.ndarray, color, alpha: float = 1.0) -> None:
    view = img[box]
    if alpha >= 1.0:
        view[mask] = color
    else:
        view[mask] = (view[mask] * (1 - alpha) + np.asarray(color, np.float32) * alpha).astype(np.uint8)


def _ellipse(img: np.ndarray, cx: float, cy: float, rx: float, ry: float, color,
             alpha: float = 1.0) -> None:
    box = _box(cx - rx, cy - ry, cx + rx, cy + ry)
    mask = ((_XX[box] - cx) / rx) ** 2 + ((_YY[box] - cy) / ry) ** 2 <= 1.0
    _fill(img, box, mask, color, alpha)


def _segment(img: np.ndarray, x0: float, y0: float, x1: float, y1: float, width: float,
             color) -> None:
    """Pixels within width/2 of the segment (x0,y0)-(x1,y1)."""
    r = width / 2
    box = _box(min(x0, x1) - r, min(y0, y1) - r, max(x0, x1) + r, max(y0, y1) + r)
    xx, yy = _XX[box], _YY[box]
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((xx - x0) * dx + (yy - y0) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    _fill(img, box, (xx - x0 - t * dx) ** 2 + (yy - y0 - t * dy) ** 2 <= r * r, color)


def draw_base(face: Face) -> np.ndarray:
    """The parts of a face that never change: background, hair, skin, eyes."""
    img = np.empty(_YY.shape + (3,), np.uint8)
    img[:] = face.bg
    cx, cy = (HALF + 2 * PAD) / 2, face.cy + PAD
    _ellipse(img, cx, cy - 30, face.rx + 14, face.ry + 8, face.hair)
    _ellipse(img, cx, cy, face.rx, face.ry, face.skin)
    ey = cy - face.eye_dy
    for side in (-1, 1):
        ex = cx + side * face.eye_dx
        _ellipse(img, ex, ey, face.eye_r * 1.7, face.eye_r, (245, 245, 245))
        _ellipse(img, ex, ey, face.eye_r * 0.7, face.eye_r * 0.7, (30, 25, 20))
    return img


def draw_face(face: Face, valence: float, mouth: float, base: np.ndarray | None = None) -> np.ndarray:
    """One half-frame sprite (H+2P, W/2+2P, 3) uint8 for a valence and a mouth opening in 0..1."""
    img = (draw_base(face) if base is None else base).copy()
    cx, cy = (HALF + 2 * PAD) / 2, face.cy + PAD
    if valence > 0:  # blush on the cheeks grows with positive valence
        for side in (-1, 1):
            _ellipse(img, cx + side * (face.eye_dx + 20), cy + 22, 30, 20, (200, 40, 70),
                     alpha=min(0.8, 0.6 * valence))
    ey = cy - face.eye_dy
    for side in (-1, 1):
        brow_y = ey - face.eye_r - 16
        inner_x, outer_x = cx + side * 10, cx + side * (face.eye_dx + 26)
        # negative valence lowers the inner ends (frown); positive raises the brows
        _segment(img, inner_x, brow_y - 14 * valence, outer_x, brow_y - 5 * max(valence, 0.0), 12,
                 face.hair)
    _draw_mouth(img, cx, cy + face.mouth_dy, face.mouth_w, valence, mouth)
    return img


def _draw_mouth(img: np.ndarray, cx: float, my: float, w: float, valence: float,
                mouth: float) -> None:
    """Mouth line whose corners curve with valence and which opens with the speech envelope."""
    box = _box(cx - w, my - 60, cx + w, my + 60)
    u = (_XX[box] - cx) / w
    inside = np.abs(u) <= 1.0
    centre = my - 40.0 * valence * u ** 2 + 10.0 * valence  # corners up for valence > 0
    half_open = 16.0 * mouth * (1.0 - u ** 2)
    dist = np.abs(_YY[box] - centre)
    _fill(img, box, inside & (dist <= half_open + 6.0), (120, 20, 35))
    _fill(img, box, inside & (dist < half_open), (50, 10, 15))


class SpriteCache:
    """Sprites per (actor, valence level, mouth level), drawn on first use."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, int, int], np.ndarray] = {}
        self._bases: dict[str, np.ndarray] = {}

    def get(self, actor: Actor, v_level: int, m_level: int) -> np.ndarray:
        key = (actor.speaker, v_level, m_level)
        if key not in self._cache:
            if actor.speaker not in self._bases:
                self._bases[actor.speaker] = draw_base(actor.face)
            self._cache[key] = draw_face(actor.face, float(VALENCE_LEVELS[v_level]),
                                         m_level / (MOUTH_LEVELS - 1), self._bases[actor.speaker])
        return self._cache[key]


def valence_level(valence: float) -> int:
    return int(np.argmin(np.abs(VALENCE_LEVELS - valence)))


# --- voices -----------------------------------------------------------------------------------

def _syllables(rng: np.random.Generator, n: int, rate: float) -> np.ndarray:
    """Syllable boundaries (sample indices), equal spacing with jitter."""
    n_syl = max(2, int(round(n / SR * rate)))
    edges = np.linspace(0, n, n_syl + 1)
    edges[1:-1] += rng.uniform(-0.2, 0.2, n_syl - 1) * n / n_syl
    return edges.astype(np.int64)


def synth_voice(rng: np.random.Generator, voice: Voice, arousal: float,
                n: int) -> tuple[np.ndarray, np.ndarray]:
    """A voiced utterance of n samples: (wave (n,) float32, envelope (n,) in 0..1).

    Arousal raises pitch level (+0.45 octave per unit) and range, loudness (+9 dB), rate
    (+35 %) and tension (flatter harmonic tilt, less breath).
    """
    a = float(np.clip(arousal, -0.5, 1.6))
    edges = _syllables(rng, n, voice.syl_rate * (1 + 0.35 * a))
    n_syl = len(edges) - 1
    idx = np.arange(n)
    syl = np.clip(np.searchsorted(edges, idx, side="right") - 1, 0, n_syl - 1)
    pos = (idx - edges[syl]) / np.maximum(edges[syl + 1] - edges[syl], 1)
    amp = rng.uniform(0.6, 1.0, n_syl) * (rng.random(n_syl) > 0.08)
    env = (np.sin(np.pi * pos) ** 0.7 * amp[syl]).astype(np.float32)  # (n,)
    ramp = min(n // 2, int(0.02 * SR))
    env[:ramp] *= np.linspace(0, 1, ramp)
    env[n - ramp:] *= np.linspace(1, 0, ramp)

    centres = (edges[:-1] + edges[1:]) / 2
    octave = (0.45 * a + rng.normal(0, 0.04 + 0.12 * max(a, 0.0), n_syl)
              - 0.15 * centres / n)
    f0 = voice.f0 * 2 ** np.interp(idx, centres, octave)  # (n,) Hz, smooth contour
    f0 *= 1 + 0.004 * rng.standard_normal(n).cumsum() / np.sqrt(np.arange(1, n + 1))
    phase = (2 * np.pi * np.cumsum(f0) / SR).astype(np.float32)

    k = np.arange(1, min(40, int(4000 / f0.min())) + 1, dtype=np.float32)  # (K,)
    tilt = max(0.6, voice.tilt - 0.9 * a)
    syl_f0 = voice.f0 * 2 ** octave  # (n_syl,)
    vowels = np.array([VOWELS[i] for i in rng.integers(0, len(VOWELS), n_syl)]) * voice.formant_scale
    freqs = syl_f0[:, None] * k[None, :]  # (n_syl, K)
    weight = (1 + 6 * np.exp(-((freqs - vowels[:, :1]) / 160) ** 2)
              + 4 * np.exp(-((freqs - vowels[:, 1:]) / 220) ** 2)) * k ** -tilt
    harm = np.einsum("nk,nk->n", np.sin(phase[:, None] * k[None, :]),
                     weight[syl].astype(np.float32))  # (n,)
    breath = np.diff(rng.standard_normal(n + 1)).astype(np.float32)
    breath *= voice.breath * (1.3 - 0.7 * min(a, 1.2)) * np.sqrt(np.mean(harm ** 2))
    wave = (harm + breath) * env
    rms = np.sqrt(np.mean(wave[env > 0.1] ** 2)) if np.any(env > 0.1) else 1.0
    wave *= 10 ** ((voice.gain_db + 9.0 * a) / 20) / max(rms, 1e-8)
    return wave.astype(np.float32), env


def background(rng: np.random.Generator, n: int, level_db: float) -> np.ndarray:
    """Low-passed room noise at level_db dBFS."""
    noise = rng.standard_normal(n + 1).astype(np.float32)
    noise = (noise[1:] + noise[:-1]) / 2
    return noise * np.float32(10 ** (level_db / 20) / 0.7)


# --- dialogs ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class DialogSpec:
    name: str
    marker: str  # gender of the marker wearer = id[5]; sits on the left


def dialog_specs(session: int, count: int) -> list[DialogSpec]:
    """Alternate impro / script dialogs and marker letters, with offsets per session, so that
    even one dialog per session gives both kinds of ids and both marker letters."""
    specs, made = [], {"impro": 0, "script": 0}
    for j in range(count):
        marker = "FM"[(session + j) % 2]
        kind = "impro" if (j + session // 2) % 2 == 0 else "script"
        made[kind] += 1
        number = made[kind]
        name = (f"Ses0{session}{marker}_impro{number:02d}" if kind == "impro"
                else f"Ses0{session}{marker}_script{(number + 1) // 2:02d}_{2 - number % 2}")
        specs.append(DialogSpec(name, marker))
    return specs


def _codes(rng: np.random.Generator, n: int) -> list[str]:
    codes = [CODE_PATTERN[i % len(CODE_PATTERN)] for i in range(n)]
    return [codes[i] for i in rng.permutation(n)]


def make_dialog(rng: np.random.Generator, spec: DialogSpec, actors: dict[str, Actor],
                size: SizeSpec) -> list[Utt]:
    """The utterances of one dialog on a shared timeline (turns mostly alternate)."""
    utts: list[Utt] = []
    counters = {"F": 0, "M": 0}
    gender = spec.marker
    t = round(rng.uniform(0.4, 0.8), 4)
    for code in _codes(rng, size.utterances_per_dialog):
        if utts and rng.random() < 0.75:
            gender = "M" if gender == "F" else "F"
        actor = actors[gender]
        dur = rng.uniform(*size.duration)
        start, end = round(t, 4), round(t + dur, 4)
        n = int(round(end * SR)) - int(round(start * SR))
        aro, val = EMOTIONS[code]
        arousal = aro + rng.normal(0, 0.2)
        valence = val * rng.uniform(0.5, 1.2) + rng.normal(0, 0.2)
        wave, env = synth_voice(rng, actor.voice, arousal, n)
        wave += background(rng, n, rng.uniform(-58, -46))
        utt_id = f"{spec.name}_{gender}{counters[gender]:03d}"
        counters[gender] += 1
        utts.append(Utt(utt_id, code, actor, start, end, arousal, valence, wave, env))
        t = end + rng.uniform(0.15, 0.5)
    return utts


def dialog_audio(utts: list[Utt], spec: DialogSpec, n: int) -> np.ndarray:
    """Stereo dialog track (n, 2): channel 0 the left (marker) actor, 1 the right one."""
    track = np.zeros((n, 2), np.float32)
    for u in utts:
        ch = 0 if u.actor.gender == spec.marker else 1
        s = int(round(u.start * SR))
        track[s:s + len(u.wave), ch] += u.wave
    return track


def frame_plan(utts: list[Utt], n_frames: int) -> np.ndarray:
    """Index of the utterance active at each video frame (-1: nobody speaks)."""
    active = np.full(n_frames, -1, np.int64)
    for i, u in enumerate(utts):
        active[int(math.ceil(u.start * FPS)):min(n_frames, int(math.floor(u.end * FPS)) + 1)] = i
    return active


def _mouth_level(u: Utt, t: float) -> int:
    """Mouth opening at time t: the speech envelope around that frame, quantised."""
    s = int((t - u.start) * SR)
    window = u.env[max(0, s - SR // 60): s + SR // 60]
    return int(round(float(window.mean() if window.size else 0.0) * (MOUTH_LEVELS - 1)))


def write_video(path: Path, utts: list[Utt], spec: DialogSpec, actors: dict[str, Actor],
                audio: np.ndarray, rng: np.random.Generator, sprites: SpriteCache) -> None:
    """MPEG-4 Part 2 AVI, 720x480 @ 30 fps, left = marker wearer, with a mono PCM track."""
    import av

    n_frames = int(math.ceil(len(audio) / SR * FPS))
    active = frame_plan(utts, n_frames)
    left, right = actors[spec.marker], actors["M" if spec.marker == "F" else "F"]
    shifts = rng.integers(-PAD, PAD + 1, size=(len(utts) + 1, 2, 2))  # (utt, side, xy)
    listen_v = rng.normal(0, 0.15, len(utts) + 1)
    mono = np.clip(audio.mean(axis=1) * 32767, -32768, 32767).astype(np.int16)
    frame = np.empty((HEIGHT, WIDTH, 3), np.uint8)
    with av.open(str(path), "w", format="avi") as container:
        vstream = container.add_stream("mpeg4", rate=FPS)
        vstream.width, vstream.height, vstream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        vstream.bit_rate = 1_200_000
        astream = container.add_stream("pcm_s16le", rate=SR)
        astream.layout = "mono"
        for i in range(n_frames):
            ui = int(active[i])
            for side, actor in enumerate((left, right)):
                if ui >= 0 and utts[ui].actor is actor:
                    v, m = valence_level(utts[ui].valence), _mouth_level(utts[ui], i / FPS)
                else:  # listening (mirrors the speaker a little) or pause: mouth closed
                    mirror = 0.3 * utts[ui].valence if ui >= 0 else 0.0
                    v, m = valence_level(listen_v[ui] + mirror), 0
                dx, dy = shifts[ui, side] + PAD
                sprite = sprites.get(actor, v, m)  # (H + 2P, W/2 + 2P, 3)
                frame[:, side * HALF:(side + 1) * HALF] = sprite[dy:dy + HEIGHT, dx:dx + HALF]
            for packet in vstream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
            if (i + 1) % FPS == 0 or i == n_frames - 1:  # one second of audio per second of video
                _mux_audio(container, astream, mono, i, n_frames)
        for packet in vstream.encode():
            container.mux(packet)
        for packet in astream.encode():
            container.mux(packet)


def _mux_audio(container, astream, mono: np.ndarray, i: int, n_frames: int) -> None:
    import av

    first = (i // FPS) * SR
    last = len(mono) if i == n_frames - 1 else first + SR
    if last <= first:
        return
    aframe = av.AudioFrame.from_ndarray(mono[None, first:last], format="s16", layout="mono")
    aframe.sample_rate = SR
    aframe.pts = first
    aframe.time_base = Fraction(1, SR)
    for packet in astream.encode(aframe):
        container.mux(packet)


# --- label and side files ---------------------------------------------------------------------

def _vad(u: Utt) -> tuple[float, float, float]:
    val = float(np.clip(3 + 1.3 * u.valence, 1, 5))
    act = float(np.clip(2 + 1.6 * u.arousal, 1, 5))
    return round(val * 2) / 2, round(act * 2) / 2, round(np.clip(act - 0.5, 1, 5) * 2) / 2


def _word(rng: np.random.Generator, code: str) -> str:
    if code == "xxx":  # no majority: annotators disagree
        return str(rng.choice(["Neutral", "Frustration", "Anger", "Sadness"]))
    return WORDS[code]


def label_text(utts: list[Utt], rng: np.random.Generator) -> str:
    """An EmoEvaluation file in the release format ('%' header, summary + annotator lines)."""
    lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
    for u in utts:
        v, a, d = _vad(u)
        lines.append(f"[{u.start:.4f} - {u.end:.4f}]\t{u.id}\t{u.code}\t[{v:.4f}, {a:.4f}, {d:.4f}]")
        for ann in ("C-E1", "C-E2", "C-E4"):
            lines.append(f"{ann}:\t{_word(rng, u.code)};\t()")
        for ann in ("A-E1", "A-E2"):
            lines.append(f"{ann}:\tval {int(round(v))}; act {int(round(a))}; dom  {int(round(d))};\t()")
        lines.append("")
    return "\n".join(lines) + "\n"


def write_dialog(session_dir: Path, spec: DialogSpec, utts: list[Utt], actors: dict[str, Actor],
                 rng: np.random.Generator, sprites: SpriteCache) -> None:
    dialog_dir = session_dir / "dialog"
    emo = dialog_dir / "EmoEvaluation"
    (emo / "Categorical").mkdir(parents=True, exist_ok=True)
    (emo / "Attribute").mkdir(parents=True, exist_ok=True)
    (emo / f"{spec.name}.txt").write_text(label_text(utts, rng), encoding="utf-8")
    # decoys a parser must ignore: per-annotator files in sub-folders
    (emo / "Categorical" / f"{spec.name}_e1_cat.txt").write_text(
        "".join(f"{u.id} :{_word(rng, u.code)}; ()\n" for u in utts), encoding="utf-8")
    (emo / "Attribute" / f"{spec.name}_e1_atr.txt").write_text(
        "".join(f"[{u.start:.4f} - {u.end:.4f}]\t{u.id}\tzzz\t[1, 1, 1]\n" for u in utts),
        encoding="utf-8")
    (dialog_dir / "transcriptions").mkdir(parents=True, exist_ok=True)
    (dialog_dir / "transcriptions" / f"{spec.name}.txt").write_text(
        "".join(f"{u.id} [{u.start:08.4f}-{u.end:08.4f}]: la la la.\n" for u in utts), encoding="utf-8")
    wav_dir = session_dir / "sentences" / "wav" / spec.name
    wav_dir.mkdir(parents=True, exist_ok=True)
    for u in utts:
        sf.write(wav_dir / f"{u.id}.wav", u.wave, SR, subtype="PCM_16")
    n = int(round((utts[-1].end + 0.5) * SR))
    audio = dialog_audio(utts, spec, n)
    (dialog_dir / "wav").mkdir(parents=True, exist_ok=True)
    sf.write(dialog_dir / "wav" / f"{spec.name}.wav", audio, SR, subtype="PCM_16")
    (dialog_dir / "avi" / "DivX").mkdir(parents=True, exist_ok=True)
    write_video(dialog_dir / "avi" / "DivX" / f"{spec.name}.avi", utts, spec, actors, audio,
                rng, sprites)


def write_session(root: str, session: int, seed: int, size: str) -> list[tuple[str, str]]:
    """Generate Session<k> from its own seed; returns (utterance id, code) pairs."""
    spec = SIZES[size]
    rng = np.random.default_rng([seed, session])
    actors = {g: make_actor(rng, session, g) for g in ("F", "M")}
    sprites = SpriteCache()
    session_dir = Path(root) / f"Session{session}"
    out = []
    for dspec in dialog_specs(session, spec.dialogs_per_session):
        utts = make_dialog(rng, dspec, actors, spec)
        write_dialog(session_dir, dspec, utts, actors, rng, sprites)
        out += [(u.id, u.code) for u in utts]
    return out


def _prepare_root(out_dir: Path) -> Path:
    """OUT_DIR/IEMOCAP_full_release, emptied if an earlier synth made it; never user data."""
    root = out_dir / "IEMOCAP_full_release"
    if root.exists():
        if not (root / MARKER_FILE).is_file():
            raise FileExistsError(f"{root} exists and was not written by `foalnet synth`")
        shutil.rmtree(root)
    root.mkdir(parents=True)
    (root / MARKER_FILE).write_text('{"status": "incomplete"}\n', encoding="utf-8")
    return root


def generate(out_dir: str | Path, seed: int = 0, size: str = "small",
             workers: int | None = None) -> dict:
    """Write OUT_DIR/IEMOCAP_full_release; returns a summary (root, counts)."""
    if size not in SIZES:
        raise UsageError(f"unknown size {size!r}; choose from {sorted(SIZES)}")
    root = _prepare_root(Path(out_dir))
    workers = workers or min(2, os.cpu_count() or 1)
    sessions = range(1, 6)
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(write_session, [str(root)] * 5, sessions, [seed] * 5,
                                    [size] * 5))
    else:
        results = [write_session(str(root), s, seed, size) for s in sessions]
    codes = [code for res in results for _, code in res]
    summary = {
        "root": str(root), "seed": seed, "size": size,
        "dialogs": 5 * SIZES[size].dialogs_per_session, "utterances": len(codes),
        "four_class": sum(c in ("neu", "hap", "exc", "sad", "ang") for c in codes),
        "codes": {c: codes.count(c) for c in sorted(set(codes))},
    }
    (root / MARKER_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
