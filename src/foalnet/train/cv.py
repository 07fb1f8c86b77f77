"""Cross-validation: every fold of the manifest -> CV_DIR/fold<K>/, then one summary.

A fold whose ``summary.json`` exists is not re-run; a fold with checkpoints is resumed; each
fold gets a fresh model and optimiser (built inside ``train_fold``) and the accelerator's
references are released afterwards (``free_memory``). Outputs: ``summary.json``
(``{"ua": {"mean", "std", "per_fold", "ci95"}, "wa": ..., "macro_f1": ..., "bootstrap",
"protocol", "skipped_items" (distinct ids), "skipped_per_fold", ...}``, fractions, std = sample
standard deviation over folds, ci95 = 95 % bootstrap interval of the mean, see ``bootstrap``), ``confusion.png`` (pooled over folds) and
``report.md`` (per-fold and mean +- std rows).

Seeds (``run_seeds``, ``foalnet cv --seeds 1,2,3``): each seed (``train.seed``: model init,
sampler draws, dev speakers) is a full CV in ``CV_DIR/seed<S>/`` (resumable like folds), and
``CV_DIR/summary.json`` holds the summary over seeds x folds: ``{"seeds", "ua": {"mean" (of the
seeds' CV means), "std" (sample std over seeds of the CV means), "per_seed", "per_seed_fold",
"ci95" (bootstrap, strata = seed x fold)}, ..., "per_seed": [row per seed], "std_over": "seeds"}``.
Console lines of a fold are tagged ``[fold K]`` (``[<row> seed S fold K]`` inside an ablation).
"""
from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

from foalnet.config import ExperimentConfig
from foalnet.data.files import write_text_atomic
from foalnet.data.protocol import OFFICIAL_SPLIT_PROTOCOL
from foalnet.train.loop import tagged
from foalnet.train.metrics import (BOOTSTRAP_METHOD, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED,
                                   bootstrap_cv, metrics_from_confusion, plot_confusion)
from foalnet.train.run import (NO_DEV_PROTOCOL, PAPER_PROTOCOL, SUMMARY_FILE, has_started, is_complete,
                               protocol_notes, train_fold)
from foalnet.errors import UsageError

logger = logging.getLogger(__name__)

METRICS = ("ua", "wa", "macro_f1")


def manifest_folds(data_dir: str | Path) -> list[int]:
    from foalnet.data.manifest import read_manifest
    from foalnet.data.protocol import folds_of

    return list(folds_of(read_manifest(data_dir)))


def run_cv(cfg: ExperimentConfig, cv_dir: str | Path, folds: list[int] | None = None,
           accelerator=None, title: str = "") -> dict:
    """Train/resume every fold into ``cv_dir/fold<K>`` and write the CV summary and report."""
    cfg.check_complete()
    from foalnet.train.run import resolve_accelerator

    cv_dir = Path(cv_dir)
    accelerator = accelerator or resolve_accelerator(cfg)
    folds = check_folders(cfg, cv_dir, folds)
    check_layout(cv_dir, seeded=False)
    done = [fold for fold in folds if is_complete(cv_dir / f"fold{fold}")]
    if done:  # one line per CV (per ablation row), not one per fold
        accelerator.print(f"folds {', '.join(map(str, done))} already complete in {cv_dir}: "
                          "reused, not re-run")
    summaries = {}
    for fold in folds:
        fold_dir = cv_dir / f"fold{fold}"
        if fold in done:
            summaries[fold] = json.loads((fold_dir / SUMMARY_FILE).read_text())
            continue
        fold_cfg = replace(cfg, data=replace(cfg.data, fold=fold))
        resume = has_started(fold_dir)
        summaries[fold] = train_fold(fold_cfg, fold_dir, resume=resume,
                                     accelerator=tagged(accelerator, f"fold {fold}"))
    summary = summarize(summaries, cfg, rejected_rows(cv_dir, folds))
    add_intervals(summary, fold_predictions(cv_dir, folds, summary["labels"]))
    if accelerator.is_main_process:
        write_cv_outputs(cv_dir, summary, title or f"cross-validation ({cfg.model.modality})")
    return summary


def check_folders(cfg: ExperimentConfig, cv_dir: Path, folds: list[int] | None) -> list[int]:
    """The folds to run (default: the manifest's), after refusing unknown folds and fold folders
    of other settings: checked before any training, so nothing is mixed or half-run."""
    available = manifest_folds(cfg.data.data_dir)
    folds = folds or available
    unknown = sorted(set(folds) - set(available))
    if unknown:
        raise UsageError(f"folds {unknown} are not in the manifest (folds: {available})")
    for fold in folds:
        check_same_config(cv_dir / f"fold{fold}", replace(cfg, data=replace(cfg.data, fold=fold)))
    return folds


def check_layout(cv_dir: Path, seeded: bool) -> None:
    """Refuse a seeds run into a single-seed CV folder and vice versa: its summary.json and
    report.md would describe one layout over the other's results."""
    cv_dir = Path(cv_dir)
    if not cv_dir.is_dir():
        return
    other = "fold" if seeded else "seed"
    found = sorted(p.name for p in cv_dir.iterdir()
                   if p.is_dir() and p.name.startswith(other) and p.name[len(other):].isdigit())
    if found:
        kind = "a single-seed cross-validation" if seeded else "a cross-validation over seeds"
        hint = "run without --seeds" if seeded else "pass the same --seeds"
        raise UsageError(f"{cv_dir} holds {kind} ({', '.join(found)}): {hint}, or choose a new --out")


def seed_config(cfg: ExperimentConfig, seed: int) -> ExperimentConfig:
    return replace(cfg, train=replace(cfg.train, seed=int(seed)))


def run_seeds(cfg: ExperimentConfig, out_dir: str | Path, seeds: list[int],
              folds: list[int] | None = None, accelerator=None, title: str = "") -> dict:
    """One full CV per seed into ``out_dir/seed<S>`` (completed folds reused), then the summary
    over seeds x folds in ``out_dir`` (summary.json, report.md)."""
    cfg.check_complete()
    from foalnet.train.run import resolve_accelerator

    if not seeds or len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds {seeds}: give distinct integers like 1,2,3")
    out_dir = Path(out_dir)
    accelerator = accelerator or resolve_accelerator(cfg)
    check_layout(out_dir, seeded=True)
    for seed in seeds:  # every seed's folders checked before the first one trains
        folds = check_folders(seed_config(cfg, seed), out_dir / f"seed{seed}", folds)
    title = title or f"cross-validation ({cfg.model.modality})"
    per_seed = {seed: run_cv(seed_config(cfg, seed), out_dir / f"seed{seed}", folds=folds,
                             accelerator=tagged(accelerator, f"seed {seed}"),
                             title=f"{title}, seed {seed}") for seed in seeds}
    summary = summarize_seeds(per_seed)
    add_seed_intervals(summary, {s: fold_predictions(out_dir / f"seed{s}", summary["folds"],
                                                     summary["labels"]) for s in seeds})
    summary["skipped_items"] = len(set().union(*(rejected_ids(out_dir / f"seed{s}") for s in seeds)))
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
        write_text_atomic(out_dir / "report.md", seeds_markdown(summary, title))
    return summary


def summarize_seeds(per_seed: dict[int, dict]) -> dict:
    """Mean over seeds of the CV means, sample std over seeds, and one row per seed.

    The std over seeds answers "how much does the number move when only the seed changes";
    the folds' std (per seed row) mixes in how different the test sessions are."""
    seeds = sorted(per_seed)
    first = per_seed[seeds[0]]
    out: dict = {"seeds": seeds, "std_over": "seeds"}
    for key in ("folds", "labels", "protocol", "data_dir", "corpus", "modality", "use_avel",
                "use_mem"):
        out[key] = first.get(key)
    for key in METRICS:
        means = [float(per_seed[s][key]["mean"]) for s in seeds]
        std = float(np.std(means, ddof=1)) if len(means) > 1 else 0.0
        out[key] = {"mean": float(np.mean(means)), "std": std, "per_seed": means,
                    "per_seed_fold": [list(per_seed[s][key]["per_fold"]) for s in seeds]}
    out["per_seed"] = [{"seed": s, **{k: {m: per_seed[s][k].get(m) for m in ("mean", "std", "ci95")}
                                      for k in METRICS},
                        "selected_epochs": per_seed[s].get("selected_epochs"),
                        "pooled": per_seed[s].get("pooled")} for s in seeds]
    pooled = np.sum([np.asarray(per_seed[s]["pooled"]["confusion"]) for s in seeds], axis=0)
    out["pooled"] = metrics_from_confusion(pooled)
    return out


def add_seed_intervals(summary: dict, predictions: dict[int, dict | None]) -> None:
    """``ci95`` of UA/WA over seeds x folds: every (seed, fold) is one stratum of the bootstrap,
    so the interval is that of the mean over seeds of the CV means (test-utterance noise only:
    the seeds' spread is the std beside it)."""
    if any(p is None or not all(p[f] for f in summary["folds"]) for p in predictions.values()):
        summary["bootstrap"] = None
        return
    pairs = [_pairs(predictions[s], summary["folds"]) for s in summary["seeds"]]
    ci = bootstrap_cv([pair for seed_pairs in pairs for pair in seed_pairs], len(summary["labels"]))
    summary["ua"]["ci95"], summary["wa"]["ci95"] = ci["ua"], ci["wa"]
    summary["bootstrap"] = {"method": BOOTSTRAP_METHOD + "; strata = seed x fold",
                            "resamples": BOOTSTRAP_RESAMPLES, "seed": BOOTSTRAP_SEED, "level": 0.95}


def _pairs(predictions: dict[int, dict[str, tuple[int, int]]], folds: list[int]
           ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(reference, prediction) arrays of each fold, in fold order."""
    pairs = []
    for fold in folds:
        items = list(predictions[fold].values())
        pairs.append((np.array([t for t, _ in items]), np.array([p for _, p in items])))
    return pairs


def summarize(per_fold: dict[int, dict], cfg: ExperimentConfig, rejected: list[dict]) -> dict:
    """Mean +- sample std per metric over folds, pooled confusion and its metrics.

    ``rejected``: the folds' rejected.jsonl entries; an unreadable file fails in every fold that
    reads it, so ``skipped_items`` counts distinct ids (``skipped_per_fold`` keeps the rest)."""
    folds = sorted(per_fold)
    out: dict = {"folds": folds}
    for key in METRICS:
        values = [float(per_fold[k]["test"][key]) for k in folds]
        std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        out[key] = {"mean": float(np.mean(values)), "std": std, "per_fold": values}
    pooled = np.sum([np.asarray(per_fold[k]["test"]["confusion"]) for k in folds], axis=0)
    out["pooled"] = {k: v for k, v in metrics_from_confusion(pooled).items()}
    out["labels"] = per_fold[folds[0]]["labels"]
    speaker_independent = all(per_fold[k].get("speaker_independent", True) for k in folds)
    if cfg.data.select_on_test:
        protocol = PAPER_PROTOCOL
    elif not speaker_independent:
        protocol = OFFICIAL_SPLIT_PROTOCOL
    elif cfg.data.dev_speakers == 0:
        protocol = f"leave-one-fold-out; {NO_DEV_PROTOCOL}; test fold untouched during training"
    else:
        protocol = ("leave-one-fold-out; best epoch selected on a speaker-disjoint dev split of the "
                    "training folds; test fold untouched during selection")
    out["protocol"] = protocol + protocol_notes(cfg)
    out["speaker_independent"] = speaker_independent
    out["selected_epochs"] = [per_fold[k].get("selected_epoch") for k in folds]
    out["selection"] = [per_fold[k].get("selection") for k in folds]  # stability, train/loop.py
    out["skipped_items"] = len({r["id"] for r in rejected})
    out["skipped_per_fold"] = [int(per_fold[k].get("skipped_items", 0)) for k in folds]
    out["data_dir"] = cfg.data.data_dir
    out["corpus"] = _corpus_name(cfg.data.data_dir)
    out["modality"] = cfg.model.modality
    out["use_avel"], out["use_mem"] = cfg.model.use_avel, cfg.model.use_mem
    return out


def fold_predictions(cv_dir: Path, folds: list[int], labels: list[str]
                     ) -> dict[int, dict[str, tuple[int, int]]] | None:
    """``{fold: {id: (reference, prediction)}}`` (class indices) from each fold's predictions.csv;
    None when a fold has none (a folder of an older version): no interval then, not a guess."""
    import csv

    index = {name: i for i, name in enumerate(labels)}
    out = {}
    for fold in folds:
        path = Path(cv_dir) / f"fold{fold}" / "predictions.csv"
        if not path.is_file():
            return None
        with open(path, newline="") as fh:
            out[fold] = {row["id"]: (index[row["label"]], index[row["prediction"]])
                         for row in csv.DictReader(fh)}
    return out


def add_intervals(summary: dict, predictions: dict[int, dict[str, tuple[int, int]]] | None) -> None:
    """``summary["ua"]["ci95"]``, ``["wa"]["ci95"]`` and how they were computed (``bootstrap``)."""
    if predictions is None or not all(predictions[f] for f in summary["folds"]):
        summary["bootstrap"] = None  # a fold without predictions (or items): nothing to resample
        return
    ci = bootstrap_cv(_pairs(predictions, summary["folds"]), len(summary["labels"]))
    summary["ua"]["ci95"], summary["wa"]["ci95"] = ci["ua"], ci["wa"]
    summary["bootstrap"] = {"method": BOOTSTRAP_METHOD, "resamples": BOOTSTRAP_RESAMPLES,
                            "seed": BOOTSTRAP_SEED, "level": 0.95}


def _corpus_name(data_dir: str) -> str | None:
    try:
        from foalnet.data.manifest import read_prepare_meta

        return read_prepare_meta(data_dir).get("corpus")
    except Exception:  # the name is informative only; a missing prepare.json fails elsewhere
        return None


def write_cv_outputs(cv_dir: Path, summary: dict, title: str, extra_markdown: str = "") -> None:
    """summary.json, the pooled confusion plot, report.md (+ ``extra_markdown``), rejected.jsonl."""
    cv_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(cv_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    plot_confusion(summary["pooled"]["confusion"], summary["labels"], cv_dir / "confusion.png",
                   f"{title}: pooled over folds {summary['folds']}")
    write_text_atomic(cv_dir / "report.md", report_markdown(summary, title) + extra_markdown)
    write_text_atomic(cv_dir / "rejected.jsonl", collect_rejected(cv_dir, summary["folds"]))


def rejected_rows(cv_dir: Path, folds: list[int]) -> list[dict]:
    """Every fold's rejected.jsonl entries, each tagged with its fold (an item may recur)."""
    rows = []
    for fold in folds:
        path = Path(cv_dir) / f"fold{fold}" / "rejected.jsonl"
        if path.is_file():
            rows += [{"fold": fold, **json.loads(line)}
                     for line in path.read_text().splitlines() if line.strip()]
    return rows


def collect_rejected(cv_dir: Path, folds: list[int]) -> str:
    """Every fold's rejected.jsonl lines, each tagged with its fold (one list per output folder)."""
    return "".join(json.dumps(row) + "\n" for row in rejected_rows(cv_dir, folds))


def rejected_ids(cv_dir: Path) -> set[str]:
    """Distinct item ids in a CV folder's gathered rejected.jsonl (one id per item, not per fold)."""
    path = Path(cv_dir) / "rejected.jsonl"
    if not path.is_file():
        return set()
    return {json.loads(line)["id"] for line in path.read_text().splitlines() if line.strip()}


# model fields train_fold fills in from the data (labels, visual store), not the user's settings
FROM_DATA = ("model.labels", "model.video_dim", "model.visual_encoder", "model.visual_settings")


def flat_config(raw: dict, prefix: str = "") -> dict:
    """``{"train.lr": 3e-3, ...}``: dotted keys, so a difference names the exact field."""
    flat = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            flat.update(flat_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_differences(saved: dict, wanted: dict) -> list[str]:
    """``key: saved -> wanted`` for every setting that differs, except the ``FROM_DATA`` fields."""
    a, b = flat_config(saved), flat_config(wanted)
    keys = sorted(k for k in set(a) | set(b)
                  if not k.startswith(FROM_DATA) and a.get(k, "<unset>") != b.get(k, "<unset>"))
    return [f"{k}: {a.get(k, '<unset>')!r} there, {b.get(k, '<unset>')!r} now" for k in keys]


def check_same_config(run_dir: Path, cfg: ExperimentConfig) -> None:
    """Raise ValueError naming the differing keys when ``run_dir`` holds a run of other settings.

    Resuming or reusing a fold trained with another config would report its numbers under the
    new config's labels; a folder without config.yaml has nothing to mix and passes."""
    from foalnet.train.run import CONFIG_FILE

    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        return
    diffs = config_differences(ExperimentConfig.load_yaml(path).to_dict(), cfg.to_dict())
    if diffs:
        raise UsageError(f"{run_dir} holds a run with other settings ({'; '.join(diffs)}): "
                         "resume only with the same config, or choose a new --out")


def report_markdown(summary: dict, title: str) -> str:
    """Per-fold rows and a mean +- std row, in percent."""
    lines = [f"# {title}", "", f"Data: {summary.get('data_dir')} (corpus {summary.get('corpus')}).",
             f"Protocol: {summary['protocol']}.", "",
             "| fold | UA % | WA % | macro-F1 % | selected epoch |", "|---|---|---|---|---|"]
    for i, fold in enumerate(summary["folds"]):
        cells = [f"{100 * summary[k]['per_fold'][i]:.2f}" for k in METRICS]
        epoch = summary["selected_epochs"][i]  # None: no epochs (the SVM baseline)
        lines.append(f"| {fold} | {' | '.join(cells)} | {'—' if epoch is None else epoch} |")
    cells = [f"{100 * summary[k]['mean']:.2f} ± {100 * summary[k]['std']:.2f}" for k in METRICS]
    lines.append(f"| mean ± std | {' | '.join(cells)} | |")
    if summary.get("bootstrap"):
        cells = [_ci_text(summary[k]["ci95"]) for k in ("ua", "wa")]
        lines.append(f"| 95 % CI of the mean | {' | '.join(cells)} | | |")
    pooled = summary["pooled"]
    if summary.get("bootstrap"):
        b = summary["bootstrap"]
        lines += ["", f"95 % CI: {b['method']} ({b['resamples']} resamples, seed {b['seed']})."]
    lines += ["", f"Pooled over folds: UA {100 * pooled['ua']:.2f} %, WA {100 * pooled['wa']:.2f} %, "
              f"macro-F1 {100 * pooled['macro_f1']:.2f} % (n = {pooled['n']}). "
              f"Items skipped as unreadable: {summary['skipped_items']} distinct "
              f"(per fold: {summary.get('skipped_per_fold')}).", ""]
    return "\n".join(lines)


def seeds_markdown(summary: dict, title: str) -> str:
    """One row per seed (mean +- std over folds), then mean +- std over seeds, in percent."""
    seeds = summary["seeds"]
    lines = [f"# {title}", "", f"Data: {summary.get('data_dir')} (corpus {summary.get('corpus')}).",
             f"Protocol: {summary['protocol']}.",
             f"Seeds: {', '.join(map(str, seeds))} (train.seed: model init, sampler draws and dev "
             f"speakers); each seed a full cross-validation over folds {summary['folds']} in "
             "seed<S>/.", "",
             "| seed | UA % | WA % | macro-F1 % | UA 95 % CI | selected epochs |",
             "|---|---|---|---|---|---|"]
    for row in summary["per_seed"]:
        cells = [f"{100 * row[k]['mean']:.2f} ± {100 * row[k]['std']:.2f}" for k in METRICS]
        ci = _ci_text(row["ua"]["ci95"]) if row["ua"].get("ci95") else "—"
        lines.append(f"| {row['seed']} | {' | '.join(cells)} | {ci} | {row['selected_epochs']} |")
    cells = [f"{100 * summary[k]['mean']:.2f} ± {100 * summary[k]['std']:.2f}" for k in METRICS]
    ci = _ci_text(summary["ua"]["ci95"]) if summary.get("bootstrap") else "—"
    lines += [f"| mean ± std over seeds | {' | '.join(cells)} | {ci} | |", "",
              "Seed rows: mean ± std over folds. Last row: mean over seeds of the CV means ± their "
              "sample std over seeds (how much the number moves with the seed alone)."]
    if summary.get("bootstrap"):
        b = summary["bootstrap"]
        lines.append(f"95 % CI: {b['method']} ({b['resamples']} resamples, seed {b['seed']}).")
    lines += [f"Items skipped as unreadable: {summary['skipped_items']} distinct.", ""]
    return "\n".join(lines)


def _ci_text(interval: list[float]) -> str:
    return f"[{100 * interval[0]:.2f}, {100 * interval[1]:.2f}]"
