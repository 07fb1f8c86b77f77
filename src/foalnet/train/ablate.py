"""The paper's Table 2 through cross-validation: single modalities, baseline fusion, +AVEL, +MEM, full.

Each row is a full ``run_cv`` into ``DIR/<row>/`` (completed folds are reused, so an interrupted
ablation resumes). ``ablation.json`` = ``{row: cv summary}``; ``ablation.md`` puts our UA/WA
(mean ± std over folds) beside the paper's (spec §6) and states the protocol used. The paper's
columns are IEMOCAP numbers: when our corpus is another (a CSV corpus, the synthetic demo corpus)
the table says so in its header and a note (``corpus_of``), not only in a footnote.
With ``seeds`` each row is ``run_seeds`` into ``DIR/<row>/seed<S>/`` (std over seeds).
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from foalnet.config import ExperimentConfig
from foalnet.data.files import write_text_atomic
from foalnet.train.cv import fold_predictions, run_cv, run_seeds
from foalnet.train.loop import tagged
from foalnet.train.metrics import BOOTSTRAP_METHOD, paired_bootstrap_ua
from foalnet.train.svm import SVM_ROW, run_svm_cv
from foalnet.errors import UsageError

# row name -> (modality, use_avel, use_mem, paper UA %, paper WA %)  (spec §6)
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
                 folds: list[int] | None = None, accelerator=None,
                 seeds: list[int] | None = None) -> dict:
    """Run the chosen Table 2 rows (default: all six) and write ablation.json / ablation.md.

    ``seeds``: each row a CV per seed (``run_seeds``); the rows' std is then over seeds."""
    from foalnet.train.run import resolve_accelerator

    rows = rows or [*ROWS, SVM_ROW]  # + the classical baseline (not a paper row)
    unknown = [r for r in rows if r not in ROWS and r != SVM_ROW]
    if unknown:
        raise UsageError(f"unknown ablation rows {unknown}; choose from {[*ROWS, SVM_ROW]}")
    out_dir = Path(out_dir)
    accelerator = accelerator or resolve_accelerator(cfg)
    results = {}
    for row in rows:
        accelerator.print(f"=== ablation row {row} ===")
        row_acc = tagged(accelerator, row)
        if row == SVM_ROW:  # deterministic: one run whatever the seeds
            results[row] = svm_row(cfg, out_dir / row, folds, accelerator)
        elif seeds:
            results[row] = run_seeds(row_config(cfg, row), out_dir / row, seeds, folds=folds,
                                     accelerator=row_acc, title=f"ablation row {row}")
        else:
            results[row] = run_cv(row_config(cfg, row), out_dir / row, folds=folds,
                                  accelerator=row_acc, title=f"ablation row {row}")
    if "full" in results:
        for row in results:
            if row != "full":
                results[row]["vs_full"] = paired_vs_full(out_dir, row, results[row])
    if accelerator.is_main_process:
        write_text_atomic(out_dir / "ablation.json", json.dumps(results, indent=2) + "\n")
        write_text_atomic(out_dir / "ablation.md", ablation_markdown(results))
    return results


def svm_row(cfg: ExperimentConfig, row_dir: Path, folds: list[int] | None, accelerator) -> dict:
    """The eGeMAPS SVM baseline on the same manifest and folds (main process; the others read it)."""
    if accelerator.is_main_process:
        run_svm_cv(cfg.data.data_dir, row_dir, folds=folds, title=f"ablation row {SVM_ROW}",
                   progress=False)
    accelerator.wait_for_everyone()
    return json.loads((row_dir / "summary.json").read_text())


def paired_vs_full(out_dir: Path, row: str, summary: dict) -> dict | None:
    """``{"ua_diff", "interval", "items", "method"}``: this row's UA minus the full model's, over
    the test utterances both evaluated (paired bootstrap); None without predictions.

    With seeds, seed S of the row is paired with seed S of the full model and every
    (seed, fold) is one stratum: the difference of the means over seeds."""
    folds, labels = summary["folds"], summary["labels"]
    subdirs = [f"seed{s}" for s in summary["seeds"]] if summary.get("seeds") else [""]
    triples = []
    for sub in subdirs:
        mine = fold_predictions(out_dir / row / sub, folds, labels)
        full = fold_predictions(out_dir / "full" / sub, folds, labels)
        if mine is None or full is None:
            return None
        for fold in folds:
            common = sorted(set(mine[fold]) & set(full[fold]))
            if not common:
                return None
            triples.append(tuple(np.array(x) for x in zip(*[
                (mine[fold][i][0], mine[fold][i][1], full[fold][i][1]) for i in common])))
    out = paired_bootstrap_ua(triples, len(labels))
    strata = "; strata = seed x fold" if summary.get("seeds") else ""
    return {**out, "items": sum(len(t[0]) for t in triples),
            "method": f"paired {BOOTSTRAP_METHOD}{strata}; 95 % interval"}


def corpus_of(summary: dict) -> dict:
    """``{"name", "iemocap"}``: what our rows were measured on, and whether that is the paper's
    corpus. The synthetic demo corpus is parsed by the IEMOCAP reader (corpus "iemocap" in
    prepare.json), so its root's ``foalnet synth`` marker is what tells it apart."""
    from foalnet.data.synth import MARKER_FILE

    corpus = summary.get("corpus") or "unknown"
    root = None
    try:
        from foalnet.data.manifest import read_prepare_meta

        root = read_prepare_meta(summary.get("data_dir")).get("options", {}).get("root")
    except Exception:  # informative only: an unreadable prepare.json fails elsewhere
        pass
    if corpus == "iemocap" and root and (Path(root) / MARKER_FILE).is_file():
        return {"name": "synthetic IEMOCAP-shaped corpus (foalnet synth)", "iemocap": False}
    return {"name": "IEMOCAP" if corpus == "iemocap" else corpus, "iemocap": corpus == "iemocap"}


def paper_header(summary: dict) -> tuple[str, str | None]:
    """Column suffix for the paper's numbers and, for another corpus, the warning line."""
    ours = corpus_of(summary)
    if ours["iemocap"]:
        return "paper, IEMOCAP", None
    return ("paper, IEMOCAP: OTHER CORPUS",
            f"**Different corpus:** our rows are on the {ours['name']}, the paper's on IEMOCAP; "
            "the two column groups are not comparable.")


def ablation_markdown(results: dict[str, dict]) -> str:
    """Our UA/WA beside the paper's, with the protocol of our runs."""
    any_row = next(iter(results.values()))
    paper, warning = paper_header(any_row)
    seeds = any_row.get("seeds")
    lines = ["# Ablation (paper Table 2 rows)", "",
             f"Ours: data {any_row.get('data_dir')} ({corpus_of(any_row)['name']}), "
             f"cross-validation over folds {any_row['folds']}"
             + (f", seeds {', '.join(map(str, seeds))}" if seeds else "")
             + f"; protocol: {any_row['protocol']}.", PAPER_NOTE, *([warning] if warning else []), "",
             f"| row | UA % (ours) | WA % (ours) | UA − full, pp [95 % CI] | UA % ({paper}) "
             f"| WA % ({paper}) |",
             "|---|---|---|---|---|---|"]
    for row, summary in results.items():
        paper_cells = [f"{v:.2f}" for v in ROWS[row][3:5]] if row in ROWS else ["—", "—"]
        ua, wa = _cell(summary["ua"]), _cell(summary["wa"])
        lines.append(f"| {row} | {ua} | {wa} | {_diff_cell(summary.get('vs_full'))} "
                     f"| {paper_cells[0]} | {paper_cells[1]} |")
    spread = "over seeds of the CV means" if seeds else "over folds"
    lines += ["", f"Ours: mean ± std {spread} [95 % bootstrap CI of the mean: test utterances "
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
