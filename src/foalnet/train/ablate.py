"""The paper's Table 2 through cross-validation: single modalities, baseline fusion, +AVEL, +MEM, full.

Each row is a full ``run_cv`` into ``DIR/<row>/`` (completed folds are reused, so an interrupted
ablation resumes). ``ablation.json`` = ``{row: cv summary}``; ``ablation.md`` puts our UA/WA
(mean ± std over folds) beside the paper's (SPEC §6) and states the protocol used.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from foalnet.config import ExperimentConfig
from foalnet.data.files import write_text_atomic
from foalnet.train.cv import run_cv

# row name -> (modality, use_avel, use_mem, paper UA %, paper WA %)  (SPEC §6)
ROWS: dict[str, tuple[str, bool, bool, float, float]] = {
    "audio_only": ("audio", False, False, 77.68, 77.25),
    "video_only": ("video", False, False, 47.90, 46.61),
    "baseline": ("av", False, False, 77.85, 77.31),
    "baseline+avel": ("av", True, False, 79.31, 78.20),
    "baseline+mem": ("av", False, True, 78.10, 76.94),
    "full": ("av", True, True, 80.10, 79.45),
}
# the config fields each row sets (row_config): giving them to ablate would be ignored
ROW_FIELDS = ("model.modality", "model.use_avel", "model.use_mem")
PAPER_NOTE = ("Paper: IEMOCAP, WavLM-Large + CLIP ViT-L/14 whole image, best epoch selected on the "
              "test session (Li et al., Interspeech 2024, Table 2).")


def row_config(cfg: ExperimentConfig, row: str) -> ExperimentConfig:
    modality, use_avel, use_mem, _, _ = ROWS[row]
    return replace(cfg, model=replace(cfg.model, modality=modality, use_avel=use_avel, use_mem=use_mem))


def run_ablation(cfg: ExperimentConfig, out_dir: str | Path, rows: list[str] | None = None,
                 folds: list[int] | None = None, accelerator=None) -> dict:
    """Run the chosen Table 2 rows (default: all six) and write ablation.json / ablation.md."""
    from foalnet.train.run import resolve_accelerator

    rows = rows or list(ROWS)
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise ValueError(f"unknown ablation rows {unknown}; choose from {list(ROWS)}")
    out_dir = Path(out_dir)
    accelerator = accelerator or resolve_accelerator(cfg)
    results = {}
    for row in rows:
        accelerator.print(f"=== ablation row {row} ===")
        results[row] = run_cv(row_config(cfg, row), out_dir / row, folds=folds,
                              accelerator=accelerator, title=f"ablation row {row}")
    if accelerator.is_main_process:
        write_text_atomic(out_dir / "ablation.json", json.dumps(results, indent=2) + "\n")
        write_text_atomic(out_dir / "ablation.md", ablation_markdown(results))
    return results


def ablation_markdown(results: dict[str, dict]) -> str:
    """Our UA/WA beside the paper's, with the protocol of our runs."""
    any_row = next(iter(results.values()))
    lines = ["# Ablation (paper Table 2 rows)", "",
             f"Ours: data {any_row.get('data_dir')} (corpus {any_row.get('corpus')}), "
             f"cross-validation over folds {any_row['folds']}; protocol: {any_row['protocol']}.",
             PAPER_NOTE, "",
             "| row | UA % (ours) | WA % (ours) | UA % (paper) | WA % (paper) |",
             "|---|---|---|---|---|"]
    for row, summary in results.items():
        paper_ua, paper_wa = ROWS[row][3], ROWS[row][4]
        ua = f"{100 * summary['ua']['mean']:.2f} ± {100 * summary['ua']['std']:.2f}"
        wa = f"{100 * summary['wa']['mean']:.2f} ± {100 * summary['wa']['std']:.2f}"
        lines.append(f"| {row} | {ua} | {wa} | {paper_ua:.2f} | {paper_wa:.2f} |")
    return "\n".join(lines) + "\n"
