"""GPU check of the paper-sized model: mixed-precision training steps, packed-vs-transformers logits,
the original's steps, CLIP frame-embedding throughput and one torch.compile run.

Run from the repository root on a machine with one CUDA GPU (< 5 minutes on a current GPU)::

    python benchmarks/gpu_check.py                         # prints a table, writes results/gpu_check.json
    python benchmarks/gpu_check.py --device cpu --tiny     # smoke run of every code path on CPU (seconds)

Without CUDA (and without ``--device cpu``) it prints one line saying so and exits 0.

What it does (``--tiny`` shrinks every size, see ``Shapes.tiny``):

* Models: a WavLM-Large-shaped encoder (24 layers, hidden 1024, 16 heads, FFN 4096;
  ``train_step.wavlm_large_config``) with random weights from a transformers ``WavLMConfig`` (no
  download; saved to a temporary folder, which is how FoalNet takes a local encoder), foalnet's
  ``FoalNet`` in the paper preset's fusion dims (``train_step.paper_dims_config``, video width 768 =
  CLIP ViT-L/14's projection), and benchmarks/original_style.py with the same weights
  (``OriginalStyleFoalNet.from_foalnet``).
* Batches: ``train_step.make_batch`` (batch 16, IEMOCAP-like durations 1-8 s cut at 6 s, 30 fps
  video cut at 180 frames); FoalNet pads to the longest item, the original to 6 s / 180 frames.
* Training steps (``train_step.train_steps``: forward under ``torch.autocast``, backward, AdamW step,
  ``zero_grad``; float16 with a ``torch.amp.GradScaler``, bfloat16 without) of FoalNet and of the
  original, each alone on the GPU: median step time over the measured steps after warm-up, and the
  peak ``torch.cuda.max_memory_allocated`` of the run (weights, gradients, AdamW state and
  activations; ``null`` on CPU).
* Eval logits of FoalNet with ``audio_packed_encoder=True`` (WavLM's layers on valid frames only)
  against ``audio_packed_encoder=False`` (transformers' own WavLM forward on the padded batch), same
  weights, same batch, in float32 and under float16 / bfloat16 autocast: max abs difference.
* CLIP ViT-L/14-shaped image encoder (transformers ``CLIPVisionModelWithProjection`` from a
  ``CLIPVisionConfig``: 24 layers, width 1024, patch 14, 224 px, projection 768; random weights):
  frame embeddings per second, float32 and float16 autocast, ``torch.no_grad``.
* ``torch.compile(model)`` once (inductor; ``--tiny``: the ``eager`` backend, which traces with
  dynamo but generates no code, so the smoke run stays fast): float16 training steps on batches of
  one fixed length (all items 6 s, so that shapes do not change between steps), against the same
  steps of the eager model; whether it works (the error if not), the first step (compilation), and
  the gain.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # benchmarks/ is not a package: reuse train_step's helpers

import train_step as ts  # noqa: E402

NO_CUDA_LINE = ("gpu_check: no CUDA device here (torch.cuda.is_available() is False); nothing measured. "
                "Run it on a GPU machine, or `--device cpu --tiny` for a smoke run.")


@dataclass(frozen=True)
class Shapes:
    """Sizes of one check (defaults: the paper's, for a GPU)."""

    audio_layers: int = 24  # WavLM-Large
    audio_width: int | None = None  # None: WavLM-Large's (train_step.wavlm_large_config)
    batch_size: int = 16
    seconds: float | None = None  # None: IEMOCAP-like mix; a number: every item that long
    original_seconds: float = ts.MAX_SECONDS  # the original's fixed padding (its collator: 6 s / 180 frames)
    warmup: int = 2
    steps: int = 3
    clip_layers: int = 24  # CLIP ViT-L/14 vision tower
    clip_width: int = 1024
    clip_image: int = 224
    clip_batch: int = 64
    clip_batches: int = 4
    compile_backend: str = "inductor"
    compile_steps: int = 3

    @classmethod
    def tiny(cls) -> "Shapes":
        """Every path, seconds on a CPU: 1 small WavLM layer, batch 2 of 1 s, a 1-layer CLIP."""
        return cls(audio_layers=1, audio_width=64, batch_size=2, seconds=1.0, original_seconds=1.0, warmup=1,
                   steps=1, clip_layers=1,
                   clip_width=64, clip_image=56, clip_batch=2, clip_batches=1, compile_backend="eager",
                   compile_steps=1)


# ------------------------------------------------------------------------------ models
def wavlm_config(shapes: Shapes):
    """WavLM-Large-shaped config with ``audio_layers`` layers (``--tiny``: small widths too)."""
    config = ts.wavlm_large_config(shapes.audio_layers)
    if shapes.audio_width is not None:
        w = shapes.audio_width
        config.update(dict(hidden_size=w, num_attention_heads=4, intermediate_size=2 * w, conv_dim=(32,) * 7,
                           num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, mask_time_length=2))
    return config


def build_models(folder: Path, shapes: Shapes, seed: int = 0) -> dict:
    """FoalNet (packed), FoalNet (transformers' WavLM forward) and the original, same weights, on CPU."""
    import torch
    from transformers import WavLMModel

    from foalnet import FoalNet, FoalNetConfig

    torch.manual_seed(seed)
    config = wavlm_config(shapes)
    WavLMModel(config).save_pretrained(folder / "wavlm")
    foal_config = ts.paper_dims_config(FoalNetConfig, str(folder / "wavlm"))
    packed = FoalNet(dataclasses.replace(foal_config, audio_packed_encoder=True))
    unpacked = FoalNet(dataclasses.replace(foal_config, audio_packed_encoder=False))
    unpacked.load_state_dict(packed.state_dict())
    ref = ts.load_original_style()
    c = packed.config
    ref_config = ref.OriginalStyleConfig(
        audio_dim=config.hidden_size, video_dim=c.video_dim, proj_dim=c.proj_dim, fusion_layers=c.fusion_layers,
        num_heads=c.fusion_heads, num_classes=len(c.labels), proj_dropout=c.proj_dropout,
        fusion_dropout=c.fusion_dropout, feature_dropout=c.feature_dropout, tau_init=c.tau_init,
        avel_weight=c.avel_weight, mem_weight=c.mem_weight,
        max_samples=int(shapes.original_seconds * ts.SAMPLE_RATE),
        max_frames=min(ts.MAX_FRAMES, round(shapes.original_seconds * ts.FPS)))
    original = ref.OriginalStyleFoalNet.from_foalnet(packed, ref_config, WavLMModel(config))
    models = {"foalnet": packed, "foalnet-unpacked": unpacked, "original": original}
    for model in models.values():  # train_run restores these before each run (CPU copies)
        model._gpu_check_initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return models


def clip_model(shapes: Shapes):
    """CLIP ViT-L/14-shaped vision tower with projection (random weights)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    w = shapes.clip_width
    config = CLIPVisionConfig(hidden_size=w, intermediate_size=4 * w, num_hidden_layers=shapes.clip_layers,
                              num_attention_heads=16 if w >= 1024 else 4, image_size=shapes.clip_image, patch_size=14,
                              projection_dim=ts.VIDEO_DIM)
    return CLIPVisionModelWithProjection(config)


# ------------------------------------------------------------------------------ measurements
class Device:
    """The device and its memory/synchronisation hooks (CUDA statistics are None elsewhere)."""

    def __init__(self, name: str) -> None:
        import torch

        self.torch = torch
        self.name = name
        self.type = torch.device(name).type
        self.cuda = self.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.cuda:
            self.torch.cuda.empty_cache()
            self.torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float | None:
        return self.torch.cuda.max_memory_allocated() / 2**30 if self.cuda else None


def amp_dtype(precision: str):
    import torch

    return {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def batches_for(shapes: Shapes, n: int, seed: int, seconds: float | None = None) -> list:
    seconds = shapes.seconds if seconds is None else seconds
    return [ts.make_batch(shapes.batch_size, "mix", seed + i, seconds) for i in range(n)]


def train_run(model, impl: str, precision: str, shapes: Shapes, dev: Device, seed: int,
              seconds: float | None = None, warmup: int | None = None, steps: int | None = None) -> dict:
    """Warm-up + measured training steps of ``model`` alone on the device (moved there and back)."""
    warmup = shapes.warmup if warmup is None else warmup
    steps = shapes.steps if steps is None else steps
    batches = batches_for(shapes, warmup + steps, seed, seconds)
    base = getattr(model, "_orig_mod", model)  # a torch.compile wrapper's module
    initial = getattr(base, "_gpu_check_initial", None)
    if initial is not None:  # every run starts from the same weights
        base.load_state_dict(initial)
    model.to(dev.name)
    dev.reset_peak()
    losses: list = []
    try:
        times = ts.train_steps(model, "original" if impl == "original" else "ours", batches, device=dev.name,
                               amp_dtype=amp_dtype(precision), losses=losses)
    finally:
        model.to("cpu")
    wall = [w for w, _ in times[warmup:]]
    finite = all(bool(dev.torch.isfinite(x.float()).all()) for x in losses)
    return {"impl": impl, "precision": precision, "step_s_median": statistics.median(wall), "step_s_all": wall,
            "first_step_s": times[0][0], "peak_gib": dev.peak_gib(), "losses_finite": finite,
            "last_loss": float(losses[-1].float()) if losses else None, "warmup": warmup, "steps": steps}


def eval_logits(model, batch, precision: str, dev: Device):
    torch = dev.torch
    inputs = {k: v.to(dev.name) for k, v in ts.pad_longest(batch).items() if k != "labels"}
    model.to(dev.name).eval()
    try:
        with torch.no_grad(), torch.autocast(dev.type, dtype=amp_dtype(precision), enabled=precision != "fp32"):
            return model(**inputs).logits.float().cpu()
    finally:
        model.to("cpu")


def packed_vs_transformers(models: dict, shapes: Shapes, dev: Device, seed: int) -> list[dict]:
    """Eval logits, packed path vs transformers' own WavLM forward (same weights, same batch)."""
    batch = batches_for(shapes, 1, seed + 1000)[0]
    for name in ("foalnet", "foalnet-unpacked"):
        models[name].load_state_dict(models[name]._gpu_check_initial)
    reference = eval_logits(models["foalnet-unpacked"], batch, "fp32", dev)
    rows = []
    for precision in ("fp32", "fp16", "bf16"):
        packed = eval_logits(models["foalnet"], batch, precision, dev)
        unpacked = reference if precision == "fp32" else eval_logits(models["foalnet-unpacked"], batch, precision, dev)
        rows.append({"precision": precision,
                     "max_abs_diff_packed_vs_transformers": float((packed - unpacked).abs().max()),
                     "max_abs_diff_packed_vs_fp32_transformers": float((packed - reference).abs().max()),
                     "logits_abs_max": float(reference.abs().max()), "finite": bool(packed.isfinite().all())})
    return rows


def clip_throughput(shapes: Shapes, dev: Device) -> list[dict]:
    """Frame embeddings per second of the CLIP-shaped tower (eval, no_grad)."""
    torch = dev.torch
    model = clip_model(shapes).to(dev.name).eval()
    images = torch.randn(shapes.clip_batch, 3, shapes.clip_image, shapes.clip_image, device=dev.name)
    rows = []
    try:
        for precision in ("fp32", "fp16"):
            with torch.no_grad(), torch.autocast(dev.type, dtype=amp_dtype(precision), enabled=precision != "fp32"):
                model(pixel_values=images)  # warm-up (kernel selection)
                dev.sync()
                t0 = time.perf_counter()
                for _ in range(shapes.clip_batches):
                    embeds = model(pixel_values=images).image_embeds
                dev.sync()
                dt = time.perf_counter() - t0
            rows.append({"precision": precision, "images_per_s": shapes.clip_batches * shapes.clip_batch / dt,
                         "batch": shapes.clip_batch, "embed_dim": int(embeds.shape[-1])})
    finally:
        del model
        dev.reset_peak()
    return rows


def compile_check(model, shapes: Shapes, dev: Device, seed: int) -> dict:
    """torch.compile once: fp16 training steps on fixed-length batches, against the eager model."""
    torch = dev.torch
    seconds = ts.MAX_SECONDS if shapes.seconds is None else shapes.seconds
    result: dict = {"backend": shapes.compile_backend, "precision": "fp16", "seconds_per_item": seconds}
    eager = train_run(model, "foalnet", "fp16", shapes, dev, seed, seconds=seconds, warmup=1,
                      steps=shapes.compile_steps)
    result["eager_step_s"] = eager["step_s_median"]
    try:
        compiled = torch.compile(model, backend=shapes.compile_backend)
        t0 = time.perf_counter()
        run = train_run(compiled, "foalnet", "fp16", shapes, dev, seed, seconds=seconds, warmup=1,
                        steps=shapes.compile_steps)
        result.update(works=run["losses_finite"], compiled_step_s=run["step_s_median"],
                      first_step_s=run["first_step_s"], total_s=time.perf_counter() - t0, peak_gib=run["peak_gib"],
                      eager_peak_gib=eager["peak_gib"], speedup=eager["step_s_median"] / run["step_s_median"],
                      error=None if run["losses_finite"] else "non-finite loss")
    except Exception as err:  # report, do not fail the whole check
        result.update(works=False, error=f"{type(err).__name__}: {err}"[:2000],
                      traceback=traceback.format_exc()[-4000:])
    finally:
        torch.compiler.reset()  # the compiled graphs' memory and caches
    return result


# ------------------------------------------------------------------------------ report
def fmt(x, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def report(payload: dict) -> str:
    lines = [f"gpu_check on {payload['device_name']} ({payload['device']}), torch {payload['torch']}, "
             f"transformers {payload['transformers']}, {payload['shapes']['audio_layers']}-layer audio encoder, "
             f"batch {payload['shapes']['batch_size']}", "",
             "| implementation | precision | step s (median) | speed-up vs original | peak GiB | losses finite |",
             "|---|---|---|---|---|---|"]
    orig = {r["precision"]: r for r in payload["train"] if r["impl"] == "original"}
    for r in payload["train"]:
        o = orig.get(r["precision"])
        speed = f"{o['step_s_median'] / r['step_s_median']:.2f}x" if o else "-"
        lines.append(f"| {r['impl']} | {r['precision']} | {r['step_s_median']:.3f} | {speed} | "
                     f"{fmt(r['peak_gib'], '.2f')} | {r['losses_finite']} |")
    lines += ["", "| eval logits | max abs diff packed vs transformers | vs transformers fp32 | max abs logit |",
              "|---|---|---|---|"]
    for r in payload["packed_vs_transformers"]:
        lines.append(f"| {r['precision']} | {r['max_abs_diff_packed_vs_transformers']:.2e} | "
                     f"{r['max_abs_diff_packed_vs_fp32_transformers']:.2e} | {r['logits_abs_max']:.3f} |")
    lines += ["", "| CLIP ViT-L/14-shaped frame embedding | images/s |", "|---|---|"]
    for r in payload["clip"]:
        lines.append(f"| {r['precision']}, batch {r['batch']} | {r['images_per_s']:.1f} |")
    c = payload.get("compile")
    if c:
        lines.append("")
        if c.get("works"):
            lines.append(f"torch.compile ({c['backend']}, fp16 steps, items {c['seconds_per_item']:g} s): works; "
                         f"first step {c['first_step_s']:.1f} s, step {c['compiled_step_s']:.3f} s vs eager "
                         f"{c['eager_step_s']:.3f} s ({c['speedup']:.2f}x), peak {fmt(c['peak_gib'], '.2f')} GiB "
                         f"vs {fmt(c['eager_peak_gib'], '.2f')} (graph breaks: rerun with TORCH_LOGS=graph_breaks)")
        else:
            lines.append(f"torch.compile ({c['backend']}): FAILED: {c.get('error')}")
    lines.append(f"\ntotal {payload['total_s']:.0f} s")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default=None, help="cuda (default when available) or cpu (use with --tiny)")
    p.add_argument("--tiny", action="store_true", help="small sizes: a smoke run of every path (CPU: seconds)")
    p.add_argument("--layers", type=int, default=None, help="audio encoder layers (default 24; --tiny 1)")
    p.add_argument("--steps", type=int, default=None, help="measured training steps per row (default 3)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile run")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--out", type=Path, default=HERE / "results" / "gpu_check.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else None)
    if device is None or (torch.device(device).type == "cuda" and not torch.cuda.is_available()):
        print(NO_CUDA_LINE)
        return 0
    shapes = Shapes.tiny() if args.tiny else Shapes()
    if args.layers is not None:
        shapes = dataclasses.replace(shapes, audio_layers=args.layers)
    if args.steps is not None:
        shapes = dataclasses.replace(shapes, steps=args.steps)
    dev = Device(device)
    t_start = time.perf_counter()
    import transformers

    payload: dict = {
        "command": " ".join(["python", *([sys.argv[0]] if argv is None else ["benchmarks/gpu_check.py"]),
                             *(sys.argv[1:] if argv is None else argv)]),
        "device": device, "device_name": torch.cuda.get_device_name() if dev.cuda else platform.processor() or "cpu",
        "torch": torch.__version__, "transformers": transformers.__version__,
        "cuda": torch.version.cuda, "shapes": dataclasses.asdict(shapes),
        "load_avg_1min": os.getloadavg()[0], "threads": torch.get_num_threads(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        models = build_models(Path(tmp), shapes, seed=args.seed)
    payload["packed_vs_transformers"] = packed_vs_transformers(models, shapes, dev, args.seed)
    payload["train"] = []
    for impl in ("foalnet", "original"):
        for precision in ("fp16", "bf16"):
            row = train_run(models[impl], impl, precision, shapes, dev, args.seed)
            payload["train"].append(row)
            print(f"  {impl:8s} {precision}: step {row['step_s_median']:.3f} s, peak {fmt(row['peak_gib'], '.2f')} GiB",
                  flush=True)
    payload["clip"] = clip_throughput(shapes, dev)
    payload["compile"] = None if args.no_compile else compile_check(models["foalnet"], shapes, dev, args.seed)
    payload["total_s"] = time.perf_counter() - t_start
    print("\n" + report(payload))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2, default=str))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
