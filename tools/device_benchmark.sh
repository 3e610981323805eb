#!/usr/bin/env bash
# Every accelerator measurement of docs/performance.md in one run, each step
# under a time limit, into one folder:
#
#   OUT=/tmp/gpu bash tools/device_benchmark.sh           # on the GPU machine
#   OUT=/tmp/gpu SMOKE=1 bash tools/device_benchmark.sh   # tiny, to try it on a CPU
#   OUT=/tmp/gpu ONLY='benchmark_' bash tools/device_benchmark.sh   # steps matching a regex
#
# Steps: the environment; --mode=benchmark (JAX against PyTorch) for the
# paper's network and the single tower at float32 and bfloat16, batch 128
# and 512; synthetic photographs and their prepared 256x256 copy; training
# end to end on each with the real input pipeline (train img/s and the
# data-wait fraction from metrics.jsonl); --mode=benchmark_input on both, on
# this machine's CPU cores. Writes OUT/log.txt (every step's output) and
# OUT/summary.txt (each step's command, exit status and result lines). A
# step that fails or runs out of time is noted and the next one runs.
# Needs requirements.txt's packages with an accelerator build of jax, and
# PyTorch (requirements-torch.txt; a CUDA build on a GPU).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:?set OUT to the folder for the results}
mkdir -p "$out"
python=${PYTHON:-python3}
scratch=$(mktemp -d)
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2

if [[ ${SMOKE:-0} == 1 ]]; then
  dtypes=(float32); batches=(2); photos=520; train_steps=4; limit=600
  bench=(--config.benchmark.variants=size=tiny --config.benchmark.steps=1
         --config.benchmark.rounds=1 --config.benchmark.torch=eager)
  train=(--config=configs/alexnet.py:size=tiny --config.batch_size=8
         --config.eval_batch_size=8)
else
  dtypes=(float32 bfloat16); batches=(128 512); photos=4096; train_steps=300; limit=420
  bench=(--config.benchmark.steps=10 --config.benchmark.rounds=3)
  train=(--config=configs/alexnet.py --config.batch_size=128)
fi

step() {  # step NAME SECONDS COMMAND...: runs it (false if ONLY skips it), logs it
  local name=$1 seconds=$2
  shift 2
  [[ $name =~ ${ONLY:-.} ]] || return 1
  printf '\n## %s: %s\n' "$name" "$*" | tee -a "$out/summary.txt" >> "$out/log.txt"
  local start=$SECONDS
  timeout "$seconds" "$@" >> "$out/log.txt" 2>&1
  local rc=$?
  echo "exit $rc after $((SECONDS - start)) s$([[ $rc == 124 ]] && echo ' (time limit)')" \
    >> "$out/summary.txt"
  return $rc
}

train_rates() {  # train_rates WORKDIR: the steady train img/s and data-wait fraction
  "$python" - "$1" <<'EOF' >> "$out/summary.txt"
import json, statistics, sys
rows = [json.loads(line) for line in open(f'{sys.argv[1]}/metrics.jsonl')]
rows = [r for r in rows if 'images_per_sec' in r][1:]  # the first holds compilation
if rows:
  print(f"train img/s {statistics.median(r['images_per_sec'] for r in rows):.1f}, "
        f"data-wait fraction {statistics.median(r['data_wait_fraction'] for r in rows):.3f} "
        f"(medians of {len(rows)} logging intervals after the first)")
else:
  print('no logging interval after the first')
EOF
}

step environment 120 bash -c "date -u; nproc; nvidia-smi -L 2>/dev/null; \
  $python -c 'import sys, jax; print(sys.version); print(jax.__version__, jax.devices())'; \
  $python -c 'import torch; print(torch.__version__, torch.cuda.is_available())'"

for dtype in "${dtypes[@]}"; do
  for batch in "${batches[@]}"; do
    step "benchmark_${dtype}_${batch}" "$limit" "$python" main.py \
      --config=configs/alexnet.py:dtype="$dtype" --mode=benchmark \
      --config.batch_size="$batch" --config.benchmark.architectures=paper,towers=1 \
      "${bench[@]}" &&
      grep -E '^(paper|towers=1): ' "$out/log.txt" | tail -n 2 >> "$out/summary.txt"
  done
done

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
rm -rf "$scratch"
