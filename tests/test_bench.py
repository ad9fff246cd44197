"""The benchmark entry point runs on the CPU at a tiny size and writes the documented keys; its ratios are medians
of paired, interleaved repetitions."""
import json
import os

import pytest
import torch

from conftest import run_in_process
from date.bench import paired_ratio, timed_interleaved


def test_paired_ratio_median_and_quartiles():
    spread = paired_ratio([2.0, 4.0, 6.0, 8.0, 10.0], [1.0] * 5)
    assert spread == {"median": 6.0, "q1": 4.0, "q3": 8.0, "min": 2.0, "max": 10.0}


def test_paired_ratio_pairs_repetitions():
    # a slow repetition slows both models: paired ratios are 1, 1, 3 (median 1), the ratio of medians would be 3
    spread = paired_ratio([1.0, 10.0, 3.0], [1.0, 10.0, 1.0])
    assert spread["median"] == 1.0 and spread["min"] == 1.0 and spread["max"] == 3.0


def test_paired_ratio_rejects_unpaired():
    with pytest.raises(ValueError, match="equally long"):
        paired_ratio([1.0, 2.0], [1.0])


def test_timed_interleaved_round_robin():
    calls: list[str] = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times, reps = timed_interleaved(fns, torch.device("cpu"), warmup=1, iters=2)
    assert calls == list("abc") * 3  # one warm-up round, then two repetitions, each A B C
    assert {k: len(v) for k, v in times.items()} == {"a": 2, "b": 2, "c": 2} and len(reps) == 2


@pytest.mark.slow
def test_bench_cpu_tiny(tmp_path):
    out = tmp_path / "bench.json"
    proc = run_in_process("date.bench", ["--device", "cpu", "--size", "128", "--batch", "2", "--iters", "2",
                                         "--warmup", "0", "--json", str(out)],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    header = next(line for line in proc.stdout.splitlines() if line.startswith("metric"))
    assert "tv FCOS" in header and "POTO" in header and "DATE/POTO" in header
    assert "train img/s" in proc.stdout and "2 interleaved repetitions after 0 warm-up" in proc.stdout
    result = json.loads(out.read_text())
    for key in ["date_train_img_per_s", "tv_fcos_train_img_per_s", "date_infer_ms_b1", "tv_fcos_infer_ms_b1",
                "poto_infer_ms_b1", "date_infer_ms_b8", "tv_fcos_infer_ms_b8", "poto_infer_ms_b8", "assign_share",
                "infer_vs_poto_ratio_b1", "infer_vs_poto_ratio_b8"]:
        assert result[key] > 0, key
    assert 0 < result["assign_share"] < 1
    assert set(result["repetition_s"]) == {"train", "infer_b1", "infer_b8"}
    assert all(len(v) == 2 for v in result["repetition_s"].values())
    for key, spread in result["ratio_spread"].items():
        assert spread["min"] <= spread["q1"] <= spread["median"] <= spread["q3"] <= spread["max"], key
    assert result["train_speedup"] == result["ratio_spread"]["train_speedup"]["median"]
