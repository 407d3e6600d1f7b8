#!/usr/bin/env bash
# GPU benchmarks, one command per step; any model specs.
#
#   EMBEDDER=SPEC GENERATOR=SPEC bash perf/run_gpu.sh STEP [RESULTS_DIR]
#
# STEP: sweep (every stage and both pipelines over gRPC, concurrency 1..256), sweep-http
#       (the same over HTTP),
#       rate (rag_ensemble at constant/Poisson/bursty arrivals), ablate (batching,
#       delays, instances, BLS, and the FastAPI baseline when fastapi/uvicorn import),
#       or all. RESULTS_DIR defaults to $OUT (device tool) or perf/results.
# On the device tool's GPU host carry `.carry` (bash ../shared/gpu/make-carry.sh) and
# `.whl` (NumPy 1.26 for the stubs, see scripts/gpu/README.md); both are used when present.
# Each step ends well inside 10 minutes with small dummy models; raise or lower the
# levels with CONCURRENCY="1 8 32 128 256", RATES="8 32 128", COUNT=64 (requests per
# perf_analyzer window, 3 windows a point), REQUESTS=512 (per ablation variant), MAX_TOKENS=32.
set -euo pipefail
STEP=${1:-all}
RESULTS=${2:-${OUT:-perf/results}}
if [ -f .carry/setup-gpu.sh ]; then source .carry/setup-gpu.sh; fi
if [ -d .whl ] && [ -f scripts/gpu/stub_env.sh ]; then
  source scripts/gpu/stub_env.sh
  rm -f /tmp/stubsite/cupy* /tmp/stubsite/fastrlock*
fi
PY=$(command -v python3)
# The stubs find `python3` on PATH for their prefix: keep a venv's NumPy 2 out of them.
export PATH=$(echo "$PATH" | tr ':' '\n' | grep -v -e '\.venv' | paste -sd:)
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
SPECS=()
[ -n "${EMBEDDER:-}" ] && SPECS+=(--embedder "$EMBEDDER")
[ -n "${GENERATOR:-}" ] && SPECS+=(--generator "$GENERATOR")
CONCURRENCY=${CONCURRENCY:-1 8 32 128 256}
COUNT=${COUNT:-64}
RATES=${RATES:-8 32 128}
REQUESTS=${REQUESTS:-512}
MAX_TOKENS=${MAX_TOKENS:-32}
TAG=${TAG:-gpu}
mkdir -p "$RESULTS"
for PROTOCOL in grpc http; do
  NAME=sweep; [ $PROTOCOL = http ] && NAME=sweep-http
  if [ "$STEP" = $NAME ] || [ "$STEP" = all ]; then
    $PY perf/sweep.py --start-server "${SPECS[@]}" --max-queue generator=4096 --max-queue rag_bls=4096 \
      --models rag_ensemble rag_bls embedder retriever generator --protocols $PROTOCOL \
      --concurrency $CONCURRENCY --request-count "$COUNT" --max-tokens "$MAX_TOKENS" --timeout 90 \
      --results "$RESULTS" --tag "$TAG-$PROTOCOL"
  fi
done
if [ "$STEP" = rate ] || [ "$STEP" = all ]; then
  $PY perf/sweep.py --start-server "${SPECS[@]}" --max-queue generator=4096 --models rag_ensemble \
    --request-rate $RATES --distribution constant poisson bursty --burst 16 --request-count "$COUNT" \
    --max-tokens "$MAX_TOKENS" \
    --timeout 90 --results "$RESULTS" --tag "$TAG-rate"
fi
if [ "$STEP" = ablate ] || [ "$STEP" = all ]; then
  BASELINE=$($PY -c 'import fastapi, uvicorn' 2>/dev/null && echo baseline || true)
  $PY perf/ablate.py "${SPECS[@]}" --concurrency 64 --requests "$REQUESTS" --max-seconds 120 \
    --max-tokens "$MAX_TOKENS" --variants batching-on batching-off delay-0ms delay-1ms delay-5ms instances-2 bls \
    $BASELINE --results "$RESULTS" --tag "$TAG"
fi
