"""CLI of the model stage: ``foalnet import-reference``."""
from __future__ import annotations

import argparse
import logging
from foalnet.errors import UsageError

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "import-reference",
        help="turn a state_dict of the original Foal-Net MultiTaskModel into a foalnet model folder",
        description="Map the original's keys to foalnet's and save model.safetensors + config.json. "
        "The original's class order (hap, neu, sad, ang) is kept as the imported model's label order.",
    )
    p.add_argument("state_dict", help="the original's state dict (.pt/.bin saved with torch.save)")
    p.add_argument("--audio-encoder", required=True,
                   help="WavLM checkpoint the original was built from (hub id or local folder; only its config is read)")
    p.add_argument("--out", required=True, help="output model folder")
    p.add_argument("--fusion-heads", type=int, default=4, help="attention heads of the fusion layers (original: 4)")
    p.add_argument("--visual-encoder", default="openai/clip-vit-large-patch14",
                   help="image encoder whose embeddings the original was trained on")
    p.set_defaults(func=run_import_reference)


def run_import_reference(args: argparse.Namespace) -> int:
    from foalnet.model.reference import import_reference

    try:
        model = import_reference(args.state_dict, args.audio_encoder, args.out,
                                 fusion_heads=args.fusion_heads, visual_encoder=args.visual_encoder)
    except (OSError, UsageError) as err:
        log.error("import-reference failed: %s", err)
        return 1
    n = sum(p.numel() for p in model.parameters())
    log.info("wrote %s (%d parameters, labels %s)", args.out, n, ",".join(model.labels))
    return 0
