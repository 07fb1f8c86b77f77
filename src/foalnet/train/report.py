"""``foalnet report DIR``: one self-contained HTML file for a run, CV, seeds or ablation folder.

The file is what a researcher sends or archives: it opens offline (CSS inline, learning curves
embedded as base64 PNG, confusion matrices as shaded HTML tables, no script, no link out) and
says in words how the numbers were obtained (epoch selection, data, seeds, intervals) before
giving them. Everything is read from the folder's own outputs (summary.json, config.yaml,
metrics.csv, predictions.csv, the manifest for speakers); nothing is recomputed but per-speaker
scores, which come from the saved predictions.

Folder kinds (``folder_kind``): ``run`` (train_fold: summary.json with "test"), ``cv``
(run_cv: summary.json with "folds", fold<K>/), ``seeds`` (run_seeds: summary.json with
"seeds", seed<S>/fold<K>/), ``ablation`` (run_ablation: ablation.json, <row>/...).
"""
from __future__ import annotations

import base64
import csv
import html
import json
import re
import time
from pathlib import Path

from foalnet.data.files import write_text_atomic
from foalnet.errors import UsageError

REPORT_FILE = "report.html"
METRIC_NAMES = (("ua", "UA"), ("wa", "WA"), ("macro_f1", "macro-F1"))


# ----------------------------------------------------------------------------- reading a folder


def _json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def folder_kind(folder: Path) -> str:
    """Which output folder this is; ValueError (exit 2) for anything else."""
    folder = Path(folder)
    if (folder / "ablation.json").is_file():
        return "ablation"
    path = folder / "summary.json"
    if not path.is_file():
        raise UsageError(f"{folder}: no summary.json or ablation.json: not a complete run, cv, "
                         "seeds or ablation folder (run foalnet train/cv/ablate first)")
    summary = _json(path)
    if "seeds" in summary:
        return "seeds"
    if "test" in summary:
        return "run"
    if "folds" in summary:
        return "cv"
    raise UsageError(f"{path}: not a summary written by foalnet train, cv or ablate")


def run_config(run_dir: Path) -> dict:
    """The config.yaml of one run as saved ({} when absent), read raw: loading it through
    ExperimentConfig would fill fields the run's version did not have with today's defaults,
    and the report would then describe a protocol the run never used."""
    import yaml

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return {}
    return yaml.safe_load(path.read_text()) or {}


def speakers_of(data_dir: str | None) -> dict[str, str]:
    """``{utterance id: speaker}`` from the manifest; {} when the data folder is gone."""
    try:
        from foalnet.data.manifest import read_manifest

        return {r["id"]: str(r.get("speaker")) for r in read_manifest(data_dir)}
    except Exception:  # the report still renders; the section says why it is missing
        return {}


def read_predictions(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "predictions.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def speaker_rows(run_dirs: list[tuple[str, Path]], labels: list[str],
                 speakers: dict[str, str]) -> list[dict]:
    """Test UA/WA per speaker from each run's predictions.csv (``run_dirs``: (fold, dir))."""
    from foalnet.train.metrics import classification_metrics

    index = {name: i for i, name in enumerate(labels)}
    rows = []
    for fold, run_dir in run_dirs:
        by_speaker: dict[str, tuple[list[int], list[int]]] = {}
        for p in read_predictions(run_dir):
            truth, pred = by_speaker.setdefault(speakers.get(p["id"], "?"), ([], []))
            truth.append(index[p["label"]])
            pred.append(index[p["prediction"]])
        for speaker, (truth, pred) in sorted(by_speaker.items()):
            m = classification_metrics(truth, pred, len(labels))
            rows.append({"fold": fold, "speaker": speaker, "n": m["n"], "ua": m["ua"], "wa": m["wa"]})
    return rows


def curves_png(run_dir: Path, summary: dict) -> bytes | None:
    """The run's learning_curves.png, or one drawn from metrics.csv for a run that predates it."""
    from foalnet.train.figures import CURVES_FILE, learning_curves_png, read_history

    path = Path(run_dir) / CURVES_FILE
    if path.is_file():
        return path.read_bytes()
    history = read_history(run_dir)
    if not history:
        return None
    return learning_curves_png(history, summary.get("selected_epoch"),
                               summary.get("selected_on", "dev"), title=Path(run_dir).name,
                               select_metric=summary.get("select_metric") or "ua")


# ----------------------------------------------------------------------------- HTML pieces


def esc(value: object) -> str:
    return html.escape(str(value))


def pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def mean_std(metric: dict) -> str:
    return f"{pct(metric['mean'])} ± {pct(metric['std'])}"


def ci(interval: list[float] | None) -> str:
    return "—" if not interval else f"[{pct(interval[0])}, {pct(interval[1])}]"


def table(header: list[str], rows: list[list[str]], css: str = "") -> str:
    """An HTML table; cells are already-escaped HTML."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def confusion_table(confusion: list[list[int]], labels: list[str], caption: str) -> str:
    """Counts with the row share, each cell shaded by its share of the reference class."""
    cells = []
    for name, row in zip(labels, confusion):
        total = sum(row)
        tds = []
        for count in row:
            share = count / total if total else 0.0
            colour = "#fff" if share > 0.55 else "#111"
            tds.append(f'<td class="cm" style="background:rgba(31,119,180,{share:.3f});'
                       f'color:{colour}">{count}<br><small>{100 * share:.0f} %</small></td>')
        cells.append(f"<tr><th>{esc(name)}</th>{''.join(tds)}<td class='n'>{total}</td></tr>")
    head = "".join(f"<th>{esc(n)}</th>" for n in labels)
    return (f'<figure class="cmwrap"><table class="confusion"><thead><tr><th>ref \\ pred</th>'
            f'{head}<th>n</th></tr></thead><tbody>{"".join(cells)}</tbody></table>'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def image(png: bytes | None, caption: str) -> str:
    if png is None:
        return f'<p class="note">{esc(caption)}: no metrics.csv, no learning curve.</p>'
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure class="curve"><img alt="{esc(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def _dev_speakers(protocol: str) -> str:
    found = re.search(r"held-out speakers ([^)]*)\)", protocol or "")
    return found.group(1) if found else "—"


# ----------------------------------------------------------------------------- protocol in words


def protocol_words(cfg: dict, summary: dict, seeds: list[int] | None = None) -> str:
    """How the numbers were obtained, in sentences: selection, data, seeds, intervals."""
    from foalnet.train.ablate import corpus_of

    train, data, model = cfg.get("train", {}), cfg.get("data", {}), cfg.get("model", {})
    metric = {"ua": "UA", "wa": "WA", "macro_f1": "macro-F1", "loss": "loss (lowest)"}.get(
        str(train.get("select_metric")), str(train.get("select_metric")))
    if data.get("select_on_test"):
        selection = (f"<b>Paper protocol (optimistic):</b> each model was trained for "
                     f"{train.get('epochs')} epochs and the epoch with the best {metric} on the "
                     "<b>test</b> fold was kept, so the test numbers are optimistic.")
    elif data.get("dev_speakers") == 0:
        selection = (f"Each model was trained for {train.get('epochs')} epochs on every speaker of "
                     "the training folds (no dev split: data.dev_speakers = 0), and the weights after "
                     "the last epoch were kept; the test fold was read once, after training "
                     "(leave-one-fold-out).")
    else:
        count = data.get("dev_speakers")
        speakers = ("held-out speakers of the training folds (as many as the dev split needs: "
                    "data.dev_speakers = auto)" if count == "auto"
                    else f"{count} held-out speaker(s) of the training folds")
        window = int(train.get("select_window") or 1)  # absent: a run made before selection windows existed
        smoothed = f" (trailing mean over {window} epochs)" if window > 1 else ""
        selection = (f"Each model was trained for {train.get('epochs')} epochs. After every epoch "
                     f"it was scored on a dev split of {speakers}, and the weights of the epoch "
                     f"with the best dev {metric}{smoothed} were kept; the test fold was read "
                     "once, after training, with those weights (leave-one-fold-out; the dev "
                     "speakers of each fold are in its table row).")
    members = int(train.get("ensemble") or 1)  # absent: a run made before ensembles existed
    if members > 1:
        own = "" if data.get("dev_speakers") == 0 else "; each its own dev speakers and selected epoch"
        selection += (f" Each fold is an <b>ensemble of {members} such models</b>, trained with seeds "
                      f"train.seed + 1000 k (k = 0..{members - 1}{own}); the fold is scored by the "
                      "mean of their class probabilities.")
    corpus = corpus_of(summary)
    counts = _prepare_counts(summary.get("data_dir"))
    data_text = (f"Data: <code>{esc(summary.get('data_dir'))}</code>, {esc(corpus['name'])}"
                 f"{counts}; folds {esc(summary.get('folds', [summary.get('fold')]))}; modality "
                 f"{esc(model.get('modality'))} (AVEL {'on' if model.get('use_avel') else 'off'}, "
                 f"MEM {'on' if model.get('use_mem') else 'off'}); audio encoder "
                 f"{esc(model.get('audio_encoder'))}, visual features {esc(model.get('visual_encoder'))}.")
    if seeds:
        seed_text = (f"Seeds: {esc(', '.join(map(str, seeds)))} (train.seed sets the model "
                     "initialisation, the sampler's draws and the dev speakers); each seed is a full "
                     "cross-validation, and ± in the summary rows is the sample standard deviation "
                     "over seeds of the CV means.")
    else:
        seed_text = (f"One seed: train.seed = {esc(train.get('seed'))} (model initialisation, "
                     "sampler draws, dev speakers); ± is the sample standard deviation over folds.")
    recipe = (f"Recipe: AdamW lr {esc(train.get('lr'))}, batch {esc(train.get('batch_size'))}, "
              f"{esc(train.get('schedule'))} schedule, class-balanced sampling "
              f"{'on' if train.get('balanced_sampling') else 'off'}.")
    boot = summary.get("bootstrap")
    interval = (f"Intervals: 95 % {esc(boot['method'])} ({boot['resamples']} resamples, bootstrap "
                f"seed {boot['seed']})." if boot else "Intervals: none (no saved predictions).")
    return "".join(f"<p>{p}</p>" for p in (selection, data_text, seed_text, recipe, interval))


def _prepare_counts(data_dir: str | None) -> str:
    try:
        from foalnet.data.manifest import read_prepare_meta

        counts = read_prepare_meta(data_dir)["counts"]
    except Exception:
        return ""
    labels = ", ".join(f"{esc(k)} {v}" for k, v in counts.get("labels", {}).items())
    return f" ({counts.get('total')} utterances: {labels})"


# ----------------------------------------------------------------------------- sections


def run_section(run_dir: Path, summary: dict, name: str) -> str:
    """One run: its test scores, confusion matrix and learning curve."""
    test = summary["test"]
    rows = [[esc(name), str(test["n"]), pct(test["ua"]), pct(test["wa"]), pct(test["macro_f1"]),
             f"{esc(summary.get('selected_epoch'))} / {esc(summary.get('epochs_run'))}",
             esc(_dev_speakers(summary.get("protocol", "")))]]
    head = ["run", "test n", "UA %", "WA %", "macro-F1 %", "selected / epochs run", "dev speakers"]
    return (table(head, rows) + '<div class="row">'
            + confusion_table(test["confusion"], summary["labels"], f"{name}: test fold {summary.get('fold')}")
            + image(curves_png(run_dir, summary), f"{name}: learning curves") + "</div>")


def cv_section(cv_dir: Path, summary: dict, name: str) -> str:
    """Per-fold rows, the mean ± std and CI rows, per-speaker rows, pooled confusion, curves."""
    folds, labels = summary["folds"], summary["labels"]
    fold_sums = {f: _json(cv_dir / f"fold{f}" / "summary.json") for f in folds}
    rows = []
    for i, fold in enumerate(folds):
        s = fold_sums[fold]
        epoch = s.get("selected_epoch")  # none for the SVM baseline: it has no epochs
        rows.append([str(fold), str(s["test"]["n"]), *[pct(summary[k]["per_fold"][i]) for k, _ in METRIC_NAMES],
                     "—" if epoch is None else esc(epoch), esc(_dev_speakers(s.get("protocol", "")))])
    rows.append(["<b>mean ± std</b>", str(summary["pooled"]["n"]),
                 *[mean_std(summary[k]) for k, _ in METRIC_NAMES], "", ""])
    rows.append(["<b>95 % CI of the mean</b>", "", ci(summary["ua"].get("ci95")),
                 ci(summary["wa"].get("ci95")), "", "", ""])
    head = ["fold", "test n", "UA %", "WA %", "macro-F1 %", "selected epoch", "dev speakers"]
    parts = [f"<h3>{esc(name)}: per fold</h3>", table(head, rows, "num")]
    speakers = speakers_of(summary.get("data_dir"))
    if speakers:
        sp = speaker_rows([(str(f), cv_dir / f"fold{f}") for f in folds], labels, speakers)
        by_speaker = ("<div><h3>per test speaker</h3>" + table(
            ["fold", "speaker", "n", "UA %", "WA %"],
            [[r["fold"], esc(r["speaker"]), str(r["n"]), pct(r["ua"]), pct(r["wa"])] for r in sp],
            "num") + "</div>")
    else:
        by_speaker = ('<p class="note">Per-speaker rows: the manifest of the data folder could '
                      "not be read.</p>")
    pooled = summary["pooled"]
    parts.append('<div class="row">' + by_speaker + "<div><h3>confusion matrix</h3>"
                 + confusion_table(pooled["confusion"], labels,
                                   f"{name}: pooled over folds {folds} (UA {pct(pooled['ua'])} %)")
                 + "</div></div>")
    parts.append(f"<details><summary>{esc(name)}: confusion matrix of each fold</summary>"
                 '<div class="row">' + "".join(
                     confusion_table(fold_sums[f]["test"]["confusion"], labels,
                                     f"fold {f} (UA {pct(fold_sums[f]['test']['ua'])} %)")
                     for f in folds) + "</div></details>")
    parts.append(f"<h3>{esc(name)}: learning curves</h3><div class='grid'>" + "".join(
        image(curves_png(cv_dir / f"fold{f}", fold_sums[f]), f"fold {f}") for f in folds) + "</div>")
    return "".join(parts)


def seeds_table(summary: dict) -> str:
    rows = [[str(r["seed"]), *[mean_std(r[k]) for k, _ in METRIC_NAMES], ci(r["ua"].get("ci95")),
             esc(r.get("selected_epochs"))] for r in summary["per_seed"]]
    rows.append(["<b>mean ± std over seeds</b>", *[mean_std(summary[k]) for k, _ in METRIC_NAMES],
                 ci(summary["ua"].get("ci95")), ""])
    head = ["seed", "UA %", "WA %", "macro-F1 %", "UA 95 % CI", "selected epochs"]
    return (table(head, rows, "num") + '<p class="note">Seed rows: mean ± std over folds. Last '
            "row: mean over seeds of the CV means ± their sample std over seeds; its interval "
            "resamples test utterances with every (seed, fold) as a stratum.</p>")


def seeds_section(out_dir: Path, summary: dict, name: str) -> str:
    parts = [f"<h3>{esc(name)}: per seed</h3>", seeds_table(summary)]
    for seed in summary["seeds"]:
        seed_dir = out_dir / f"seed{seed}"
        parts.append(f"<details{' open' if seed == summary['seeds'][0] else ''}><summary>"
                     f"{esc(name)}, seed {seed}: folds, speakers, confusion, curves</summary>"
                     + cv_section(seed_dir, _json(seed_dir / "summary.json"), f"seed {seed}")
                     + "</details>")
    return "".join(parts)


def ablation_table(results: dict[str, dict]) -> str:
    """Our rows beside the paper's Table 2, the paper columns marked when corpora differ."""
    from foalnet.train.ablate import ROWS, paper_header

    paper, warning = paper_header(next(iter(results.values())))
    rows = []
    for row, s in results.items():
        vs = s.get("vs_full")
        diff = ("—" if not vs else f"{100 * vs['ua_diff']:+.2f}<br><small>"
                f"[{100 * vs['interval'][0]:+.2f}, {100 * vs['interval'][1]:+.2f}]</small>")
        ours = [f"{mean_std(s[k])}<br><small>{ci(s[k].get('ci95'))}</small>" for k in ("ua", "wa")]
        theirs = [f"{v:.2f}" for v in ROWS[row][3:5]] if row in ROWS else ["—", "—"]
        rows.append([esc(row), *ours, diff, *[f'<span class="paper">{t}</span>' for t in theirs]])
    head = ["row", "UA % (ours)<br><small>[95 % CI]</small>", "WA % (ours)<br><small>[95 % CI]</small>",
            "UA − full, pp<br><small>[95 % CI]</small>", f"UA % ({esc(paper)})",
            f"WA % ({esc(paper)})"]
    note = (f'<p class="warning">{esc(warning.replace("**", ""))}</p>' if warning else "")
    return note + table(head, rows, "num ablation")


# ----------------------------------------------------------------------------- the document


STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1b1b1b;
margin:0 auto;max-width:1120px;padding:20px 28px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;border-bottom:2px solid #ddd;padding-bottom:3px;
margin-top:28px}h3{font-size:15px;margin:18px 0 6px}
.meta{color:#666;font-size:12px}.note{color:#555;font-size:12px}
.warning{background:#fff3cd;border:1px solid #e0b84c;padding:8px 12px;border-radius:4px}
table{border-collapse:collapse;margin:6px 0 10px;font-size:13px}
th,td{border:1px solid #d0d0d0;padding:4px 8px;text-align:left;vertical-align:middle}
table.num td{white-space:nowrap}small{color:#555}td.cm small{color:inherit;opacity:.85}
thead th{background:#f2f4f7}table.num td{text-align:right}table.num td:first-child{text-align:left}
tbody tr:last-child td{border-bottom:2px solid #bbb}
.paper{color:#7a4b00}td.cm{text-align:center;min-width:44px}td.n{color:#666;text-align:right}
.row{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:10px}
figure{margin:4px 0}figcaption{font-size:12px;color:#555}img{max-width:100%;height:auto}
details{margin:8px 0;border:1px solid #e3e3e3;border-radius:4px;padding:4px 10px}
summary{cursor:pointer;font-weight:600}code{font-size:12px}
"""


def render(folder: Path) -> str:
    """The whole HTML document for ``folder`` (see ``folder_kind``)."""
    folder = Path(folder)
    kind = folder_kind(folder)
    if kind == "ablation":
        results = _json(folder / "ablation.json")
        first_row = next(iter(results))
        summary = results[first_row]
        cfg = run_config(_first_run(folder / first_row, summary))
        title = "Ablation (paper Table 2 rows)"
        body = ["<h2>Results</h2>", ablation_table(results),
                '<p class="note">Ours: mean ± std over ' + ("seeds of the CV means" if summary.get("seeds")
                else "folds") + "; UA − full: paired bootstrap over the same test utterances. "
                "Paper: IEMOCAP, WavLM-Large + CLIP ViT-L/14, best epoch selected on the test "
                "session (Li et al., Interspeech 2024, Table 2).</p>"]
        for row, s in results.items():
            section = row_section(folder / row, s, row)
            body.append(f"<details{' open' if row == first_row else ''}><summary>row {esc(row)}"
                        f"</summary>{section}</details>")
    else:
        summary = _json(folder / "summary.json")
        cfg = run_config(_first_run(folder, summary) if kind != "run" else folder)
        title = {"run": "Training run", "cv": "Cross-validation",
                 "seeds": "Cross-validation over seeds"}[kind]
        section = {"run": lambda: run_section(folder, summary, folder.name),
                   "cv": lambda: cv_section(folder, summary, folder.name),
                   "seeds": lambda: seeds_section(folder, summary, folder.name)}[kind]()
        body = ["<h2>Results</h2>", section]
    protocol = protocol_words(cfg, summary, summary.get("seeds"))
    git = (cfg.get("_run") or {}).get("git") or "unknown"
    stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime())
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}: '
            f"{esc(folder.name)}</title><style>{STYLE}</style></head><body>"
            f"<h1>{esc(title)}</h1><p class='meta'>{esc(folder.resolve())} · report generated "
            f"{stamp} · foalnet {esc(_version())} · runs trained at git {esc(git)}</p><h2>Protocol</h2>{protocol}"
            + "".join(body) + "</body></html>\n")


def row_section(row_dir: Path, summary: dict, row: str) -> str:
    """One ablation row's details; a row whose folder lost its per-fold files is named, and the
    rest of the report still renders (the results table above comes from ablation.json)."""
    try:
        return (seeds_section if summary.get("seeds") else cv_section)(row_dir, summary, row)
    except (OSError, KeyError, ValueError) as err:
        return f'<p class="warning">row {esc(row)}: per-fold outputs unreadable in {esc(row_dir)} ({esc(err)}).</p>'


def _first_run(folder: Path, summary: dict) -> Path:
    """A run folder of a cv / seeds folder (its config.yaml describes them all but the fold)."""
    folder = Path(folder)
    if summary.get("seeds"):
        folder = folder / f"seed{summary['seeds'][0]}"
    return folder / f"fold{summary['folds'][0]}"


def _version() -> str:
    import importlib.metadata as md

    try:
        return md.version("foalnet")
    except md.PackageNotFoundError:
        return "unknown"


def write_report(folder: Path, out: Path | None = None) -> Path:
    """Render ``folder`` and write the HTML (default ``folder/report.html``); return its path."""
    out = Path(out) if out else Path(folder) / REPORT_FILE
    write_text_atomic(out, render(Path(folder)))
    return out
