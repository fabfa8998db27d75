#!/usr/bin/env bash
# The GPU check of mograd, in one command (about 10 minutes on one GPU; the stage limits add
# up to 15):
#
#   bash benchmarks/gpu_check.sh            # results in benchmarks/results/gpu/
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh
#
# 1. the CUDA tests (tests/integration/test_cuda.py): a k = 2 step queues everything without
#    a host synchronization (torch.cuda.set_sync_debug_mode("error")) for the default exact
#    step, representation mode and the frugal exact step (G and the update from the
#    forward records), and the frugal Gram matrix equals the default one on the GPU;
# 2. records_update: the jacobian="gramian" step (the update from the records: Linear
#    layers, a convolution, batch norm, task heads outside G) takes the rows path's steps
#    on the GPU (float64 1e-10, float32 1e-5 relative) at k = 2 and 40, without a host
#    synchronization at k = 2;
# 3. benchmarks/step_overhead.py on ResNet-18 at k = 2 and 8 (step time and peak memory,
#    torch.cuda.max_memory_allocated);
# 4. benchmarks/step_overhead.py --preset many: k = 40 and 128 on the MLP, 40 on the CNN,
#    the exact paths against TorchJD's autogram engine, and the solver timings;
# 5. benchmarks/step_memory.py on the ~20M-parameter MLP at k = 2, 4, 8.
#
# It installs nothing: it uses the project's own environment (.venv, made by `make venv`;
# $PYTHON overrides). Without CUDA it prints "no CUDA: skipped" and exits 0. Each stage has
# its own time limit; a failing stage is reported and the others still run; the exit
# status is that of the first failure. See docs/performance.md.
set -uo pipefail

cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
OUT="${OUT:-benchmarks/results/gpu}"

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "no CUDA: skipped (torch.cuda.is_available() is False for $PY)"
  exit 0
fi

mkdir -p "$OUT"
status=0
started=$(date +%s)

stage() {  # stage NAME LIMIT_SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s): $*"
  local t0=$(date +%s)
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc in $(( $(date +%s) - t0 ))s" | tee -a "$OUT/$name.log"
  if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then status=$rc; fi
}

"$PY" - > "$OUT/environment.json" <<'EOF'
import json, platform, torch
print(json.dumps({
    "python": platform.python_version(),
    "torch": torch.__version__,
    "cuda": torch.version.cuda,
    "gpu": torch.cuda.get_device_name(0),
    "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
}, indent=2))
EOF

stage test_cuda 150 "$PY" -m pytest -q -p no:xdist -p no:cacheprovider tests/integration/test_cuda.py

stage records_update 90 "$PY" - <<'EOF'
import copy, torch
from torch import nn
from mograd import MOWrapper

dev = torch.device("cuda")
for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
    for k in (2, 40):
        torch.manual_seed(0)
        body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                             nn.Linear(8 * 6 * 6, 64), nn.Tanh(), nn.Linear(64, 32))
        rows_model = nn.ModuleList([body, nn.Linear(32, k)]).to(dev, dtype)
        frugal_model = copy.deepcopy(rows_model)

        def wrap(m, **kw):
            return MOWrapper(torch.optim.SGD(m.parameters(), lr=0.1),
                             shared_params=list(m[0].parameters()), **kw)

        rows = wrap(rows_model)
        frugal = wrap(frugal_model, jacobian="gramian", modules=frugal_model)
        gen = torch.Generator(device=dev).manual_seed(1)
        for step in range(3):
            x = torch.randn(32, 3, 8, 8, generator=gen, device=dev, dtype=dtype)
            for model, opt in ((rows_model, rows), (frugal_model, frugal)):
                out = model[1](model[0](x))
                losses = [out[:, i].pow(2).mean() for i in range(k)]
                opt.zero_grad()
                if opt is frugal and step == 2 and k == 2:
                    torch.cuda.set_sync_debug_mode("error")  # k = 2: no host read
                try:
                    opt.step(losses)
                finally:
                    torch.cuda.set_sync_debug_mode("default")
        with torch.no_grad():
            worst = max(
                float((q - p).abs().max() / p.abs().max().clamp_min(1e-30))
                for p, q in zip(rows_model.parameters(), frugal_model.parameters())
            )
        print(f"{dtype} k={k}: largest relative parameter difference {worst:.2e}")
        assert worst <= 10 * tol, (dtype, k, worst)
print("the records update takes the rows path's steps on the GPU")
EOF

# Every step_overhead method whose optional dependencies are installed.
methods=$("$PY" - <<'EOF'
import importlib.util, sys
from benchmarks import step_overhead
out = []
for m in step_overhead.METHODS:
    deps = ["torchjd"] if m.startswith("torchjd") else []
    if m == "torchjd_cagrad":
        deps += ["cvxpy", "clarabel"]
    if all(importlib.util.find_spec(d) is not None for d in deps):
        out.append(m)
print(" ".join(out))
EOF
)
# shellcheck disable=SC2086
stage step_overhead 300 "$PY" -m benchmarks.step_overhead --preset paper --models resnet18 \
  --k 2 8 --device cuda --methods $methods --out "$OUT/step_overhead"

stage step_overhead_many 180 "$PY" -m benchmarks.step_overhead --preset many --device cuda \
  --steps 20 --out "$OUT/step_overhead_many"

stage step_memory 180 "$PY" -m benchmarks.step_memory --device cuda --out "$OUT/step_memory"

echo "GPU check done in $(( $(date +%s) - started ))s, exit $status; results in $OUT"
exit "$status"
