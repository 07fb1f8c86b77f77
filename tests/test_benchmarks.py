"""The benchmark scripts' arithmetic (the measurements themselves run from the README, not here)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def train_step():
    spec = importlib.util.spec_from_file_location("bench_train_step", ROOT / "benchmarks" / "train_step.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


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
