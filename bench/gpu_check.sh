#!/usr/bin/env bash
# Prepared GPU check (issue 26), for whenever a GPU machine is available: SFT, reward model, DPO and GRPO on
# the bundled model in bf16 on one GPU, then palate's FSDP2 path on that GPU (bf16 params / fp32 reduce,
# CPU offload) and, if vLLM is installed, GRPO with vLLM rollouts. Prints tokens/s and peak GPU memory per
# run (from each run's status.json). Budget: under 8 minutes on one GPU (each run is capped by `timeout`).
#
#   bash bench/gpu_check.sh [OUT_DIR]        # default: a new temporary directory
#
# Nothing in palate's tests depends on this script. NOT YET RUN: no GPU was available when it was written.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-$(mktemp -d -t palate-gpu-check-XXXX)}
PY=${PYTHON:-python}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TOKENIZERS_PARALLELISM=false PYTHONPATH="$PWD/src:${PYTHONPATH:-}"
BF16="model.dtype=bf16 train.precision=bf16 log.progress=false train.save_every=0"
echo "palate GPU check -> $OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || { echo "no GPU visible"; exit 1; }
START=$SECONDS
FAILED=0

report() {  # name: one line from the run's status.json
  "$PY" - "$OUT/$1" "$1" <<'PYEOF'
import json, sys
st = json.load(open(sys.argv[1] + "/status.json"))
s = st.get("summary", {})
print(f"  {sys.argv[2]:<14} {st.get('state', '?'):<9} steps {s.get('steps')}  tokens/s {s.get('tokens_per_s')}  "
      f"peak GPU {s.get('peak_gpu_gib')} GiB  wall {s.get('wall_seconds')} s  final loss {s.get('final_loss')}")
PYEOF
}

run() {  # name timeout_s command...
  local name=$1 limit=$2; shift 2
  echo "== $name: $*"
  if timeout "$limit" "$@" run_dir="$OUT/$name" > "$OUT/$name.log" 2>&1; then report "$name"
  else echo "  $name FAILED (exit $?), last lines of $OUT/$name.log:"; tail -n 15 "$OUT/$name.log"; FAILED=1; fi
}

run sft 90 "$PY" -m palate sft examples/sft_demo.yaml $BF16 train.max_steps=40 train.eval_every=20
run rm 90 "$PY" -m palate rm examples/rm_demo.yaml $BF16 train.max_steps=40 train.eval_every=0
run dpo 90 "$PY" -m palate dpo examples/dpo_demo.yaml $BF16 train.max_steps=30 train.eval_every=0 dpo.samples=0
if [ -f "$OUT/rm/final/config.json" ]; then
  run grpo 120 "$PY" -m palate grpo examples/grpo_demo.yaml $BF16 reward.model="$OUT/rm/final" train.max_steps=6 train.eval_every=0
else echo "== grpo skipped: no reward model"; FAILED=1; fi
# palate's own FSDP2 path on one GPU (a 1-process mesh): bf16 params / fp32 reduce, then with CPU offload
run sft-fsdp 90 env ACCELERATE_USE_FSDP=true "$PY" -m torch.distributed.run --nproc_per_node 1 -m palate sft \
  examples/sft_demo.yaml $BF16 train.sharding=fsdp train.max_steps=20 train.eval_every=0
run sft-fsdp-offload 90 env ACCELERATE_USE_FSDP=true "$PY" -m torch.distributed.run --nproc_per_node 1 -m palate sft \
  examples/sft_demo.yaml $BF16 train.sharding=fsdp train.cpu_offload=true train.max_steps=10 train.eval_every=0
if [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then
  run sft-fsdp-2gpu 90 "$PY" -m torch.distributed.run --nproc_per_node 2 -m palate sft examples/sft_demo.yaml $BF16 \
    train.sharding=fsdp train.max_steps=20 train.eval_every=0
fi
if "$PY" -c "import vllm" 2>/dev/null && [ -f "$OUT/rm/final/config.json" ]; then
  run grpo-vllm 150 "$PY" -m palate grpo examples/grpo_demo.yaml $BF16 reward.model="$OUT/rm/final" \
    rollout.backend=vllm train.max_steps=6 train.eval_every=0
else echo "== grpo-vllm skipped: vllm not installed"; fi
echo "done in $((SECONDS - START)) s; logs and run dirs in $OUT"
exit $FAILED
