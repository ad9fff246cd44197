"""DDP on the CPU: two gloo processes started by torchrun train one run, rank 0 alone logs to MLflow and saves."""
import pytest
from mlflow.tracking import MlflowClient

from conftest import SMOKE, run_module
from date.runtime import checkpoint as ckpt


@pytest.mark.slow
def test_two_process_cpu_run(tmp_path, train_env):
    smoke = [a for a in SMOKE if not a.startswith("batch_size=")]
    args = ["--standalone", "--nproc_per_node=2", "-m", "date.train", *smoke, "batch_size=2",
            f"hydra.run.dir={tmp_path / 'run'}"]
    result = run_module("torch.distributed.run", args, env=train_env, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    log = (tmp_path / "run" / "train.log").read_text()
    assert "4 images per step" in log and log.count("Evaluation after epoch 2") == 1
    assert "Weights identical on all 2 ranks" in log  # DDP kept the replicas in sync
    assert "DDP: rank 1 of world size 2" in (tmp_path / "run" / "train_rank1.log").read_text()  # its own log
    assert "val/AP" in ckpt.load(tmp_path / "run" / ckpt.FINAL)["metrics"]
    client = MlflowClient(train_env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("date").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "val/AP")] == [1, 2]
