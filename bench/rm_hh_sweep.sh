#!/usr/bin/env bash
# The reward-model levers on hh-rlhf, one at a time against configs/rm_hh.yaml, each appended to
# bench/results/rm_hh.json by bench/rm_hh.py (accuracy with its 95% interval, ECE, wall time).
#   bash bench/rm_hh_sweep.sh [NAME ...]      (no names: every variant not yet in the results file)
# Runs one after another: timing two at once on 2 cores would measure the contention, not the recipe.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
declare -A VARIANTS=(
  [lora-r16-len256]=""
  [full-lr1e-5]="--set lora=null --set train.learning_rate=1e-5"
  [full-lr3e-5]="--set lora=null --set train.learning_rate=3e-5"
  [lora-r64]="--set lora.r=64 --set lora.alpha=128"
  [len512]="--set data.max_length=512"
  [epochs2]="--set train.epochs=2"
  [sft-first]="--sft-first"
  [no-centering]="--set method.center_weight=0"
)
ORDER=(lora-r16-len256 full-lr1e-5 len512 epochs2 sft-first lora-r64 full-lr3e-5 no-centering)
names=("$@")
[ ${#names[@]} -eq 0 ] && names=("${ORDER[@]}")
for name in "${names[@]}"; do
  if [ -f bench/results/rm_hh.json ] && grep -q "\"name\": \"$name\"" bench/results/rm_hh.json; then
    echo "== $name: already in bench/results/rm_hh.json"; continue
  fi
  extra=${VARIANTS[$name]-}
  [ -z "${VARIANTS[$name]+x}" ] && extra=${EXTRA:?"unknown variant $name: set EXTRA='--set ...' to define it"}
  echo "== $name: $extra"
  # shellcheck disable=SC2086
  $PY bench/rm_hh.py --name "$name" $extra --output-dir "/tmp/alignkit-rm-hh-$name" 2>&1 | grep -v "it/s\]" || exit 1
done
