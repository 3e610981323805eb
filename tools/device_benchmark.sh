#!/usr/bin/env bash
# Every accelerator measurement of docs/performance.md in one run, each step
# under a time limit and all within BUDGET seconds (570: a 10-minute device
# command with room to start), into one folder:
#
#   OUT=/tmp/gpu bash tools/device_benchmark.sh           # on the GPU machine
#   OUT=/tmp/gpu SMOKE=1 bash tools/device_benchmark.sh   # tiny, to try it on a CPU
#   OUT=/tmp/gpu ONLY='benchmark_' bash tools/device_benchmark.sh   # steps matching a regex
#
# A bare GPU machine has jax, flax, optax, orbax-checkpoint and PyTorch but
# no ml_collections or clu and no package index: the wheels of
# tools/carried_wheels.sh (.whl/, carried with the repository) that this
# Python lacks are installed offline into a scratch folder on PYTHONPATH.
# Steps: the environment; the wheels; --mode=benchmark (JAX against PyTorch
# with torch.compile on channels-last, AMP for bfloat16, MFU against the
# datasheet's dense peak) for the paper's network and the single tower at
# bfloat16 and float32, batch 512 and 128; then, where TensorFlow is
# installed and time is left, synthetic photographs and their prepared
# 256x256 copy, training end to end on each with the real input pipeline
# (train img/s and the data-wait fraction from metrics.jsonl) and
# --mode=benchmark_input. Writes OUT/log.txt (every step's output) and
# OUT/summary.txt (each step's command, exit status and result lines). A
# step that fails or runs out of time is noted and the next one runs.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:?set OUT to the folder for the results}
mkdir -p "$out"
python=${PYTHON:-python3}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
deadline=$((SECONDS + ${BUDGET:-570}))

if [[ ${SMOKE:-0} == 1 ]]; then
  runs=(float32:2:paper); photos=520; train_steps=4; limit=300
  bench=(--config.benchmark.variants=size=tiny --config.benchmark.steps=1
         --config.benchmark.rounds=1 --config.benchmark.torch=eager)
  train=(--config=configs/alexnet.py:size=tiny --config.batch_size=8
         --config.eval_batch_size=8)
else
  # dtype:batch:arch, a step each, so that one out of time loses only its
  # own line; docs/performance.md's two reference points first.
  runs=(bfloat16:512:paper bfloat16:512:towers=1 float32:128:paper float32:128:towers=1
        bfloat16:128:paper bfloat16:128:towers=1 float32:512:paper float32:512:towers=1)
  photos=4096; train_steps=300; limit=120
  bench=(--config.benchmark.steps=10 --config.benchmark.rounds=3
         --config.benchmark.torch=compile)
  train=(--config=configs/alexnet.py --config.batch_size=128)
fi

step() {  # step NAME SECONDS COMMAND...: runs it (false if ONLY skips it), logs it
  local name=$1 seconds=$2
  shift 2
  [[ $name =~ ${ONLY:-.} ]] || return 1
  local left=$((deadline - SECONDS))
  ((seconds > left)) && seconds=$left
  if ((seconds < 10)); then
    printf '\n## %s: skipped, the time budget is spent\n' "$name" >> "$out/summary.txt"
    return 1
  fi
  printf '\n## %s: %s\n' "$name" "$*" | tee -a "$out/summary.txt" >> "$out/log.txt"
  local start=$SECONDS
  timeout "$seconds" "$@" >> "$out/log.txt" 2>&1
  local rc=$?
  echo "exit $rc after $((SECONDS - start)) s$([[ $rc == 124 ]] && echo ' (time limit)')" \
    >> "$out/summary.txt"
  return $rc
}

train_rates() {  # train_rates WORKDIR: the steady train img/s and data-wait fraction
  "$python" - "$1" <<'PY' >> "$out/summary.txt"
import json, statistics, sys
rows = [json.loads(line) for line in open(f'{sys.argv[1]}/metrics.jsonl')]
rows = [r for r in rows if 'images_per_sec' in r][1:]  # the first holds compilation
if rows:
  print(f"train img/s {statistics.median(r['images_per_sec'] for r in rows):.1f}, "
        f"data-wait fraction {statistics.median(r['data_wait_fraction'] for r in rows):.3f} "
        f"(medians of {len(rows)} logging intervals after the first)")
else:
  print('no logging interval after the first')
PY
}

step environment 60 bash -c "date -u; nproc; nvidia-smi -L 2>/dev/null; \
  grep -m1 'model name' /proc/cpuinfo; \
  $python -c 'import sys, jax; print(sys.version); print(jax.__version__, jax.devices())'; \
  $python -c 'import torch; print(torch.__version__, torch.cuda.is_available())'"
missing=()  # the carried wheels whose package this Python lacks
for wheel in .whl/*.whl; do
  [[ -f $wheel ]] || continue
  name=${wheel##*/}
  "$python" -c 'import importlib.metadata as m, sys; m.version(sys.argv[1])' \
    "${name%%-*}" 2>/dev/null || missing+=("$wheel")
done
echo "carried wheels to install: ${missing[*]:-none}" | tee -a "$out/log.txt" >> "$out/summary.txt"
((${#missing[@]} == 0)) || step wheels 60 "$python" -m pip install --quiet --no-index \
  --no-deps --target "$scratch/site" "${missing[@]}"
export PYTHONPATH="$scratch/site${PYTHONPATH:+:$PYTHONPATH}"
step imports 60 "$python" -c $'try:\n import ml_collections, clu.metrics\nexcept ImportError as e:\n'\
$' raise SystemExit(f"{e}: fill .whl/ with tools/carried_wheels.sh where an index is")'

for run in "${runs[@]}"; do
  IFS=: read -r dtype batch arch <<< "$run"
  step "benchmark_${dtype}_${batch}_${arch}" "$limit" "$python" main.py \
    --config=configs/alexnet.py:dtype="$dtype" --mode=benchmark \
    --config.batch_size="$batch" --config.benchmark.architectures="$arch" \
    "${bench[@]}" &&
    grep -E '^(Train step|Peak: |Host: |(paper|towers=1): )' "$out/log.txt" |
      tail -n 4 >> "$out/summary.txt"
done

if ! "$python" -c 'import tensorflow, tensorflow_datasets' 2>/dev/null; then
  printf '\n## input pipeline and training: skipped, no TensorFlow or TFDS here\n' \
    >> "$out/summary.txt"
  exit 0
fi
step photos "$limit" "$python" -m tools.synthetic_photos "$scratch/photos" --num_images="$photos"
step prepare "$limit" "$python" main.py "${train[@]}" --mode=prepare \
  --config.data.image_folder="$scratch/photos" --config.data.prepared_dir="$scratch/prepared"

for source in photos prepared; do
  data=(--config.data.image_folder="$scratch/photos")
  [[ $source == prepared ]] && data+=(--config.data.prepared_dir="$scratch/prepared")
  step "train_$source" "$limit" "$python" main.py "${train[@]}" "${data[@]}" \
    --workdir="$scratch/run_$source" --config.num_train_steps="$train_steps" \
    --config.log_every_steps=$((train_steps / 10 > 0 ? train_steps / 10 : 1)) &&
    [[ -f $scratch/run_$source/metrics.jsonl ]] && train_rates "$scratch/run_$source"
  step "benchmark_input_$source" "$limit" "$python" main.py "${train[@]}" "${data[@]}" \
    --mode=benchmark_input &&
    grep -E '^input img/s' "$out/log.txt" | tail -n 1 >> "$out/summary.txt"
done
