"""The paper's Table 2 through cross-validation: single modalities, baseline fusion, +AVEL, +MEM, full.

Each row is a full ``run_cv`` into ``DIR/<row>/`` (completed folds are reused, so an interrupted
ablation resumes). ``ablation.json`` = ``{row: cv summary}``; ``ablation.md`` puts our UA/WA
(mean ± std over folds) beside the paper's (SPEC §6) and states the protocol used.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from foalnet.config import ExperimentConfig
from foalnet.data.files import write_text_atomic
from foalnet.train.cv import fold_predictions, run_cv
from foalnet.train.metrics import BOOTSTRAP_METHOD, paired_bootstrap_ua

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
    if "full" in results:
        for row in results:
            if row != "full":
                results[row]["vs_full"] = paired_vs_full(out_dir, row, results[row])
    if accelerator.is_main_process:
        write_text_atomic(out_dir / "ablation.json", json.dumps(results, indent=2) + "\n")
        write_text_atomic(out_dir / "ablation.md", ablation_markdown(results))
    return results


def paired_vs_full(out_dir: Path, row: str, summary: dict) -> dict | None:
    """``{"ua_diff", "interval", "items", "method"}``: this row's UA minus the full model's, over
    the test utterances both evaluated (paired bootstrap); None without predictions."""
    folds, labels = summary["folds"], summary["labels"]
    mine = fold_predictions(out_dir / row, folds, labels)
    full = fold_predictions(out_dir / "full", folds, labels)
    if mine is None or full is None:
        return None
    triples = []
    for fold in folds:
        common = sorted(set(mine[fold]) & set(full[fold]))
        if not common:
            return None
        triples.append(tuple(np.array(x) for x in zip(*[
            (mine[fold][i][0], mine[fold][i][1], full[fold][i][1]) for i in common])))
    out = paired_bootstrap_ua(triples, len(labels))
    return {**out, "items": sum(len(t[0]) for t in triples),
            "method": f"paired {BOOTSTRAP_METHOD}; 95 % interval"}


def ablation_markdown(results: dict[str, dict]) -> str:
    """Our UA/WA beside the paper's, with the protocol of our runs."""
    any_row = next(iter(results.values()))
    lines = ["# Ablation (paper Table 2 rows)", "",
             f"Ours: data {any_row.get('data_dir')} (corpus {any_row.get('corpus')}), "
             f"cross-validation over folds {any_row['folds']}; protocol: {any_row['protocol']}.",
             PAPER_NOTE, "",
             "| row | UA % (ours) | WA % (ours) | UA − full, pp [95 % CI] | UA % (paper) "
             "| WA % (paper) |",
             "|---|---|---|---|---|---|"]
    for row, summary in results.items():
        paper_ua, paper_wa = ROWS[row][3], ROWS[row][4]
        ua, wa = _cell(summary["ua"]), _cell(summary["wa"])
        lines.append(f"| {row} | {ua} | {wa} | {_diff_cell(summary.get('vs_full'))} "
                     f"| {paper_ua:.2f} | {paper_wa:.2f} |")
    lines += ["", "Ours: mean ± std over folds [95 % bootstrap CI of the mean: test utterances "
              "resampled within folds]; UA − full: paired bootstrap over the same test utterances."]
    return "\n".join(lines) + "\n"


def _cell(metric: dict) -> str:
    text = f"{100 * metric['mean']:.2f} ± {100 * metric['std']:.2f}"
    if metric.get("ci95"):
        text += f" [{100 * metric['ci95'][0]:.2f}, {100 * metric['ci95'][1]:.2f}]"
    return text


def _diff_cell(paired: dict | None) -> str:
    if not paired:
        return "—"
    lo, hi = paired["interval"]
    return f"{100 * paired['ua_diff']:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}]"
