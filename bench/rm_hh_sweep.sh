#!/usr/bin/env bash
# The reward-model levers on hh-rlhf, one at a time against configs/rm_hh.yaml, each appended to
# bench/results/rm_hh.json by bench/rm_hh.py (accuracy with its 95% interval, ECE, wall time).
#   bash bench/rm_hh_sweep.sh [NAME ...]      (no names: every variant not yet in the results file)
# The recipe is now at max length 512; the variants measured before it pin 256 so their rows reproduce.
# Runs one after another: timing two at once on 2 cores would measure the contention, not the recipe.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
declare -A VARIANTS=(
  [epochs1]="--set train.epochs=1 --set data.max_length=256"
  [full-lr1e-5-epochs1]="--set lora=null --set train.learning_rate=1e-5 --set train.epochs=1 --set data.max_length=256"
  [epochs2]="--set train.epochs=2 --set data.max_length=256"
  [epochs2-seed1]="--set train.epochs=2 --set train.seed=1 --set data.max_length=256"
  [len512-epochs2]="--set data.max_length=512 --set train.epochs=2"
  [sft-first-epochs2]="--sft-first --set train.epochs=2 --set data.max_length=256"
  [lora-r64-epochs2]="--set lora.r=64 --set lora.alpha=128 --set train.epochs=2 --set data.max_length=256"
  [full-lr1e-5-epochs2]="--set lora=null --set train.learning_rate=1e-5 --set train.epochs=2 --set data.max_length=256"
  [ensemble3-epochs2]="--set method.ensemble_size=3 --set train.epochs=2 --set data.max_length=256"
)
ORDER=(epochs1 full-lr1e-5-epochs1 epochs2 epochs2-seed1 len512-epochs2 sft-first-epochs2 lora-r64-epochs2
       full-lr1e-5-epochs2 ensemble3-epochs2)
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
