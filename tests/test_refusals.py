"""Bad input to every entrypoint is refused before any work, as one `Error:` paragraph with exit code 2, and leaves
nothing behind (README, "When things go wrong"): no output over an input, no run dir, no MLflow run, no outputs/.

None of these needs a trained checkpoint: each input is refused before the checkpoint is read."""
import contextlib
import json
import signal
import sqlite3
import subprocess
import sys

import pytest

from date.runtime.outputs import sqlite_problem

from conftest import SMOKE, run_in_process as run_module  # in this process: each is refused before any work


def _refused(result, *expected: str) -> str:
    """The one `Error:` paragraph of a refused command (exit code 2, no traceback), holding each of ``expected``."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-3000:]
    [message] = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    for text in expected:
        assert text in message, message
    return message


@pytest.fixture
def checkpoint(tmp_path):
    """A file standing for a checkpoint: its bytes must survive every refused command."""
    path = tmp_path / "ck.pth"
    path.write_bytes(b"weights that took a day to train")
    return path


def _only(folder, *names):
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)


@pytest.mark.parametrize("module", ["date.evaluate", "date.export"])
def test_an_output_equal_to_the_checkpoint_is_refused(module, checkpoint, tmp_path, fresh_env):
    result = run_module(module, [f"checkpoint={checkpoint}", f"out={checkpoint}"], env=fresh_env, cwd=tmp_path)
    _refused(result, f"out={checkpoint} is the input checkpoint={checkpoint}", "would destroy it")
    assert checkpoint.read_bytes() == b"weights that took a day to train"
    _only(tmp_path, "ck.pth")  # no outputs/<module>/<time>/ either


@pytest.mark.parametrize("module", ["date.evaluate", "date.export"])
@pytest.mark.parametrize("folder", ["new/", "existing"])
def test_a_folder_given_as_the_output_file_is_refused(module, folder, checkpoint, tmp_path, fresh_env):
    (tmp_path / "existing").mkdir()
    result = run_module(module, [f"checkpoint={checkpoint}", f"out={tmp_path}/{folder}"], env=fresh_env, cwd=tmp_path)
    _refused(result, "is a folder, and out= names the file to write")
    _only(tmp_path, "ck.pth", "existing")


@pytest.mark.parametrize("module,kind", [("date.evaluate", "an evaluation JSON"), ("date.export", "an ONNX model")])
def test_an_existing_file_of_another_kind_is_kept_unless_overwrite(module, kind, checkpoint, tmp_path, fresh_env):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    result = run_module(module, [f"checkpoint={checkpoint}", f"out={notes}"], env=fresh_env, cwd=tmp_path)
    _refused(result, f"out={notes} exists and is not {kind}", "overwrite=true")
    # overwrite=true lets it through this check: the (fake) checkpoint is what is refused next
    result = run_module(module, [f"checkpoint={checkpoint}", f"out={notes}", "overwrite=true"], env=fresh_env,
                        cwd=tmp_path)
    _refused(result, f"Cannot read checkpoint {checkpoint}")
    assert notes.read_text() == "my notes"


def test_an_earlier_evaluation_json_is_replaced_without_asking(checkpoint, tmp_path, fresh_env):
    earlier = tmp_path / "eval.json"
    earlier.write_text(json.dumps({"AP": 0.1, "AP50": 0.2}))
    result = run_module("date.evaluate", [f"checkpoint={checkpoint}", f"out={earlier}"], env=fresh_env, cwd=tmp_path)
    _refused(result, f"Cannot read checkpoint {checkpoint}")  # past the output check


@pytest.mark.parametrize("module,out", [("date.evaluate", "/proc/date/eval.json"), ("date.export", "/proc/m.onnx")])
def test_an_unwritable_output_is_refused_before_the_work(module, out, checkpoint, tmp_path, fresh_env):
    # /proc takes no new file, even from root (who ignores permission bits): as a read-only file system
    result = run_module(module, [f"checkpoint={checkpoint}", f"out={out}"], env=fresh_env, cwd=tmp_path)
    _refused(result, f"out={out}: nothing can be written in /proc")


def test_predict_refuses_an_output_folder_that_is_a_file_or_holds_other_files(checkpoint, tmp_path, fresh_env):
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.png").write_bytes(b"")
    args = [f"checkpoint={checkpoint}", f"images={images}"]
    _refused(run_module("date.predict", [*args, f"out={checkpoint}"], env=fresh_env, cwd=tmp_path),
             f"out={checkpoint} is a file")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "b.png").write_bytes(b"my picture")
    _refused(run_module("date.predict", [*args, f"out={mine}"], env=fresh_env, cwd=tmp_path),
             f"out={mine} holds files that this command did not write")
    _refused(run_module("date.predict", [*args, f"out={tmp_path / 'new'}"], env=fresh_env, cwd=tmp_path),
             f"Cannot read checkpoint {checkpoint}")
    _only(tmp_path, "ck.pth", "images", "mine")  # no out= folder, no outputs/predict/<time>
    assert (mine / "b.png").read_bytes() == b"my picture" and checkpoint.read_bytes().startswith(b"weights")


@pytest.mark.parametrize("module,args,expected", [
    ("date.evaluate", ["output=x.json"], "output (renamed: its name is now out"),
    ("date.evaluate", ["+outt=x.json"], "outt (did you mean out?)"),
    ("date.evaluate", ["dataset=coco", "dataset.rot=/x"], "dataset.rot (did you mean dataset.root?)"),
    ("date.evaluate", ["batch_size=0"], "batch_size=0: expected >= 1"),
    ("date.evaluate", ["device=cuda:7"], "device=cuda:7: this process sees"),
    ("date.evaluate", ["branch=o2o"], "branch='o2o': expected null or o2m"),
    ("date.predict", ["images=.", "+score_thres=0.5"], "score_thres (did you mean score_thresh?)"),
    ("date.predict", ["images=.", "score_thresh=2"], "score_thresh=2.0: expected a number in [0, 1]"),
    ("date.export", ["outt=m.onnx"], "outt (did you mean out?)"),
    ("date.export", ["overwrite=maybe"], "overwrite=maybe: Value 'maybe' is not a valid bool"),
])
def test_unknown_keys_and_bad_values_of_evaluate_predict_export(module, args, expected, checkpoint, tmp_path,
                                                                fresh_env):
    result = run_module(module, [f"checkpoint={checkpoint}", *args], env=fresh_env, cwd=tmp_path)
    _refused(result, expected)
    _only(tmp_path, "ck.pth")


@pytest.mark.parametrize("args,expected", [
    (["--stats", "num_trian=5"], "dataset.num_trian (did you mean dataset.num_train?)"),
    (["--stats", "num_train=abc"], "dataset.num_train=abc: Value 'abc' of type 'str' could not be converted"),
    (["--stats", "num_train=0"], "num_train=0, num_val="),
    (["--stats", "+num_train=4"], "+dataset.num_train: dataset.num_train exists already"),
    (["--preset", "nope"], "dataset=nope: the dataset group has no option 'nope'"),
    (["model.size_of_interest=[1,2]"], "model.size_of_interest=[1.0, 2.0]: expected 4 increasing boundaries"),
])
def test_synthetic_cli_bad_overrides_are_one_paragraph(args, expected, tmp_path, fresh_env):
    result = run_module("date.data.synthetic", ["--cache-dir", str(tmp_path / "cache"), *args], env=fresh_env,
                        cwd=tmp_path)
    _refused(result, expected)
    _only(tmp_path)


@pytest.mark.parametrize("store,expected", [
    ("sqlite:////proc/mlflow.db", "The MLflow store sqlite:////proc/mlflow.db cannot be used: /proc cannot be "
                                  "written"),
    ("sqlite:///TMP/notes.txt", "cannot be used: SQLite cannot read TMP/notes.txt (file is not a database)"),
])
def test_an_unusable_mlflow_store_is_refused_at_once(store, expected, tmp_path, fresh_env):
    """MLflow itself retries such a store for about two minutes, then prints a long traceback."""
    (tmp_path / "notes.txt").write_text("not a database")
    store, expected = store.replace("TMP", str(tmp_path)), expected.replace("TMP", str(tmp_path))
    result = run_module("date.train", [*SMOKE, f"tracking.uri={store}"], env=fresh_env, cwd=tmp_path)
    _refused(result, expected)
    _only(tmp_path, "notes.txt")


def test_a_backbone_weights_file_that_is_not_a_state_dict_is_refused_before_the_run(tmp_path, fresh_env):
    weights = tmp_path / "resnet18.pth"
    weights.write_text("hello")
    result = run_module("date.train", [*SMOKE, f"backbone.weights={weights}"], env=fresh_env, cwd=tmp_path)
    _refused(result, f"backbone.weights={weights} cannot be read by torch.load")
    _only(tmp_path, "resnet18.pth")  # no run dir, no MLflow store


def test_data_refused_inside_the_job_leaves_no_run_dir(tmp_path, fresh_env):
    """A malformed annotation file is found when the job reads it, after Hydra made the run dir: that dir goes."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.json").write_text("{not json")
    (data / "val.json").write_text("{}")
    args = ["dataset=coco_json", f"dataset.train_ann={data / 'train.json'}", f"dataset.train_images={data}",
            f"dataset.val_ann={data / 'val.json'}", f"dataset.val_images={data}", *SMOKE]
    result = run_module("date.train", args, env=fresh_env, cwd=tmp_path)
    _refused(result, str(data / "train.json"))
    _only(tmp_path, "data")  # no outputs/, no MLflow store or run


KILLED_MID_TRANSACTION = """
import os, signal, sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("CREATE TABLE metrics (value BLOB)")
db.execute("INSERT INTO metrics VALUES (zeroblob(100000))")
db.execute("PRAGMA cache_size=1")  # so the open transaction spills pages into the file and its journal
db.execute("BEGIN")
for _ in range(20):
    db.execute("INSERT INTO metrics VALUES (zeroblob(100000))")
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_store_whose_writer_was_killed_mid_transaction_is_usable(tmp_path):
    """SIGKILL during an MLflow write leaves a hot journal; the next opener rolls it back (a resume must not be
    refused, as it once was by a read-only probe that cannot roll back)."""
    store = tmp_path / "mlflow.db"
    killed = subprocess.run([sys.executable, "-c", KILLED_MID_TRANSACTION, str(store)], check=False)
    assert killed.returncode == -signal.SIGKILL
    assert (tmp_path / "mlflow.db-journal").stat().st_size > 0  # the hot journal is there
    assert sqlite_problem(store) is None
    with contextlib.closing(sqlite3.connect(store)) as db:  # rolled back: only the committed row
        assert db.execute("SELECT COUNT(*) FROM metrics").fetchone() == (1,)
