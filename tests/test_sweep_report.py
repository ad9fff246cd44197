"""What a sweep prints for a failed job: the line of its error log that says why (the launcher's
``_error_line``), read from error logs written by real Python processes; what a refused submission says and leaves."""
import subprocess
import sys

from hydra_plugins.date_launcher.launcher import _error_line, _refusal_message, remove_unlaunched_sweep_dir

CRASH_THEN_LOG = """
import atexit, logging, sys
logging.basicConfig(stream=sys.stderr, format="%(asctime)s INFO %(name)s: %(message)s", level=logging.INFO)
# like MLflow's system-metrics thread, which logs after the traceback of a crashed job
atexit.register(logging.getLogger("mlflow.system_metrics").info, "Successfully terminated system metrics monitoring!")
try:
    {{}}["missing"]
except KeyError as exc:
    raise RuntimeError("the dataset insert failed: {detail}") from exc
"""


def _error_log(tmp_path, code: str):
    log = tmp_path / "job_log.err"
    with open(log, "w") as err:
        subprocess.run([sys.executable, "-c", code], stderr=err, timeout=60)
    return log


def test_the_exception_of_a_traceback_is_found_under_later_log_lines(tmp_path):
    log = _error_log(tmp_path, CRASH_THEN_LOG.format(detail="UNIQUE constraint"))
    assert log.read_text().rstrip().endswith("Successfully terminated system metrics monitoring!")
    assert _error_line(log) == "RuntimeError: the dataset insert failed: UNIQUE constraint"


def test_the_jobs_own_error_paragraph_wins_and_long_lines_are_cut(tmp_path):
    log = _error_log(tmp_path, "import sys; print('Error: dataset.train_ann=/x.json does not exist.', file=sys.stderr)"
                               "; print('Traceback (most recent call last):\\nValueError: later', file=sys.stderr)")
    assert _error_line(log) == "Error: dataset.train_ann=/x.json does not exist."
    long = _error_log(tmp_path, CRASH_THEN_LOG.format(detail="x" * 500))
    assert _error_line(long).startswith("RuntimeError: the dataset insert failed: xxx")
    assert _error_line(long).endswith(" ...") and len(_error_line(long)) == 404


def test_a_log_without_a_traceback_gives_its_last_line(tmp_path):
    assert _error_line(_error_log(tmp_path, "import sys; print('srun: Killed', file=sys.stderr)")) == "srun: Killed"
    assert _error_line(_error_log(tmp_path, "pass")) == "the error log is empty"
    assert _error_line(tmp_path / "absent.err") == f"no error log at {tmp_path / 'absent.err'}"


def test_a_controller_that_is_down_is_named_not_an_sbatch_option():
    said = "sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)"
    message = _refusal_message(said, {"gpus_per_node": None})
    assert "Unable to contact slurm controller" in message
    assert "The SLURM controller (slurmctld) is down or unreachable" in message and "sbatch option" not in message
    other = _refusal_message("sbatch: error: invalid partition specified: nope", {"gpus_per_node": None})
    assert "Change the sbatch option it names" in other


def test_a_refused_sweep_leaves_no_sweep_dir_but_an_earlier_launch_keeps_its_own(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the sweep dir is relative to the launch directory: multirun/<name>/<time>
    refused = tmp_path / "multirun" / "date" / "2026-12-04_10-00-00"
    (refused / ".submitit" / "1234").mkdir(parents=True)
    (refused / "multirun.yaml").write_text("hydra: {}")
    (refused / "sweep_id").write_text("abc\n")
    kept = tmp_path / "multirun" / "date" / "2026-12-03_09-00-00"
    (kept / "assigner-o2o").mkdir(parents=True)
    (kept / "sweep_id").write_text("def\n")
    assert remove_unlaunched_sweep_dir(refused) and not refused.exists()
    assert not remove_unlaunched_sweep_dir(kept) and (kept / "assigner-o2o").is_dir()
    assert remove_unlaunched_sweep_dir(tmp_path / "multirun" / "other" / "t") is False
    kept_only = tmp_path / "lonely" / "t"
    (kept_only / ".submitit").mkdir(parents=True)
    assert remove_unlaunched_sweep_dir(kept_only) and not (tmp_path / "lonely").exists()  # empty parents go too
