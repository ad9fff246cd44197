"""`python -m date.train` as a user runs it: bad input, an unreachable tracking server, a sweep."""
import json

import pytest
from mlflow.tracking import MlflowClient

from conftest import SMOKE, free_port, run_in_process, run_module
from date.runtime.logs import metrics_table


@pytest.mark.parametrize("args,expected", [
    (["assigner=nope"], ["assigner=nope: the assigner group has no option 'nope'; its options are dual, dual_topk, "
                         "o2m, o2o (conf/assigner/)"]),
    (["assigner=dula"], ["Did you mean assigner=dual?"]),
    (["schedule.epochs=-1"], ["schedule.epochs=-1", ">= 1"]),
    (["schedule.epoch=3"], ["Unknown config key for date.train: schedule.epoch (did you mean schedule.epochs?)"]),
    (["+optim.lrr=0.1"], ["Unknown config key for date.train: optim.lrr (did you mean optim.lr?)"]),
    (["optim.lrr=0.1"], ["Unknown config key for date.train: optim.lrr (did you mean optim.lr?)"]),
    (["lr=0.1"], ["lr (did you mean optim.lr?)"]),
    (["+optim.lr=0.1"], ["+optim.lr: optim.lr exists already, and '+' adds a new key. Set it without the '+'"]),
    (["batch_size=abc"], ["batch_size=abc: Value 'abc' of type 'str' could not be converted to Integer"]),
    (["assigner.mode=foo"], ["assigner.mode=foo: Invalid value 'foo', expected one of [o2m, o2o, dual]"]),
    (["dataset=coco", "dataset.root=/nonexistent/coco"], ["dataset.root=/nonexistent/coco", "COCO 2017"]),
    (["dataset=coco"], ["dataset=coco needs dataset.root, which is not set"]),
    (["device=cuda:7"], ["device=cuda:7: this process sees"]),
    (["batch_size=1000"], ["batch_size=1000: the training split has 224 images, fewer than one step needs"]),
    (["hydra.run.dir=/proc/x"], ["hydra.run.dir=/proc/x: nothing can be written in /proc"]),
    (["-m", "seed=0,1", "optim.lr=1,-1"], ["optim.lr=-1.0: expected > 0"]),  # a sweep: every job, before launching
    (["--cfg", "job", "optim.lr=-1"], ["optim.lr=-1.0: expected > 0"]),  # printing only a config that would run
])
def test_bad_input_is_one_clear_message(args, expected, tmp_path, fresh_env):
    """Refused before Hydra creates anything (date/cli.py): exit code 2, one paragraph, nothing left behind."""
    result = run_in_process("date.train", args, env=fresh_env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    [message] = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    for text in expected:
        assert text in message, message
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    assert list(tmp_path.iterdir()) == []  # no outputs/ or multirun/ dir, no MLflow store


@pytest.mark.parametrize("sweep", [[], ["-m", "seed=0,1"]], ids=["run", "sweep"])
def test_unreachable_tracking_server_fails_fast(sweep, tmp_path, fresh_env):
    """A single run stops before data and model; a sweep before any job is launched (Hydra would only warn about
    its callback's error and launch the jobs, each to fail on its own)."""
    url = f"http://127.0.0.1:{free_port()}"
    result = run_in_process("date.train", [*sweep, *SMOKE], env={**fresh_env, "MLFLOW_TRACKING_URI": url},
                            cwd=tmp_path)
    assert result.returncode == 2
    [message] = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert message.startswith(f"Error: The MLflow tracking server {url} is unreachable")
    assert "Traceback" not in result.stderr and "Launching" not in result.stdout + result.stderr
    assert not list(tmp_path.glob("**/last.pth")) and not list(tmp_path.glob("multirun/**/train.log"))  # no job ran
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()  # no run or sweep dir


@pytest.mark.slow
def test_sweep_gives_one_tagged_run_per_job_with_a_shared_sweep_id(tmp_path, fresh_env, mlflow_server):
    """Through a tracking server whose URI carries a password: no file of the sweep holds it in clear text
    (Hydra's multirun.yaml and .hydra/*.yaml, the checkpoints, the logs)."""
    uri = mlflow_server.url.replace("://", "://user:s3cret@")
    result = run_in_process("date.train", ["-m", "assigner=o2o,dual", *SMOKE, f"hydra.sweep.dir={tmp_path / 'sweep'}",
                                           f"tracking.uri={uri}", "tracking.experiment=cli_sweep"],  # shared server
                            env=fresh_env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep_files = [p for p in (tmp_path / "sweep").rglob("*") if p.is_file()]
    assert "user:***@" in (tmp_path / "sweep" / "multirun.yaml").read_text()
    assert len([p for p in sweep_files if p.name == "last.pth"]) == 2
    assert not [p for p in sweep_files if b"s3cret" in p.read_bytes()]
    client = MlflowClient(mlflow_server.url)
    runs = client.search_runs([client.get_experiment_by_name("cli_sweep").experiment_id])
    assert sorted(r.data.tags["assigner"] for r in runs) == ["dual", "o2o"]
    sweep_id = (tmp_path / "sweep" / "sweep_id").read_text().strip()
    for run in runs:
        tags = run.data.tags
        assert tags["sweep_id"] == sweep_id
        assert (tags["schedule"], tags["backbone"], tags["branch_weighting"], tags["dataset"], tags["seed"]) == \
            ("smoke", "resnet18", "equal", "synthetic", "0")
        assert tags["git_commit"]
        assert run.info.status == "FINISHED"
        assert run.data.params["assigner.mode"] == tags["assigner"] and run.data.params["schedule.epochs"] == "2"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val/AP")] == [1, 2]
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2, 3, 4]
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config_resolved.yaml", "eval_results.json", "train.log", "convergence.png"} <= artifacts
    dual = next(r for r in runs if r.data.tags["assigner"] == "dual")
    assert {"train/o2o/cls", "train/o2m/ctr", "train/o2o/loss", "train/o2m/loss", "train/lr",
            "train/img_per_s"} <= set(dual.data.metrics)
    job_dirs = sorted(p for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert job_dirs[0].name.startswith("assigner-dual_") and job_dirs[1].name.startswith("assigner-o2o_")
    # each job's last lines say where its MLflow run, checkpoint and convergence figure are
    for job_dir in job_dirs:
        run_id = (job_dir / "mlflow_run_id").read_text().strip()
        last = (job_dir / "train.log").read_text().splitlines()[-3:]
        assert f"MLflow run {run_id}" in last[0] and mlflow_server.url.replace("://", "://user:***@") in last[0]
        assert last[1].endswith(f"Checkpoint: {job_dir / 'model_final.pth'} (python -m date.evaluate "
                                f"checkpoint={job_dir / 'model_final.pth'})")
        assert last[2].endswith(f"Convergence figure: {job_dir / 'convergence.png'}")
        assert (job_dir / "convergence.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the checkpoint evaluates alone to the run's final numbers
    result = run_in_process("date.evaluate", [f"checkpoint={job_dirs[0] / 'model_final.pth'}", "num_workers=0",
                                              f"out={tmp_path / 'eval.json'}"], env=fresh_env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]" in result.stdout
    stats = json.loads((tmp_path / "eval.json").read_text())
    assert stats["AP"] == pytest.approx(dual.data.metrics["val/AP"]) and len(stats) == 12


def test_evaluate_refuses_a_missing_checkpoint(tmp_path, fresh_env):
    result = run_in_process("date.evaluate", [f"checkpoint={tmp_path / 'nope.pth'}"], env=fresh_env, cwd=tmp_path)
    assert result.returncode == 2
    assert f"Checkpoint {tmp_path / 'nope.pth'} does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_cfg_job_shows_the_composed_groups(tmp_path, fresh_env):
    result = run_in_process("date.train", ["--cfg", "job", "assigner=o2o", "schedule=3x"], env=fresh_env,
                            cwd=tmp_path)
    assert result.returncode == 0
    assert "mode: o2o" in result.stdout and "epochs: 36" in result.stdout and "depth: 18" in result.stdout


def test_help_lists_each_key_with_its_default_range_and_comment(tmp_path, fresh_env):
    train = run_in_process("date.train", ["--help"], env=fresh_env, cwd=tmp_path)
    assert train.returncode == 0, train.stderr[-3000:]
    assert "  optim.lr = 0.0004  (float; > 0)\n      for 16 images per step; scaled by batch_size" in train.stdout
    assert "  assigner.mode = dual  (o2m|o2o|dual)" in train.stdout
    assert "assigner=dual (default) | dual_topk" in train.stdout
    assert "  dataset.num_train = 224  (int)\n      training images" in train.stdout  # SyntheticParams' own comment
    assert "--cfg job" in train.stdout
    evaluate = run_in_process("date.evaluate", ["--help"], env=fresh_env, cwd=tmp_path)
    assert "  checkpoint = ??? (required)  (str)" in evaluate.stdout and "  out = null  (str)" in evaluate.stdout
    assert "optim.lr" not in evaluate.stdout and "overwrite = false  (bool)" in evaluate.stdout
    assert list(tmp_path.iterdir()) == []


def test_final_metrics_table_names_the_branches_and_explains_cocos_minus_one():
    table = metrics_table({"train/loss": 1.5, **{f"val/{k}": 0.25 for k in ("AP", "AP50", "APs")}, "val/APm": -1.0,
                           "val/o2m/AP": 0.125})
    lines = table.splitlines()
    assert lines[0].split() == ["inference", "branch", "o2m", "branch", "+", "NMS"]
    assert lines[1].split() == ["AP", "0.2500", "0.1250"] and lines[5].split() == ["APm", "n/a", "n/a"]
    assert "train/loss: 1.5000" in table and "n/a: COCO's -1, no object of that size" in table


@pytest.mark.slow
def test_the_console_shows_the_run_and_the_log_file_keeps_the_libraries_chatter(tmp_path, fresh_env):
    run_dir = tmp_path / "run"
    result = run_module("date.train", [*SMOKE, "tracking.system_metrics=true", "eval_o2m_branch=true",
                                       f"hydra.run.dir={run_dir}"],
                        env=fresh_env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    console, log = result.stdout + result.stderr, (run_dir / "train.log").read_text()
    assert "Started monitoring system metrics" in log and "system metrics" not in console
    assert "epoch: 1/2  iter: 1/4  loss:" in console
    assert "COCO bbox evaluation of the inference branch (o2o, no NMS) after epoch 1" in console
    assert "COCO bbox evaluation of the o2m branch + NMS (a diagnostic) after epoch 2" in console
    assert "(the whole run). Final metrics:\n" in console and " inference branch  o2m branch + NMS" in console
