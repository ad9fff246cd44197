# Shared by the paired-seed studies (experiments/crowd_study.sh, experiments/nms_free_study.sh); sourced, not run.
# two_lanes FUNCTION [Hydra overrides ...]
#   Calls `FUNCTION <seed> <overrides>` for each seed of the array SEEDS, in two lanes side by side (the seeds at
#   even and at odd positions; each run on one thread, so two lanes fill this 2-core CPU). Returns when both are
#   done, failing if either failed (under the caller's set -e a lane stops at its first failure).
two_lanes() {
  local fn=$1 even odd
  shift
  _lane() {  # parity, then the overrides
    local i
    for i in "${!SEEDS[@]}"; do
      if [ $((i % 2)) = "$1" ]; then "$fn" "${SEEDS[$i]}" "${@:2}"; fi  # set -e: a failed seed ends the lane
    done
  }
  _lane 0 "$@" &
  even=$!
  _lane 1 "$@" &
  odd=$!
  wait $even  # a lane that failed fails the study (each seed's log is in the study's folder)
  wait $odd
}
