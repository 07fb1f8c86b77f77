"""One fold as an ensemble (``train.ensemble`` K > 1): K complete runs, one per seed, scored together.

RUN_DIR layout: config.yaml (the ensemble's), member1/ ... memberK/ (each a complete run of
train/run.py with ``train.seed`` = seed + 1000 (k - 1) and ``train.ensemble`` 1: its own dev
selection, best/, metrics.csv, predictions.csv, summary.json), then, once every member is
complete: best/ (an ensemble model folder, model/ensemble.py: the members' best/ linked),
predictions.csv (the mean of the members' test probabilities), confusion.png, learning_curves.png
(every member's dev curves, its kept epoch marked), rejected.jsonl and
summary.json (written last; it adds ``ensemble``: the members' seeds, test scores and their spread).
A killed ensemble resumes member by member: complete members are reused, the running one resumes
from its checkpoint. Member 1 has the run's own seed, so a one-member run is the single model.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from foalnet.config import ExperimentConfig
from foalnet.data.files import write_text_atomic
from foalnet.train.metrics import classification_metrics, plot_confusion

SEED_STRIDE = 1000  # member seeds seed, seed + 1000, ...: apart from the seeds of `cv --seeds 1,2,3`
METRICS = ("ua", "wa", "macro_f1")


def member_dirs(run_dir: Path, members: int) -> list[Path]:
    return [Path(run_dir) / f"member{k}" for k in range(1, members + 1)]


def member_config(cfg: ExperimentConfig, k: int) -> ExperimentConfig:
    """Member k's settings: the ensemble's, one model, seed + 1000 (k - 1)."""
    return replace(cfg, train=replace(cfg.train, ensemble=1, seed=cfg.train.seed + SEED_STRIDE * (k - 1)))


def train_ensemble(cfg: ExperimentConfig, run_dir: Path, hooks, acc) -> dict:
    """Train every member (resuming those begun before), then write the ensemble's outputs and
    return its summary. train_fold has refused a new run into a folder that holds one."""
    from foalnet.model.ensemble import save_ensemble_folder
    from foalnet.train.run import (CONFIG_FILE, SUMMARY_FILE, has_started, is_complete, load_fold,
                                   run_provenance, train_fold)

    members = cfg.train.ensemble
    load_fold(cfg)  # the manifest, the fold and the feature stores checked before anything is written
    if acc.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save_yaml(run_dir / CONFIG_FILE, extra=run_provenance(f"ensemble of {members} runs: see member*/"))
    acc.wait_for_everyone()
    summaries = []
    for k, member_dir in enumerate(member_dirs(run_dir, members), start=1):
        acc.print(f"ensemble member {k}/{members} (seed {member_config(cfg, k).train.seed}) -> {member_dir}")
        started = has_started(member_dir) or is_complete(member_dir)  # a resumed ensemble: reuse or resume it
        summaries.append(train_fold(member_config(cfg, k), member_dir, resume=started, hooks=hooks,
                                    accelerator=acc))
    summary = combine(run_dir, summaries, [member_config(cfg, k).train.seed for k in range(1, members + 1)])
    if acc.is_main_process:
        save_ensemble_folder(run_dir / "best", [d / "best" for d in member_dirs(run_dir, members)])
        labels = summary["labels"]
        plot_confusion(summary["test"]["confusion"], labels, run_dir / "confusion.png",
                       f"fold {summary['fold']} test UA {summary['test']['ua']:.3f} (ensemble of {members})")
        write_member_curves(run_dir, summaries, members)
        write_text_atomic(run_dir / "rejected.jsonl", _rejected_union(run_dir, members))
        write_text_atomic(run_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    acc.wait_for_everyone()
    acc.print(f"fold {summary['fold']} TEST  UA {summary['test']['ua']:.4f}  WA {summary['test']['wa']:.4f}"
              f"  (ensemble of {members}; members' UA {', '.join(f'{u:.3f}' for u in summary['ensemble']['member_ua'])})")
    return summary


def write_member_curves(run_dir: Path, summaries: list[dict], members: int) -> None:
    """The fold folder's learning_curves.png: every member's dev curves and kept epoch in one figure."""
    from foalnet.train.figures import CURVES_FILE, ensemble_curves_png, read_history, write_png

    histories = [read_history(d) for d in member_dirs(run_dir, members)]
    selected = [s.get("selected_epoch") for s in summaries]
    select_name = summaries[0].get("selected_on") or "dev"
    write_png(run_dir / CURVES_FILE, ensemble_curves_png(
        histories, selected, select_name, title=f"fold {summaries[0]['fold']}: {members} members"))


def combine(run_dir: Path, summaries: list[dict], seeds: list[int]) -> dict:
    """The fold's summary from its members': test metrics of the averaged probabilities (and
    predictions.csv with them, written here), the members' own scores beside them."""
    members = len(summaries)
    first = summaries[0]
    labels = first["labels"]
    tables = [read_probabilities(d, labels) for d in member_dirs(run_dir, members)]
    for k, table in enumerate(tables[1:], start=2):
        if list(table) != list(tables[0]):
            raise RuntimeError(f"{run_dir}/member{k}/predictions.csv scores other test items than "
                               f"member1 ({len(table)} against {len(tables[0])}): not averaged")
    ids = list(tables[0])
    mean = np.mean([[table[i][1] for i in ids] for table in tables], axis=0) if ids else np.zeros((0, len(labels)))
    references = [labels.index(tables[0][i][0]) for i in ids]
    test = classification_metrics(references, mean.argmax(axis=1).tolist(), len(labels))
    from foalnet.train.run import predictions_csv

    write_text_atomic(run_dir / "predictions.csv", predictions_csv(ids, references, mean, labels))
    member_scores = {key: [float(s["test"][key]) for s in summaries] for key in METRICS}
    keep = ("protocol", "speaker_independent", "fold", "modality", "use_avel", "use_mem", "labels",
            "train_items", "dev_items", "test_items", "selected_on", "select_metric")
    summary = {"test": test, **{k: first.get(k) for k in keep}}
    summary.update(
        selected_epoch=[s.get("selected_epoch") for s in summaries],
        selection=[s.get("selection") for s in summaries],
        epochs_run=sum(int(s.get("epochs_run") or 0) for s in summaries),
        skipped_items=max(int(s.get("skipped_items") or 0) for s in summaries),
        nan_steps=sum(int(s.get("nan_steps") or 0) for s in summaries),
        seconds=round(sum(float(s.get("seconds") or 0.0) for s in summaries), 1),
        ensemble={
            "members": members,
            "member_seeds": list(seeds),
            **{f"member_{key}": values for key, values in member_scores.items()},
            # how much one model of this recipe moves with the seed: the spread the ensemble averages out
            "member_ua_std": float(np.std(member_scores["ua"], ddof=1)) if members > 1 else 0.0,
            "member_ua_mean": float(np.mean(member_scores["ua"])),
        },
    )
    return summary


def read_probabilities(run_dir: Path, labels: list[str]) -> dict[str, tuple[str, np.ndarray]]:
    """``{id: (reference label, class probabilities in logit order)}`` of a run's predictions.csv."""
    from foalnet.train.report import read_predictions

    rows = read_predictions(run_dir)
    columns = [f"p_{name}" for name in labels]
    if rows and any(c not in rows[0] for c in columns):
        raise RuntimeError(f"{run_dir}/predictions.csv: columns {list(rows[0])} do not hold the classes {labels}")
    return {r["id"]: (r["label"], np.array([float(r[c]) for c in columns])) for r in rows}


def _rejected_union(run_dir: Path, members: int) -> str:
    """The members' rejected.jsonl lines, each item once (every member reads the same files)."""
    seen, lines = set(), []
    for member_dir in member_dirs(run_dir, members):
        path = member_dir / "rejected.jsonl"
        for line in (path.read_text().splitlines() if path.is_file() else []):
            item_id = json.loads(line).get("id") if line.strip() else None
            if item_id is not None and item_id not in seen:
                seen.add(item_id)
                lines.append(line + "\n")
    return "".join(lines)
