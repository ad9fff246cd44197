#!/usr/bin/env bash
# The README's main job, measured as a new user runs it: a fresh clone of this repository's HEAD, the README's
# main command verbatim under `time`, with its own MLflow home and data cache (nothing reused). Writes into
# $OUT (experiments/results/main_job): main_job.md (the command, commit, date, wall times, the final metrics and
# the run's last log lines), eval_results.json and train.log of the run, and time.txt. Arguments are overrides added
# to the training command (the same fresh-clone measurement of another preset).
#
#   experiments/main_job.sh                 # ~3-4 min on this 2-core CPU when nothing else runs
#   OUT=experiments/results/synthetic_crowd experiments/main_job.sh dataset=synthetic_crowd   # ~4-5 min
# Environment: OUT (experiments/results/main_job), WORK (a fresh temporary folder, removed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
OUT=${OUT:-$REPO/experiments/results/main_job}
WORK=${WORK:-$(mktemp -d /tmp/date-main-job.XXXXXX)}
COMMIT=$(git rev-parse --short HEAD)
command=$(sed -n '/<!-- main-command -->/,/<!-- \/main-command -->/p' README.md | grep -v -e '^<!--' -e '^```')

git clone -q "$REPO" "$WORK/clone"
cd "$WORK/clone"
export DATE_HOME=$WORK/home DATE_DATA_CACHE=$WORK/cache
# the install and the training timed apart: the install's time depends on pip's cache, the training's on the CPU
install=${command%% && .venv/bin/python -m date.train*}
train=${command#"$install && "}
if [ $# -gt 0 ]; then
  train="$train $*"
  command="$command $*"
fi
start=$(date +%s.%N)
bash -c "$install"
mid=$(date +%s.%N)
bash -c "$train" 2>&1 | tee "$WORK/main_job.log"
end=$(date +%s.%N)

mkdir -p "$OUT"
run_dir=$(ls -d outputs/date/*/ | head -1)
cp "$run_dir/eval_results.json" "$OUT/eval_results.json"
cp "$run_dir/train.log" "$OUT/train.log"
python3 - "$OUT" "$COMMIT" "$command" "$start" "$mid" "$end" "$WORK/main_job.log" <<'EOF'
import json, sys, datetime
out, commit, command, start, mid, end, log = sys.argv[1:]
start, mid, end = float(start), float(mid), float(end)
final = json.load(open(f"{out}/eval_results.json"))[-1]
lines = [l.rstrip() for l in open(log) if "[date.train" in l or "Training done" in l][-6:]
extra = command.split("date.train", 1)[1].strip()
md = [f"# The main job{' with ' + extra if extra else ''}, measured ({datetime.date.today()}, commit {commit})", "",
      f"`experiments/main_job.sh {extra}`: a fresh clone, the README's main command"
      + (" with these overrides" if extra else "") + ":", "", "```", command, "```", "",
      "| part | wall time |", "| --- | ---: |",
      f"| install (venv + pip) | {mid - start:.0f} s |",
      f"| `python -m date.train` | {end - mid:.0f} s |",
      f"| the whole command | {end - start:.0f} s |", "",
      f"Final evaluation (epoch {final['epoch']}, {final.get('images', '?')} val images): "
      + ", ".join(f"{k.removeprefix('val/')} {v:.4f}" for k, v in final.items()
                  if k in ("val/AP", "val/AP50", "val/AP75", "val/o2m/AP") or k.startswith("val/crowd/")), "",
      "Its last lines:", "", "```", *lines, "```"]
open(f"{out}/main_job.md", "w").write("\n".join(md) + "\n")
open(f"{out}/time.txt", "w").write(f"install_s {mid - start:.1f}\ntrain_s {end - mid:.1f}\ntotal_s {end - start:.1f}\n")
print("\n".join(md))
EOF
rm -rf "$WORK"
