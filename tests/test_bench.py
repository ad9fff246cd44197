"""The benchmark entry point runs on the CPU at a tiny size and writes the documented keys."""
import json
import subprocess
import sys


def test_bench_cpu_tiny(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "date.bench", "--device", "cpu", "--size", "128", "--batch", "2",
                           "--iters", "1", "--warmup", "0", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "train img/s" in proc.stdout and "tv FCOS" in proc.stdout
    result = json.loads(out.read_text())
    for key in ["date_train_img_per_s", "tv_fcos_train_img_per_s", "date_infer_ms_b1", "tv_fcos_infer_ms_b1",
                "date_infer_ms_b8", "tv_fcos_infer_ms_b8", "assign_share"]:
        assert result[key] > 0, key
    assert 0 < result["assign_share"] < 1
