#!/usr/bin/env bash
# Issue 14's paper-shaped Fashion-MNIST protocol, four calls one after the other (see
# benchmarks/results/PLAN_issue14.md). Rerunnable: finished runs are reused, interrupted ones resumed.
#   nohup setsid nice -n 15 benchmarks/run_issue14_chain.sh [PID] > runs/log_issue14_chain.txt 2>&1 &
# With PID, waits for that process (a call started by hand) to end first.
set -u
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
if [ $# -gt 0 ]; then
  while kill -0 "$1" 2>/dev/null; do sleep 60; done
fi
mkdir -p runs
common=(--device cpu --seeds 0 1 2 --subset 5000 --teacher-epochs 30 --student-epochs 30 --batch-size 128
        --kd --student-plus --jobs 2 --workers 0
        --teacher-model cifar_resnet20:strides=1,2,2,2 --student cifar_resnet20:strides=4,1,2,1)
# tag | out dir | overrides (weight decay 0 changes the teachers too: own run folders)
settings=(
  "56_canvas|runs/fm56_canvas|data.canvas=56"
  "56_resize|runs/fm56_resize|data.image_size=56"
  "56_canvas_wd0|runs/fm56_canvas_wd0|data.canvas=56 optim.weight_decay=0"
  "56_resize_wd0|runs/fm56_resize_wd0|data.image_size=56 optim.weight_decay=0"
)
status=0
for s in "${settings[@]}"; do
  IFS='|' read -r tag out overrides <<< "$s"
  echo "$(date -Is) start $tag"
  # shellcheck disable=SC2086  # the overrides are separate words on purpose
  .venv/bin/python benchmarks/fashion_mnist.py "${common[@]}" --tag "$tag" --out "$out" $overrides \
    >> "runs/log_$tag.txt" 2>&1 || { echo "$(date -Is) $tag FAILED (see runs/log_$tag.txt)"; status=1; }
  echo "$(date -Is) end $tag"
done
exit $status
