#!/usr/bin/env bash
# Issue 14's paper-shaped Fashion-MNIST protocols, one call per setting, one after the other (see
# benchmarks/results/PLAN_issue14.md): the cifar_resnet20 x8 pair at 56 px (4 settings) and the
# paper-family MobileNetV3-small x4 pair at 64 px (item 4).
#   nohup setsid nice -n 15 benchmarks/run_issue14_chain.sh [PID] > runs/log_issue14_chain.txt 2>&1 &
# With PID, waits for that process (a call started by hand) to end first.
# Rerunnable, also on a fresh clone: a setting whose results file already holds its seeds is skipped; one
# holding some of them is completed with --merge (only the missing seeds train); finished run folders are
# reused and interrupted runs resumed.
set -u
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
if [ $# -gt 0 ]; then
  while kill -0 "$1" 2>/dev/null; do sleep 60; done
fi
mkdir -p runs
common=(--device cpu --subset 5000 --teacher-epochs 30 --student-epochs 30 --batch-size 128
        --kd --student-plus --jobs 2 --workers 0)
r20=(cifar_resnet20:strides=1,2,2,2 cifar_resnet20:strides=4,1,2,1)          # teacher, x8 student (3 pairs)
mnv3=(mobilenetv3_small-1-22121111211 mobilenetv3_small-4-22111111111)     # the paper's x4 pair (5 pairs)
# tag | seeds | out dir | teacher | student | overrides (weight decay 0 changes the teachers too: own run folders)
settings=(
  "56_canvas|0 1 2|runs/fm56_canvas|${r20[0]}|${r20[1]}|data.canvas=56"
  "56_resize|0 1 2|runs/fm56_resize|${r20[0]}|${r20[1]}|data.image_size=56"
  "56_canvas_wd0|0 1 2|runs/fm56_canvas_wd0|${r20[0]}|${r20[1]}|data.canvas=56 optim.weight_decay=0"
  "56_resize_wd0|0 1 2|runs/fm56_resize_wd0|${r20[0]}|${r20[1]}|data.image_size=56 optim.weight_decay=0"
  "64_mnv3_resize|0|runs/fm64_mnv3_resize|${mnv3[0]}|${mnv3[1]}|data.image_size=64"  # one seed first (item 4)
  "64_mnv3_resize|0 1 2|runs/fm64_mnv3_resize|${mnv3[0]}|${mnv3[1]}|data.image_size=64"
)
# The seeds of $2 (space-separated) that results file $1 does not hold yet.
missing() {
  .venv/bin/python - "$1" "$2" <<'PY'
import json, sys
from pathlib import Path
path, want = Path(sys.argv[1]), [int(s) for s in sys.argv[2].split()]
have = json.loads(path.read_text())["settings"]["seeds"] if path.is_file() else []
print(" ".join(str(s) for s in want if s not in have))
PY
}
status=0
for s in "${settings[@]}"; do
  IFS='|' read -r tag seeds out teacher student overrides <<< "$s"
  results="benchmarks/results/fashion_mnist_$tag.json"
  todo=$(missing "$results" "$seeds")
  if [ -z "$todo" ]; then echo "$(date -Is) skip $tag (seeds $seeds in $results)"; continue; fi
  merge=()
  [ "$todo" != "$seeds" ] && merge=(--merge "$results")
  echo "$(date -Is) start $tag (seeds $seeds; to train: $todo)"
  # shellcheck disable=SC2086  # the overrides are separate words on purpose
  .venv/bin/python benchmarks/fashion_mnist.py "${common[@]}" --seeds $seeds "${merge[@]}" --teacher-model "$teacher" \
    --student "$student" --tag "$tag" --out "$out" $overrides \
    >> "runs/log_$tag.txt" 2>&1 || { echo "$(date -Is) $tag FAILED (see runs/log_$tag.txt)"; status=1; }
  echo "$(date -Is) end $tag"
done
exit $status
