"""Score ensembles made after the fact from the members of finished ``foalnet cv`` runs.

Each ``train.ensemble`` fold folder keeps its members' own predictions.csv (train/ensemble.py),
so an ensemble of 10 is the mean of two ensemble-of-5 runs' member probabilities, and an ensemble
of mixed front ends is the mean over runs of different settings, without training anything:

    python benchmarks/pooled_ensembles.py /tmp/r7/egc:1234+/tmp/r7/egc:1 /tmp/r7/egc:1234+/tmp/r7/eg:1234

Each argument is one ensemble: ``CV_DIR:SEED`` terms joined by ``+`` (CV_DIR/seedSEED/foldK of a
``cv --seeds`` run; ``CV_DIR:`` alone for a run without --seeds, CV_DIR/foldK). Printed: the
members per fold and the UA pooled over the test clips of the folds every term has (the number
docs/benchmarks.md reports for a cv). Results also go to --out as JSON.
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np


def fold_dirs(term: str) -> dict[int, Path]:
    """``{fold: folder}`` of one ``CV_DIR:SEED`` term."""
    cv_dir, _, seed = term.rpartition(":")
    if not cv_dir:
        raise SystemExit(f"{term!r}: expected CV_DIR:SEED (or CV_DIR: without --seeds)")
    root = Path(cv_dir) / f"seed{seed}" if seed else Path(cv_dir)
    folds = {int(d.name[4:]): d for d in root.glob("fold*") if d.name[4:].isdigit()}
    if not folds:
        raise SystemExit(f"{root}: no fold folders")
    return folds


def member_tables(fold_dir: Path) -> tuple[list[str], list[dict[str, tuple[str, np.ndarray]]]]:
    """The class names in logit order (the p_<class> columns) and each member's ``{id: (label,
    probabilities)}``; a fold that is a single run is its own one member."""
    paths = sorted(fold_dir.glob("member*/predictions.csv")) or [fold_dir / "predictions.csv"]
    names, tables = None, []
    for path in paths:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        columns = [c for c in rows[0] if c.startswith("p_")]
        if names not in (None, [c[2:] for c in columns]):
            raise SystemExit(f"{path}: classes {columns} differ from the other members'")
        names = [c[2:] for c in columns]
        tables.append({r["id"]: (r["label"], np.array([float(r[c]) for c in columns])) for r in rows})
    return names, tables


def pooled_ua(ensemble: str) -> dict:
    """UA of the members' mean probabilities, pooled over the folds every term has."""
    terms = [fold_dirs(t) for t in ensemble.split("+")]
    folds = sorted(set.intersection(*(set(t) for t in terms)))
    references, predictions, members = [], [], []
    for fold in folds:
        read = [member_tables(t[fold]) for t in terms]
        names = read[0][0]
        if any(n != names for n, _ in read):
            raise SystemExit(f"{ensemble}: fold {fold} terms have other classes")
        tables = [table for _, term_tables in read for table in term_tables]
        ids = sorted(tables[0])
        if any(sorted(table) != ids for table in tables):
            raise SystemExit(f"{ensemble}: fold {fold} members score other test clips")
        mean = np.mean([[table[i][1] for i in ids] for table in tables], axis=0)
        references += [tables[0][i][0] for i in ids]
        predictions += [names[k] for k in mean.argmax(axis=1)]
        members.append(len(tables))
    refs, preds = np.array(references), np.array(predictions)
    recalls = [float(np.mean(preds[refs == c] == c)) for c in sorted(set(references))]
    return {"ensemble": ensemble, "folds": folds, "members_per_fold": members,
            "clips": len(references), "ua": float(np.mean(recalls))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ensembles", nargs="+", help="CV_DIR:SEED[+CV_DIR:SEED...] per ensemble")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/pooled_ensembles.json"))
    args = parser.parse_args()
    results = [pooled_ua(e) for e in args.ensembles]
    for r in results:
        print(f"{r['ua']:.3f}  {'/'.join(map(str, r['members_per_fold']))} members, "
              f"{r['clips']} clips, folds {r['folds']}  {r['ensemble']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
