"""The benchmark scripts' arithmetic (the measurements themselves run from the README, not here)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str):
    """benchmarks/<name>.py as the module bench_<name> (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def train_step():
    return load_script("train_step")


def test_epoch_cost_is_batches_times_step_for_a_flat_grid(train_step):
    est = train_step.epoch_estimate({"ours": {1.0: 2.0, 6.0: 2.0}}, orig_step=4.0, n_items=160, batch_size=16, seed=0)
    assert est["batches"] == 10
    assert est["ours_random_s"] == pytest.approx(20.0) and est["ours_grouped_s"] == pytest.approx(20.0)
    assert est["original_s"] == pytest.approx(40.0)


def test_epoch_cost_follows_padded_length_and_grouping_pads_less(train_step):
    # step time = padded length in seconds: the epoch costs the sum of the batches' longest items
    est = train_step.epoch_estimate({"ours": {0.0: 0.0, 6.0: 6.0}}, orig_step=6.0, n_items=800, batch_size=16, seed=1)
    assert est["ours_random_s"] == pytest.approx(est["mean_padded_s_random"] * est["batches"])
    assert est["ours_grouped_s"] == pytest.approx(est["mean_padded_s_grouped"] * est["batches"])
    assert est["mean_padded_s_grouped"] < est["mean_padded_s_random"] <= 6.0


def test_table_reports_ratios_against_the_original(train_step):
    def row(impl, cpu, peak):
        return {"impl": impl, "layers": 2, "lengths": "mix", "seconds": None, "step_cpu_s_median": cpu,
                "step_s_median": cpu, "peak_rss_gib": peak}

    text = train_step.table([row("original", 30.0, 6.0), row("cached", 10.0, 3.0)])
    cached = [line for line in text.splitlines() if "audio cache (default)" in line]
    assert cached and "| 3.00x | - |" in cached[0] and cached[0].endswith("| 0.50 |")
    text = train_step.table([row("original", 30.0, 6.0), row("original-keep", 20.0, 6.0), row("cached", 10.0, 3.0)])
    cached = [line for line in text.splitlines() if "audio cache (default)" in line]
    assert "| 3.00x | 2.00x |" in cached[0]


def test_epoch_lines_compare_with_the_original_and_its_allocator_variant(train_step):
    est = train_step.epoch_estimate({"cached": {0.0: 0.0, 6.0: 6.0}}, orig_step=24.0, n_items=800, batch_size=16,
                                    seed=1, orig_keep_step=12.0)
    assert est["original_keep_s"] == pytest.approx(est["original_s"] / 2)
    ratio = est["original_s"] / est["cached_grouped_s"]
    line = [x for x in train_step.epoch_lines(est, None).splitlines() if "length-grouped" in x][0]
    assert f"({ratio:.2f}x; {ratio / 2:.2f}x vs original + allocator)" in line


def test_runs_combine_into_medians_of_steps_and_peaks(train_step):
    def run(cpu_steps, peak):
        return {"impl": "original", "layers": 2, "lengths": "mix", "seconds": None, "batch_size": 16, "threads": 1,
                "step_cpu_s_all": cpu_steps, "step_cpu_s_median": sorted(cpu_steps)[len(cpu_steps) // 2],
                "step_s_all": cpu_steps, "step_s_median": 0.0, "peak_rss_gib": peak, "ru_maxrss_gib": peak}

    one = run([3.0, 1.0], 5.0)
    assert train_step.combine_runs([one]) is one
    row = train_step.combine_runs([run([1.0, 2.0], 5.4), run([3.0, 10.0], 4.7), run([4.0, 5.0], 4.8)])
    assert row["step_cpu_s_median"] == pytest.approx(3.5)  # median of the six steps
    assert row["peak_rss_gib"] == pytest.approx(4.8) and row["peak_rss_gib_runs"] == [5.4, 4.7, 4.8]
    assert row["runs"] == 3


def test_log_keeps_every_run_and_old_records_are_run_zero(train_step, tmp_path):
    import json

    base = {"impl": "cached", "layers": 2, "lengths": "mix", "seconds": None, "batch_size": 16, "threads": 1,
            "step_cpu_s_median": 1.0}
    log = tmp_path / "log.jsonl"
    records = [base, dict(base, run=1, step_cpu_s_median=2.0), dict(base, run=0, step_cpu_s_median=3.0),
               {"impl": "cached", "wall_only": True}]
    log.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    done = train_step.load_log(log)
    runs = done[train_step.config_key(base)]
    assert {k: r["step_cpu_s_median"] for k, r in runs.items()} == {0: 3.0, 1: 2.0}  # the last run 0 wins
    assert len(done) == 1  # the record without step times is not comparable


def test_remeasure_reuses_only_the_other_implementations(train_step, tmp_path):
    import json

    base = {"layers": 2, "lengths": "mix", "seconds": None, "batch_size": 16, "threads": 1, "step_cpu_s_median": 1.0}
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps(dict(base, impl=impl)) + "\n" for impl in ("original", "cached", "cached-ckpt")))
    args = train_step.parse_args(["--remeasure", "cached", "cached-ckpt"])
    assert {key[0] for key in train_step.Session(args, log).done} == {"original"}
    assert {key[0] for key in train_step.Session(train_step.parse_args([]), log).done} == {"original", "cached", "cached-ckpt"}


# ------------------------------------------------------------------------------ original_style, gpu_check
def test_original_style_imports_nothing_of_foalnet():
    """The baseline must not share foalnet's code (a change to foalnet must not move its rows)."""
    import ast
    import subprocess

    path = ROOT / "benchmarks" / "original_style.py"
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        assert not any(n.split(".")[0] == "foalnet" for n in names), names
    code = ("import importlib.util, sys; spec = importlib.util.spec_from_file_location('o', sys.argv[1]); "
            "m = importlib.util.module_from_spec(spec); sys.modules['o'] = m; spec.loader.exec_module(m); "
            "print(sorted(k for k in sys.modules if k.split('.')[0] == 'foalnet'))")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.fixture(scope="module")
def gpu_check(train_step):
    return load_script("gpu_check")


def test_gpu_check_without_cuda_says_so_in_one_line_and_exits_0(gpu_check):
    import os
    import subprocess

    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")  # no GPU, even on a machine that has one
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py")], capture_output=True,
                          text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [gpu_check.NO_CUDA_LINE]


def test_gpu_check_tiny_runs_every_path_on_cpu(gpu_check, tmp_path):
    import json

    out = tmp_path / "gpu_check.json"
    assert gpu_check.main(["--device", "cpu", "--tiny", "--out", str(out)]) == 0
    payload = json.loads(out.read_text())
    rows = {(r["impl"], r["precision"]): r for r in payload["train"]}
    assert set(rows) == {(i, p) for i in ("foalnet", "original") for p in ("fp16", "bf16")}
    for r in rows.values():
        assert r["step_s_median"] > 0 and r["losses_finite"] and r["peak_gib"] is None  # no CUDA stats on CPU
    diffs = {r["precision"]: r for r in payload["packed_vs_transformers"]}
    assert diffs["fp32"]["max_abs_diff_packed_vs_transformers"] < 1e-4  # same weights, same function
    assert all(r["finite"] for r in diffs.values())
    assert [r["precision"] for r in payload["clip"]] == ["fp32", "fp16"]
    assert all(r["images_per_s"] > 0 and r["embed_dim"] == 768 for r in payload["clip"])
    compiled = payload["compile"]
    assert compiled["works"], compiled.get("error")
    assert compiled["compiled_step_s"] > 0 and compiled["speedup"] > 0
