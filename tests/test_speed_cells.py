"""The speed report of issue 18 (benchmarks.speed_cells): ground truth B's times read for the enumeration figure,
and every headline figure named with its goal, its ratio to the goal, the machine and the device."""
from __future__ import annotations

import json

import pytest

from benchmarks import speed_cells as sc
from benchmarks.bench_zoo import catalogue
from benchmarks.groundtruth import budget_key, cell_key, distill_budget
from benchmarks.tasks import load_manifest, pool_ids

TASKS = load_manifest()


def _b_cell(task, teacher, sha, seed, seconds, date="2026-12-05T10:00:00Z", budget=None):
    budget = budget_key(distill_budget(seed, budget))
    key = cell_key("distillation", task, sha, budget, seed)
    return key, {"kind": "distillation", "task": task["id"], "teacher": teacher, "teacher_sha256": sha,
                 "seed": seed, "seconds": seconds, "distill_s": seconds - 1, "date_utc": date}


def test_ground_truth_b_times_read_only_b_cells_of_complete_pools():
    cat = catalogue()
    full, partial = TASKS[0], TASKS[1]
    cells = {}
    pool = pool_ids(full, cat)
    for i, t in enumerate(pool):
        for seed, secs in ((0, 10.0 + i), (1, 12.0 + i)):
            cells.update([_b_cell(full, t, f"sha-{t}", seed, secs)])
    t0 = pool[0]
    # Another distillation method's cell (same kind, another budget), and a cell of weights since replaced: neither
    # is B's time for today's teacher.
    cells.update([_b_cell(full, t0, f"sha-{t0}", 2, 999.0, budget={**gtm_b(), "lam": 0.1})])
    cells.update([_b_cell(full, t0, "old-sha", 0, 999.0, date="2026-11-01T00:00:00Z")])
    for t in pool_ids(partial, cat)[1:]:  # one teacher of its pool has no cell
        cells.update([_b_cell(partial, t, f"sha-{t}", 0, 5.0)])

    out = sc.ground_truth_b_times(cells, [full, partial], cat)
    assert [o["task"]["id"] for o in out] == [full["id"]] and out[0]["pool"] == pool
    each = out[0]["distill_each"]
    assert set(each) == set(pool)
    for i, t in enumerate(pool):
        assert each[t]["seconds"] == pytest.approx(11.0 + i) and each[t]["seeds"] == 2
        assert each[t]["distill_s"] == pytest.approx(10.0 + i)


def gtm_b():
    from benchmarks.groundtruth import B_DISTILL

    return dict(B_DISTILL)


@pytest.mark.parametrize("load, cores, quiet", [((0.4, 1.1), 2, True), ((3.8, 4.9), 2, False), ((6.0, 7.0), 16, True)])
def test_machine_note_says_how_loaded_the_machine_was(load, cores, quiet):
    note = sc.machine_note({"cpu_count": cores, "load_average_at_start": [load[0], 0, 0],
                            "load_average_1_5_15": [load[1], 0, 0]})
    assert note.startswith("quiet" if quiet else "shared") and f"{load[1]:.2f}" in note
    assert sc.machine_note(None) == "not measured"


def test_the_report_names_each_figure_with_goal_ratio_machine_and_device(tmp_path, monkeypatch):
    monkeypatch.setattr(sc, "CELLS", tmp_path / "cells")
    monkeypatch.setattr(sc, "RESULTS", tmp_path)
    mach = {"platform": "Linux", "python": "3.11", "cpu_count": 2, "torch": "2", "torch_threads": 1,
            "device": "cpu", "date_utc": "2026-12-06T00:00:00+00:00", "load_average_1_5_15": [1.0, 1.0, 1.0]}
    row = {"teacher": "t", "shots": 10, "student": {"arch": "resnet10t", "size": "micro"}, "batch": 24,
           "images_per_s": {"raw_step": 100.0, "raw_step_plus_teacher_forward": 80.0, "library_steady": 90.0,
                            "library_amortised": 72.0},
           "ratio": 0.9, "ratio_steady": 1.1, "ratio_vs_raw_step_alone": 0.7, "ot_share_of_step": 0.2}
    sc.save_cell("distill", {"rows": [row], "ratio_min": 0.9, "note": "n", "machine": mach,
                             "load_average_at_start": [0.9, 1, 1]})
    sc.save_cell("enumeration_gt", {"rows": [{"task": "x", "teachers": 3, "train_images": 9, "enumeration_s": 600.0,
                                              "rank_all_s": 6.0, "ratio": 100.0}], "enumeration_s": 600.0,
                                    "rank_all_s": 6.0, "ratio": 100.0, "ratio_per_task": {"min": 100, "median": 100},
                                    "gt_dates": ["a", "b"], "note": "from B", "machine": mach})
    sc.save_cell("memory20k", {"n_images": 20000, "teacher": "lite0", "maxrss_growth_mb": 1024.0,
                               "maxrss_before_mb": 500.0, "maxrss_after_mb": 1524.0, "all_inputs_as_float_mb": 11484.0,
                               "one_input_batch_mb": 36.75, "outputs_float32_mb": 174.0, "rank_s": 600.0,
                               "images_per_s": 33.3, "metrics": ["ot", "hscore"], "machine": mach})
    sc.save_cell("first_start", {"first_start_s": 40.0, "healthz_s": 2.0, "teachers_ready_s": 8.0,
                                 "specs_ready_s": 100.0, "machine": mach, "restored_teachers": 12})
    sc.write_report()
    h = json.loads((tmp_path / "speed.json").read_text())
    assert set(h["ratios"]) == {"rank_vs_forward_224px", "distill_step_vs_raw_step", "rank_vs_enumeration"}
    figures = {**h["ratios"], **{k: h[k] for k in ("first_start_s", "peak_rss_growth_mb_20k_224px",
                                                   "shortlist_10000_s")}}
    for name, f in figures.items():
        assert {"value", "goal", "met", "ratio_to_goal", "machine", "machine_note", "device", "cpu_only",
                "gpu"} <= set(f), name
        assert f["cpu_only"] is True and "CPU-only" in f["gpu"]
    d = h["ratios"]["distill_step_vs_raw_step"]
    assert d["value"] == 0.9 and d["met"] is True and d["ratio_to_goal"] == pytest.approx(0.9 / 0.8, abs=1e-3)
    assert d["machine_note"].startswith("quiet") and d["ot_share_of_step_max"] == 0.2
    e = h["ratios"]["rank_vs_enumeration"]
    assert e["value"] == 100.0 and e["met"] is True and e["from_ground_truth_b"] == 100.0 and e["measured"] is None
    assert "ground truth B" in e["source"]
    m = h["peak_rss_growth_mb_20k_224px"]
    assert (m["value"], m["met"], m["ratio_to_goal"], m["teacher"]) == (1024.0, True, 0.5, "lite0")
    f = h["first_start_s"]
    assert (f["value"], f["met"], f["specs_ready_s"], f["restored_teachers"]) == (40.0, True, 100.0, 12)
    assert h["ratios"]["rank_vs_forward_224px"]["value"] is None and h["shortlist_10000_s"]["met"] is None
    md = (tmp_path / "speed.md").read_text()
    assert "| distill_step_vs_raw_step | 0.900 |" in md and "CPU only" in md and "**100×**" in md
