"""Feature extraction speed: visual frames/s, and the audio front-end cache fill.

Run from the repository root::

    python benchmarks/feature_extract.py          # encoders alone + the audio front ends
    python benchmarks/feature_extract.py --full   # + end-to-end `foalnet extract-visual` on a synthetic corpus

What is measured (median of ``--repeats`` timed runs after one warm-up; CPU, ``--threads``):

* Visual encoder alone: frames/s of ``encoder.embed`` on batches of ``--batch-size`` 480x360 RGB
  frames (the IEMOCAP speaker's half), for ``tiny`` and for a CLIP ViT-L/14-shaped vision tower
  built from its config with random weights (the paper's encoder: same shapes and compute, no
  download) behind foalnet's own ``ClipVisualEncoder`` (processor resize/crop included).
* Audio front end: CPU seconds per second of audio of ``FoalNet.audio_frontend`` run per
  utterance, as ``foalnet extract-audio`` / the training cache run it: the WavLM-Large CNN
  (random weights, same shapes) of the paper preset and the offline DSP front end of ``tiny``.
* ``--full``: ``foalnet extract-visual --encoder tiny`` on a freshly generated synthetic corpus
  (decode + crop + embed + write), frames/s as its report prints them.

Results: a table on stdout and ``results/feature_extract.json``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def timed(fn, repeats: int) -> list[float]:
    """Wall seconds of ``fn()`` for ``repeats`` runs after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def clip_large_folder(folder: Path) -> Path:
    """A CLIP ViT-L/14-shaped vision tower with random weights + processor, saved like a checkpoint."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from foalnet.features.clip import _image_processor_class

    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                              num_attention_heads=16, image_size=224, patch_size=14, projection_dim=768)
    CLIPVisionModelWithProjection(config).save_pretrained(folder)
    _image_processor_class()(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(folder)
    return folder


def visual_rows(args: argparse.Namespace, tmp: Path) -> list[dict]:
    from foalnet.features.base import build_visual_encoder

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(args.batch_size, 480, 360, 3), dtype=np.uint8)
    rows = []
    for label, name in (("tiny", "tiny"), ("CLIP ViT-L/14 shape", None)):
        encoder = build_visual_encoder(name or str(clip_large_folder(tmp / "clip-vit-l14")))
        times = timed(lambda: encoder.embed(frames), args.repeats)
        med = statistics.median(times)
        rows.append({"what": f"visual encoder {label}", "frames": args.batch_size, "median_s": med,
                     "frames_per_s": args.batch_size / med, "all_s": times})
    return rows


def paper_audio_model():
    """The paper preset's FoalNet with a WavLM-Large-shaped encoder (random weights, 2 layers: the
    front end is the CNN, which does not depend on the depth)."""
    import dataclasses

    from foalnet.model.foalnet import FoalNet, FoalNetConfig
    from foalnet.model.audio import HFAudioEncoder, configure_audio_encoder
    from transformers import WavLMConfig, WavLMModel

    wavlm = WavLMModel(WavLMConfig(hidden_size=1024, num_hidden_layers=2, num_attention_heads=16,
                                   intermediate_size=4096, feat_extract_norm="layer", do_stable_layer_norm=True,
                                   conv_bias=False))
    encoder = configure_audio_encoder(HFAudioEncoder(wavlm))
    return FoalNet(dataclasses.replace(FoalNetConfig.paper(), audio_encoder="wavlm-large-shape"), audio_encoder=encoder)


def audio_rows(args: argparse.Namespace) -> list[dict]:
    import torch

    from foalnet.model.foalnet import FoalNet, FoalNetConfig

    gen = torch.Generator().manual_seed(0)
    seconds = [1.5, 2.5, 3.7, 4.5, 6.0]  # an IEMOCAP-like spread, cut at 6 s
    waves = [0.1 * torch.randn(int(s * 16000), generator=gen) for s in seconds]
    rows = []
    for label, model in (("WavLM-Large CNN (paper)", paper_audio_model()), ("offline DSP (tiny)", FoalNet(FoalNetConfig.tiny()))):
        model.eval()

        def fill() -> None:
            for w in waves:
                model.audio_frontend(w[None], torch.ones(1, len(w), dtype=torch.bool))

        times = timed(fill, args.repeats)
        med = statistics.median(times)
        rows.append({"what": f"audio front end, {label}", "audio_s": sum(seconds), "median_s": med,
                     "s_per_audio_s": med / sum(seconds), "all_s": times})
    return rows


def corpus_row(tmp: Path) -> dict:
    from foalnet.cli import main as foalnet
    from foalnet.data.synth import generate

    summary = generate(tmp / "synth", seed=0, size="small", workers=1)
    data = tmp / "data"
    assert foalnet(["prepare", "iemocap", summary["root"], "--out", str(data)]) == 0
    from foalnet.features.base import build_visual_encoder
    from foalnet.features.extract import extract_visual

    report = extract_visual(data, build_visual_encoder("tiny"), progress=False)
    return {"what": "extract-visual tiny, synthetic corpus (decode + crop + embed + write)",
            "frames": report.frames, "median_s": report.seconds, "frames_per_s": report.frames_per_second,
            "utterances": report.done}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--full", action="store_true", help="also extract-visual end to end on a synthetic corpus")
    p.add_argument("--batch-size", type=int, default=8, help="frames per visual encoder call")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=HERE / "results" / "feature_extract.json")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        rows = visual_rows(args, Path(tmp)) + audio_rows(args)
        if args.full:
            rows.append(corpus_row(Path(tmp)))
    print(f"| what | speed ({args.threads} thread) |\n|---|---|")
    for r in rows:
        speed = (f"{r['frames_per_s']:.1f} frames/s" if "frames_per_s" in r
                 else f"{r['s_per_audio_s']:.4f} s per s of audio ({1 / r['s_per_audio_s']:.0f}x real time)")
        print(f"| {r['what']} | {speed} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": " ".join(["python", *sys.argv]), "threads": args.threads,
                                    "rows": rows}, indent=2))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
