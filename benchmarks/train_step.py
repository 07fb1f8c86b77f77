"""Training-step time and peak memory: FoalNet vs the original-style implementation.

Run from the repository root (plain Python, no install needed beyond the dev venv)::

    python benchmarks/train_step.py                 # 2-layer encoder, mix + full inputs, epoch estimate
    python benchmarks/train_step.py --full          # + 12-layer encoder (mix inputs), finer epoch grid

Every measurement is appended to ``results/train_step.jsonl`` as soon as it exists, and a rerun
skips the configurations already there (``--fresh`` re-measures), so a long run can be split
(e.g. ``--layers 12`` alone) and still end in one table.

What is measured, and how
-------------------------
* Model: the paper's fusion dims (audio width 1024, video 768, 2+2 cross-attention layers,
  4 heads, AVEL 512) on a WavLM-Large-shaped encoder built from a config with random weights
  (no download), 2 or 12 transformer layers. ``layerdrop`` is set to 0 so both implementations do
  the same amount of work; SpecAugment stays as in WavLM's config. Both implementations get the
  SAME weights (FoalNet saved with ``save_pretrained``; the reference loads the mapped tensors)
  and the SAME batches (seeded).
* Implementations: ``original`` (benchmarks/original_style.py, the authors' structure, run as
  their script runs), ``ours`` (FoalNet from the padded waveform batch) and ``cached`` (FoalNet
  from the audio front-end cache, what ``foalnet train`` does by default: the frozen CNN's output
  of each item is computed before the timed steps, as ``foalnet extract-audio`` does once for a
  whole corpus; that one-off cost is measured separately, CPU s per s of audio, and costed in the
  epoch lines). Every implementation runs with the process defaults: glibc's malloc as configured
  by the caller, no allocator settings from foalnet (those are opt-in, not part of the default any
  more), and ``THP_MEM_ALLOC_ENABLE`` removed from the workers' environment so that a value in the
  caller's shell does not change a row. Rows named ``original-keep`` in older logs were the
  original with foalnet's former allocator settings; they are still shown when present.
  ``--with-original-ce`` adds ``original-ce``: the original backpropagating the classification
  loss only, as the runnable version of the authors' ``train.py`` does (the same forward).
* Step = forward with labels + ``loss.backward()`` + ``AdamW.step()`` + ``zero_grad`` (the
  engine's order; the outputs are dropped before the next batch, as the engine's are), batch 16
  (the original: torch's default AdamW, as the authors' script; foalnet: the fused AdamW its
  engine builds, ``foalnet.train.loop.build_optimizer``, the same update rule).
  Time: median over ``--steps`` steps after ``--warmup`` warm-up steps, each step on a new batch.
* Peak memory: every (implementation, encoder, length mix) runs in a FRESH subprocess. After the
  model and optimizer are built the kernel's RSS high-water mark is reset (``echo 5 >
  /proc/self/clear_refs``); after the steps ``VmHWM`` from ``/proc/self/status`` is the peak
  resident memory of training (weights + grads + AdamW state + activations), which is what
  matters on this CPU. ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` is recorded too (it is reset
  by the same call on Linux >= 4.0). tracemalloc is not used: it misses torch's allocator.
  The same configuration in identical fresh processes does not always peak at the same size (the
  original: 4.7 to 5.4 GiB at 2 layers on the mix; glibc's mmap threshold adapts to the order of
  frees), so the headline rows (``mix``, <= 4 layers) run in ``--repeats`` processes and report
  medians: of all their measured steps for time, of their peaks for memory. The repeats
  alternate (original, ours, cached, original, ...): a VM's speed drifts by 10-30 % within a
  job, and alternation spreads that drift over every row instead of one.
* Inputs: ``mix`` = IEMOCAP-like durations (log-normal, median 3.7 s, sigma 0.55, clipped to
  [1, 8] s), cut at 6 s; ``full`` = every item 6 s (padding gains excluded). Video: 30 frames/s,
  cut at 180. FoalNet gets batches padded to the longest item; the reference pads to 6 s / 180.
* Epoch estimate: FoalNet's step time is measured at a grid of padded lengths (all items that
  long); one epoch of ``--epoch-items`` IEMOCAP-like items drawn by the training engine's
  ``foalnet.train.data.BalancedSampler`` (class-balanced, with replacement; with ``lengths`` =
  length-grouped in windows of 50 batches) is then costed batch by batch at its padded length
  (linear interpolation on the grid), for random and for length-grouped batches. The reference
  costs ``n_batches x`` its step time (its batches are always 6 s). Data loading is not included
  (the visual features are cached; audio decoding runs in DataLoader workers).
* The CPU is shared by several users, so wall time swings with their load (the same FoalNet
  configuration measured 102 s and 68 s wall per step ten minutes apart). The headline number is
  therefore the CPU time of the process per step (``time.process_time``, 1 torch thread), which
  other processes barely change; wall time and the 1-minute load average are stored as well.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import math
import os
import pickle
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SAMPLE_RATE = 16000
MAX_SECONDS = 6.0
FPS = 30.0
MAX_FRAMES = 180
VIDEO_DIM = 768
AUDIO_DIM = 1024
CLASS_COUNTS = (1708, 1636, 1084, 1103)  # IEMOCAP 4-class set (b): neu, hap+exc, sad, ang
# original = benchmarks/original_style.py; ours = FoalNet from the waveform; cached = FoalNet from
# the audio front-end cache (what `foalnet train` does by default)
IMPLS = ("original", "ours", "cached")
# optional extra rows (--with-checkpointing): the checkpointing configuration, the cache +
# activation checkpointing of the audio encoder's transformer layers
# (model.audio_gradient_checkpointing=true): less memory, more time
EXTRA_IMPLS = ("cached-ckpt",)
# optional row (--with-original-ce): the original backpropagating the classification loss only, as
# the runnable version of the authors' train.py does (``loss = c_loss``; the forward is the same)
ORIGINAL_CE = "original-ce"
ALL_IMPLS = IMPLS + EXTRA_IMPLS + (ORIGINAL_CE,)


# ------------------------------------------------------------------------------ inputs
def iemocap_like_seconds(n: int, rng: np.random.Generator) -> np.ndarray:
    """Utterance durations in seconds: log-normal around IEMOCAP's median, clipped to [1, 8]."""
    return np.clip(rng.lognormal(mean=math.log(3.7), sigma=0.55, size=n), 1.0, 8.0)


def item_sizes(seconds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Durations -> (samples, frames), both cut at 6 s / 180 frames as the recipe does."""
    cut = np.minimum(seconds, MAX_SECONDS)
    samples = np.round(cut * SAMPLE_RATE).astype(int)
    frames = np.minimum(np.maximum(np.round(cut * FPS), 1), MAX_FRAMES).astype(int)
    return samples, frames


@dataclass
class Batch:
    """Variable-length items of one batch (torch tensors are built per implementation)."""

    waves: list  # [S_i] float32 tensors
    videos: list  # [T_i, 768] float32 tensors
    labels: "object"  # [B] long tensor


def make_batch(batch_size: int, lengths: str, seed: int, fixed_seconds: float | None = None) -> Batch:
    """One seeded batch: ``mix`` (IEMOCAP-like), ``full`` (all 6 s) or ``fixed_seconds`` each."""
    import torch

    rng = np.random.default_rng(seed)
    if fixed_seconds is not None:
        secs = np.full(batch_size, fixed_seconds)
    elif lengths == "full":
        secs = np.full(batch_size, MAX_SECONDS)
    else:
        secs = iemocap_like_seconds(batch_size, rng)
    samples, frames = item_sizes(secs)
    gen = torch.Generator().manual_seed(seed)
    waves = [0.1 * torch.randn(int(s), generator=gen) for s in samples]
    videos = [torch.randn(int(t), VIDEO_DIM, generator=gen) for t in frames]
    labels = torch.arange(batch_size) % len(CLASS_COUNTS)  # every class present: MEM has negatives
    return Batch(waves, videos, labels)


def pad_longest(batch: Batch) -> dict:
    """Dynamic padding to the longest item of the batch (FoalNet's collation)."""
    import torch

    B = len(batch.waves)
    S = max(len(w) for w in batch.waves)
    T = max(len(v) for v in batch.videos)
    wav = torch.zeros(B, S)
    wav_mask = torch.zeros(B, S, dtype=torch.bool)
    vid = torch.zeros(B, T, VIDEO_DIM)
    vid_mask = torch.zeros(B, T, dtype=torch.bool)
    for i, (w, v) in enumerate(zip(batch.waves, batch.videos)):
        wav[i, : len(w)], wav_mask[i, : len(w)] = w, True
        vid[i, : len(v)], vid_mask[i, : len(v)] = v, True
    return dict(waveform=wav, waveform_mask=wav_mask, video=vid, video_mask=vid_mask, labels=batch.labels)


def frontend_items(model, batch: Batch) -> list:
    """The audio front end of each item alone, valid frames only: what ``foalnet extract-audio``
    caches (float32 [T, C] per utterance)."""
    from foalnet.features.audio_cache import utterance_frontend

    return [utterance_frontend(model, w) for w in batch.waves]


def pad_cached(batch: Batch, features: list) -> dict:
    """FoalNet's collation when training from the audio front-end cache (padded to the longest)."""
    from foalnet.train.data import pad_sequences

    inputs = pad_longest(batch)
    del inputs["waveform"], inputs["waveform_mask"]
    inputs["audio_features"], inputs["audio_features_mask"] = pad_sequences(features, (features[0].shape[-1],))
    return inputs


def pad_original(batch: Batch, max_samples: int | None = None, max_frames: int | None = None) -> dict:
    """Fixed padding to 6 s / 180 frames (the original collator; other sizes for smoke runs)."""
    ref = load_original_style()
    wav, wav_mask, vid, vid_mask = ref.pad_fixed(batch.waves, batch.videos, max_samples or int(MAX_SECONDS * SAMPLE_RATE),
                                                 max_frames or MAX_FRAMES)
    return dict(waveform=wav, waveform_mask=wav_mask, video=vid, video_mask=vid_mask, labels=batch.labels)


# ------------------------------------------------------------------------------ models
def load_original_style():
    """Import benchmarks/original_style.py by path (benchmarks/ is not a package)."""
    name = "foalnet_original_style"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE / "original_style.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def wavlm_large_config(num_layers: int):
    """A WavLM-Large-shaped config (hidden 1024, 16 heads, FFN 4096) with ``num_layers`` layers."""
    from transformers import WavLMConfig

    return WavLMConfig(
        hidden_size=AUDIO_DIM, num_hidden_layers=num_layers, num_attention_heads=16, intermediate_size=4096,
        feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=False, layerdrop=0.0,
    )


def build_checkpoint(folder: Path, num_layers: int, seed: int = 0) -> Path:
    """Random-init WavLM folder + a FoalNet saved with save_pretrained (the weights both sides use)."""
    import torch
    from transformers import WavLMModel

    from foalnet.model.foalnet import FoalNet, FoalNetConfig

    torch.manual_seed(seed)
    wavlm_dir = folder / f"wavlm{num_layers}"
    model_dir = folder / f"foalnet{num_layers}"
    if (model_dir / "config.json").exists():
        return model_dir
    WavLMModel(wavlm_large_config(num_layers)).save_pretrained(wavlm_dir)
    model = FoalNet(paper_dims_config(FoalNetConfig, str(wavlm_dir)))
    model.save_pretrained(model_dir)
    return model_dir


def paper_dims_config(config_cls, audio_encoder: str):
    """FoalNetConfig of the paper preset with the audio encoder replaced by a local folder."""
    import dataclasses

    return dataclasses.replace(config_cls.paper(), audio_encoder=audio_encoder)


def build_model(impl: str, model_dir: Path):
    """``ours`` = FoalNet.from_pretrained; ``original`` = the reference with the same tensors."""
    from foalnet.model.foalnet import FoalNet

    if impl in ("ours", "cached", "cached-ckpt"):
        model = FoalNet.from_pretrained(model_dir)
        if impl == "cached-ckpt":
            model.audio_encoder.gradient_checkpointing_enable()
        return model
    ref = load_original_style()
    from safetensors.torch import load_file
    from transformers import WavLMConfig, WavLMModel

    enc_cfg = WavLMConfig.from_pretrained(model_dir / "audio_encoder")
    model = ref.OriginalStyleFoalNet(ref.OriginalStyleConfig(), WavLMModel(enc_cfg))
    state = ref.foalnet_state_dict_to_original(load_file(model_dir / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"weight mapping incomplete: missing={missing[:5]} unexpected={unexpected[:5]}")
    del state
    return model


# ------------------------------------------------------------------------------ worker
def vm_hwm_kib() -> int:
    """Peak resident set size of this process since the last reset, KiB."""
    return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (Linux >= 4.0); False when not permitted."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def train_steps(model, impl: str, batches: list[Batch], cached: list | None = None, device: str = "cpu",
                amp_dtype=None, losses: list | None = None) -> list[tuple[float, float]]:
    """Run one AdamW training step per batch; (wall seconds, CPU seconds of this process) per step.
    ``cached``: per batch, the items' front-end features (impl ``cached``). ``device``: the inputs
    are moved there before the timer starts (the model must be there already); CUDA steps are
    timed between synchronisations. ``amp_dtype`` (``torch.float16`` / ``torch.bfloat16``): the
    forward under ``torch.autocast`` of that dtype; float16 adds a ``torch.amp.GradScaler``
    (what accelerate's ``mixed_precision="fp16"`` does on a GPU). ``losses``: gets each step's
    detached loss."""
    import torch

    device_type = torch.device(device).type
    sync = torch.cuda.synchronize if device_type == "cuda" else (lambda: None)
    scaler = torch.amp.GradScaler(device_type) if amp_dtype == torch.float16 else None
    params = [p for p in model.parameters() if p.requires_grad]
    if impl.startswith("original"):
        optimizer = torch.optim.AdamW(params, lr=1e-4)  # as the authors' script builds it
    else:
        from foalnet.train.loop import build_optimizer  # what `foalnet train` builds (fused AdamW)

        optimizer = build_optimizer(params, lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    model.train()
    times = []
    for i, batch in enumerate(batches):
        if impl.startswith("cached"):
            inputs = pad_cached(batch, cached[i])
        else:
            inputs = pad_longest(batch) if impl == "ours" else pad_original(  # original: its fixed sizes
                batch, model.config.max_samples, model.config.max_frames)
        inputs = {k: v.to(device) for k, v in inputs.items()}
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.autocast(device_type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = model(**inputs)  # the engine's order (train/loop.py): forward, backward, step, zero_grad,
        # so the gradients and the outputs are gone before the next batch
        loss = out.losses["ce"] if impl == ORIGINAL_CE else out.loss
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if losses is not None:
            losses.append(loss.detach())
        del out, inputs, loss
        sync()
        times.append((time.perf_counter() - t0, time.process_time() - c0))
    return times


def worker(args: argparse.Namespace) -> dict:
    """One configuration in this (fresh) process; returns the measurement as a dict."""
    import gc

    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = build_model(args.impl, Path(args.model_dir))
    n = args.warmup + args.steps
    batches = [make_batch(args.batch_size, args.lengths, args.seed + i, args.seconds) for i in range(n)]
    cached, frontend = None, {}
    if args.fill_cache:  # a process of its own, as `foalnet extract-audio` is
        return fill_cache(model, batches, Path(args.fill_cache))
    if args.impl.startswith("cached"):  # the one-off cache fill, timed on its own (not part of a step)
        if args.fill_in_worker:
            cached, frontend = fill_frontend(model, batches)
        else:
            cached, frontend = load_filled_cache(args)
    gc.collect()  # the cache fill's Python garbage (its tensors are freed already)
    rss_before = int(re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))
    # warm-up steps also allocate the AdamW state; the reset happens before them so it counts
    reset_ok = reset_peak_rss()
    times = train_steps(model, args.impl, batches, cached)
    wall = [w for w, _ in times[args.warmup:]]
    cpu = [c for _, c in times[args.warmup:]]
    return {
        "impl": args.impl, "layers": args.layers[0], "lengths": args.lengths, "seconds": args.seconds,
        "batch_size": args.batch_size, "threads": args.threads, "warmup": args.warmup, "allocator": "default",
        "cache_fill": cache_fill(args.impl, args.fill_in_worker),
        "step_cpu_s_median": statistics.median(cpu), "step_cpu_s_all": cpu,
        "step_s_median": statistics.median(wall), "step_s_all": wall,
        "rss_before_gib": rss_before / 2**20,
        "peak_rss_gib": (vm_hwm_kib() if reset_ok else 0) / 2**20,
        "ru_maxrss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "peak_reset": reset_ok,
        "foalnet_py_sha1": model_source_hash(), **frontend,
    }


def cache_fill(impl: str, fill_in_worker: bool) -> str | None:
    """Where a row's front-end cache was filled (part of its configuration); None: no cache."""
    if not impl.startswith("cached"):
        return None
    return "training process" if fill_in_worker else "other process"


def fill_frontend(model, batches: list[Batch]) -> tuple[list, dict]:
    """Every batch's front-end features and the fill's CPU seconds per second of audio."""
    c0 = time.process_time()
    cached = [frontend_items(model, b) for b in batches]
    audio_s = sum(len(w) for b in batches for w in b.waves) / SAMPLE_RATE
    return cached, {"frontend_cpu_s_per_audio_s": (time.process_time() - c0) / audio_s}


def fill_cache(model, batches: list[Batch], path: Path) -> dict:
    """``--fill-cache``: write the front-end features of the worker's batches to ``path``."""
    cached, frontend = fill_frontend(model, batches)
    with path.open("wb") as f:
        pickle.dump((cached, frontend), f)
    return {"filled": str(path), **frontend}


def load_filled_cache(args: argparse.Namespace) -> tuple[list, dict]:
    """The cached features as `foalnet train` gets them by default: filled by another process
    (``extract-audio``, or the first fold of a cv run) and read from disk. Filling the cache in
    the training process itself leaves about 0.7 GiB of freed front-end buffers in glibc's heap,
    which then counts in that process's peak (``--fill-in-worker`` measures that case)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "frontend.pkl"
        cmd = [sys.executable, str(Path(__file__).resolve()), *args.argv, "--fill-cache", str(path)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"cache fill failed:\n{proc.stderr[-3000:]}")
        with path.open("rb") as f:
            return pickle.load(f)


def model_source_hash() -> str:
    """sha1 of src/foalnet/model/*.py as imported (the model is still being optimised)."""
    import hashlib

    import foalnet.model

    h = hashlib.sha1()
    for path in sorted(Path(foalnet.model.__file__).parent.glob("*.py")):
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def run_config(model_dir: Path, impl: str, layers: int, lengths: str, steps: int, warmup: int,
               threads: int, batch_size: int, seed: int, seconds: float | None = None,
               fill_in_worker: bool = False) -> dict:
    """Measure one configuration in a fresh subprocess (clean peak-memory accounting)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--impl", impl, "--layers", str(layers),
           "--lengths", lengths, "--steps", str(steps), "--warmup", str(warmup), "--threads", str(threads),
           "--batch-size", str(batch_size), "--seed", str(seed), "--model-dir", str(model_dir)]
    if fill_in_worker:
        cmd.append("--fill-in-worker")
    if seconds is not None:
        cmd += ["--seconds", str(seconds)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.pop("THP_MEM_ALLOC_ENABLE", None)  # torch's huge-page switch: every row runs with torch's default
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed ({' '.join(cmd[2:])}):\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    tag = f"{impl:8s} L={layers:2d} {lengths if seconds is None else f'{seconds:.1f}s':5s}"
    print(f"  {tag} step CPU {result['step_cpu_s_median']:.2f} s (wall {result['step_s_median']:.2f} s)  "
          f"peak {result['peak_rss_gib']:.2f} GiB", flush=True)
    return result


# ------------------------------------------------------------------------------ epoch estimate
def sampler_batches(labels: np.ndarray, secs: np.ndarray, batch_size: int, seed: int,
                    grouped: bool) -> list[np.ndarray]:
    """One epoch of batches from the training engine's ``BalancedSampler`` (class-balanced draws
    with replacement; ``grouped``: sorted by length within windows of 50 batches)."""
    from foalnet.train.data import BalancedSampler

    sampler = BalancedSampler(labels.tolist(), seed=seed, lengths=secs.tolist() if grouped else None,
                              batch_size=batch_size, group_batches=50)
    order = np.asarray(sampler.indices())
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def epoch_estimate(grids: dict[str, dict[float, float]], orig_step: float, n_items: int, batch_size: int,
                   seed: int, orig_keep_step: float | None = None) -> dict:
    """Cost one epoch batch by batch for each implementation's grid (see module docstring)."""
    rng = np.random.default_rng(seed)
    secs = np.minimum(iemocap_like_seconds(n_items, rng), MAX_SECONDS)
    labels = np.repeat(np.arange(4), np.round(np.array(CLASS_COUNTS) / sum(CLASS_COUNTS) * n_items).astype(int))
    labels = rng.permutation(np.resize(labels, n_items))
    random_batches = sampler_batches(labels, secs, batch_size, seed, grouped=False)
    grouped = sampler_batches(labels, secs, batch_size, seed, grouped=True)

    def cost(grid: dict[float, float], batches: list[np.ndarray]) -> float:
        xs = sorted(grid)
        return float(sum(np.interp(secs[b].max(), xs, [grid[x] for x in xs]) for b in batches))

    est = {"items": n_items, "batches": len(random_batches), "audio_s": float(secs.sum()),
           "grouping": "foalnet.train.data.BalancedSampler(lengths=..., group_batches=50)",
           "grids_s": grids, "original_s": len(random_batches) * orig_step,
           "original_keep_s": None if orig_keep_step is None else len(random_batches) * orig_keep_step,
           "mean_padded_s_random": float(np.mean([secs[b].max() for b in random_batches])),
           "mean_padded_s_grouped": float(np.mean([secs[b].max() for b in grouped]))}
    for impl, grid in grids.items():
        est[f"{impl}_random_s"] = cost(grid, random_batches)
        est[f"{impl}_grouped_s"] = cost(grid, grouped)
    return est


# ------------------------------------------------------------------------------ report
IMPL_NAMES = {"original": "original (authors' structure)",
              "original-keep": "original + foalnet's allocator settings", "ours": "foalnet, from the waveform",
              "cached": "foalnet, audio cache (default)", ORIGINAL_CE: "original, CE-only backward (their train.py)", "cached-ckpt": "foalnet, audio cache + checkpointing, default malloc"}


def table(results: list[dict]) -> str:
    """Markdown table: per (encoder layers, lengths), each implementation against the original."""
    rows = ["| encoder | inputs | implementation | CPU s/step | speed-up | vs original + allocator | wall s/step "
            "| peak GiB | memory ratio |", "|---|---|---|---|---|---|---|---|---|"]
    keyed = {(r["impl"], r["layers"], r["lengths"]): r for r in results if r["seconds"] is None}
    for layers, lengths in sorted({(k[1], k[2]) for k in keyed}):
        o = keyed.get(("original", layers, lengths))
        if o is None:
            continue
        ok = keyed.get(("original-keep", layers, lengths))
        for impl in ALL_IMPLS:
            r = keyed.get((impl, layers, lengths))
            if r is None:
                continue
            vs_keep = f"{ok['step_cpu_s_median'] / r['step_cpu_s_median']:.2f}x" if ok else "-"
            rows.append(f"| {layers}-layer | {lengths} | {IMPL_NAMES[impl]} | {r['step_cpu_s_median']:.1f} | "
                        f"{o['step_cpu_s_median'] / r['step_cpu_s_median']:.2f}x | {vs_keep} | {r['step_s_median']:.1f} | "
                        f"{r['peak_rss_gib']:.2f} | {r['peak_rss_gib'] / o['peak_rss_gib']:.2f} |")
    return "\n".join(rows)


def epoch_lines(est: dict, fill_s_per_audio_s: float | None) -> str:
    """Human summary of the epoch estimate."""
    o = est["original_s"]
    lines = [f"epoch ({est['items']} items, {est['batches']} batches; grouping: {est['grouping']}):",
             f"  original {o / 60:.1f} min (every batch 6 s)"]
    if est.get("original_keep_s"):
        lines.append(f"  original + foalnet's allocator settings {est['original_keep_s'] / 60:.1f} min")
    names = {"ours": "foalnet", "cached": "foalnet + audio cache"}
    for impl in est["grids_s"]:
        r, g = est[f"{impl}_random_s"], est[f"{impl}_grouped_s"]
        vs_keep = f"; {est['original_keep_s'] / g:.2f}x vs original + allocator" if est.get("original_keep_s") else ""
        lines.append(f"  {names[impl]}: random batches {r / 60:.1f} min ({o / r:.2f}x), "
                     f"length-grouped {g / 60:.1f} min ({o / g:.2f}x{vs_keep})")
    lines.append(f"  mean padded length: random {est['mean_padded_s_random']:.2f} s, "
                 f"grouped {est['mean_padded_s_grouped']:.2f} s")
    if fill_s_per_audio_s is not None:
        fill = fill_s_per_audio_s * est["audio_s"] / est["items"] * (est["items"] * 5 / 4)
        lines.append(f"  audio cache fill, once for all folds and epochs (5/4 x {est['items']} utterances): "
                     f"{fill / 60:.1f} min ({fill_s_per_audio_s:.3f} CPU s per s of audio)")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--full", action="store_true", help="also the 12-layer encoder and a finer epoch grid")
    p.add_argument("--layers", type=int, nargs="+", default=None, help="audio encoder depths (default 2; --full: 2 12)")
    p.add_argument("--inputs", nargs="+", choices=("mix", "full"), default=["mix", "full"],
                   help="length mixes measured for encoders of <= 4 layers")
    p.add_argument("--inputs-large", nargs="+", choices=("mix", "full"), default=["mix"],
                   help="length mixes measured for deeper encoders (slow on this CPU)")
    p.add_argument("--impls-large", nargs="+", choices=IMPLS, default=["original", "cached"],
                   help="implementations measured for deeper encoders")
    p.add_argument("--steps", type=int, default=2, help="measured steps per configuration (<= 4 layers)")
    p.add_argument("--steps-large", type=int, default=1, help="measured steps for deeper encoders")
    p.add_argument("--repeats", type=int, default=3,
                   help="fresh processes per IEMOCAP-like mix configuration of a <= 4-layer encoder "
                        "(the headline rows; time and peak memory are medians over them)")
    p.add_argument("--warmup", type=int, default=2,
                   help="warm-up steps before measuring (the allocator reaches its steady state in 2)")
    p.add_argument("--grid", type=float, nargs="+", default=None,
                   help="padded lengths (s) for the epoch estimate besides 6 s (default 1.5 3; --full: 1 2 3 4.5)")
    p.add_argument("--with-original-ce", action="store_true",
                   help="also the original backpropagating the classification loss only (the authors' runnable train.py)")
    p.add_argument("--with-checkpointing", action="store_true",
                   help="also the audio cache + activation checkpointing of the audio encoder")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the CPU is shared; default 1)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--epoch-items", type=int, default=4425, help="training items per fold (5531 x 4/5)")
    p.add_argument("--no-epoch", action="store_true", help="skip the epoch estimate")
    p.add_argument("--out", type=Path, default=HERE / "results" / "train_step.json",
                   help="summary JSON; every measurement is also appended to OUT with suffix .jsonl")
    p.add_argument("--fresh", action="store_true", help="ignore measurements already in the .jsonl")
    p.add_argument("--remeasure", nargs="+", choices=ALL_IMPLS, default=[],
                   help="measure these implementations again, reuse the others from the .jsonl "
                        "(after a change to foalnet's code; the original does not import it)")
    p.add_argument("--workdir", type=Path, default=None, help="where to build the random checkpoints (temp)")
    # worker-only options
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--impl", choices=ALL_IMPLS, help=argparse.SUPPRESS)
    p.add_argument("--lengths", choices=("mix", "full"), default="mix", help=argparse.SUPPRESS)
    p.add_argument("--seconds", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    p.add_argument("--fill-cache", help=argparse.SUPPRESS)
    p.add_argument("--fill-in-worker", action="store_true",
                   help="cached rows: fill the front-end cache in the training process itself (by default "
                        "another process fills it and the training process reads it, as after extract-audio)")
    return p.parse_args(argv)


def config_key(r: dict) -> tuple:
    """What makes two measurements the same configuration (for resuming)."""
    fill = r.get("cache_fill", cache_fill(r["impl"], True))  # older records filled it in the worker
    return (r["impl"], r["layers"], r["lengths"], r["seconds"], r["batch_size"], r["threads"], fill)


def load_log(path: Path) -> dict[tuple, dict[int, dict]]:
    """Measurements already appended to the .jsonl log: configuration -> run index -> record
    (the last record of a run wins; records from before repeats are run 0)."""
    done: dict[tuple, dict[int, dict]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                if "step_cpu_s_median" in r:  # older wall-clock-only records are not comparable
                    done.setdefault(config_key(r), {})[r.get("run", 0)] = r
    return done


def combine_runs(runs: list[dict]) -> dict:
    """One row from the same configuration measured in several fresh processes: time = median of
    all their measured steps, peak memory = median of their peaks (the original's peak RSS moves
    by a few tenths of a GiB between identical processes: glibc's mmap threshold adapts)."""
    if len(runs) == 1:
        return runs[0]
    row = dict(runs[0])
    for key in ("step_cpu_s", "step_s"):
        row[f"{key}_all"] = [x for r in runs for x in r[f"{key}_all"]]
        row[f"{key}_median"] = statistics.median(row[f"{key}_all"])
    row["peak_rss_gib_runs"] = [r["peak_rss_gib"] for r in runs]
    row["peak_rss_gib"] = statistics.median(row["peak_rss_gib_runs"])
    row["ru_maxrss_gib"] = statistics.median(r["ru_maxrss_gib"] for r in runs)
    row["runs"] = len(runs)
    row.pop("run", None)
    return row


class Session:
    """Runs configurations once each, appending every result to the .jsonl log as it arrives."""

    def __init__(self, args: argparse.Namespace, log: Path) -> None:
        self.args, self.log = args, log
        logged = {} if args.fresh else load_log(log)
        self.done = {key: runs for key, runs in logged.items() if key[0] not in args.remeasure}
        self.results: list[dict] = []

    def measure(self, model_dir, impl: str, layers: int, lengths: str, steps: int,
                seconds: float | None = None, runs: int = 1) -> dict:
        """``model_dir``: a callable returning the checkpoint folder (built only when needed);
        ``runs`` fresh processes, combined by ``combine_runs``."""
        a = self.args
        key = (impl, layers, lengths, seconds, a.batch_size, a.threads, cache_fill(impl, a.fill_in_worker))
        done = self.done.setdefault(key, {})
        for run in range(runs):
            if run in done:
                r = done[run]
                print(f"  {impl:8s} L={layers:2d} {lengths if seconds is None else seconds} run {run}: "
                      f"CPU {r['step_cpu_s_median']:.2f} s (from {self.log.name})", flush=True)
                continue
            r = run_config(model_dir(), impl, layers, lengths, steps, a.warmup, a.threads, a.batch_size, a.seed, seconds,
                           a.fill_in_worker)
            r["load_avg_1min"], r["run"] = os.getloadavg()[0], run
            with self.log.open("a") as f:
                f.write(json.dumps(r) + "\n")
            done[run] = r
        r = combine_runs([done[run] for run in range(runs)])
        self.results = [x for x in self.results if config_key(x) != key] + [r]
        return r


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # a worker passes them on to its cache fill
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    layers = args.layers or ([2, 12] if args.full else [2])
    grid_seconds = args.grid or ([1.0, 2.0, 3.0, 4.5] if args.full else [1.5, 3.0])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    session = Session(args, args.out.with_suffix(".jsonl"))
    epochs = {}
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for n_layers in layers:
            large = n_layers > 4
            steps = args.steps_large if large else args.steps
            model_dir = functools.partial(build_checkpoint, Path(tmp), n_layers, args.seed)  # lazy
            print(f"{n_layers}-layer audio encoder, batch {args.batch_size}, {args.threads} thread(s):", flush=True)
            for lengths in (args.inputs_large if large else args.inputs):
                impls = tuple(args.impls_large) if large else IMPLS
                runs = args.repeats if lengths == "mix" and not large else 1
                extra = (EXTRA_IMPLS if args.with_checkpointing else ()) + ((ORIGINAL_CE,) if args.with_original_ce else ())
                for run in range(runs):  # fresh processes in turn (original, ours, cached, original, ...):
                    for impl in impls + extra:  # the machine's drift during the job hits every row alike
                        session.measure(model_dir, impl, n_layers, lengths, steps, runs=run + 1)
            if args.no_epoch or large:
                continue
            grids, fill = {}, None
            for impl in ("ours", "cached"):
                full = session.measure(model_dir, impl, n_layers, "full", steps)
                grids[impl] = {MAX_SECONDS: full["step_cpu_s_median"]}
                fill = full.get("frontend_cpu_s_per_audio_s", fill)
                for s in grid_seconds:
                    grids[impl][s] = session.measure(model_dir, impl, n_layers, "mix", steps, seconds=s)["step_cpu_s_median"]
            orig = session.measure(model_dir, "original", n_layers, "full", steps)
            epochs[n_layers] = (epoch_estimate(grids, orig["step_cpu_s_median"], args.epoch_items, args.batch_size,
                                               args.seed), fill)
    print("\n" + table(session.results))
    for n_layers, (est, fill) in epochs.items():
        print(f"\n{n_layers}-layer " + epoch_lines(est, fill))
    payload = {"command": " ".join(["python", *sys.argv]), "results": session.results,
               "epoch": {str(k): dict(est, cache_fill_cpu_s_per_audio_s=fill) for k, (est, fill) in epochs.items()}}
    args.out.write_text(json.dumps(payload, indent=2))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
