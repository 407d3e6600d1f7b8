#!/usr/bin/env bash
# Issue 21's serving figures on the GPU host, in parts (PARTS, default all three, in this order):
#  engine    the decode engine in process at the served workload's size (prompt ~400 tokens: a
#            question and 3 synthetic passages; 128 forced output tokens): decode step and closed
#            loop at CONCURRENCY (128), prefill calls of 1/4/16 prompts, open-loop Poisson arrivals
#            at RATES for each PREFILL_WAITS;
#  tests     the engine's bf16 CUDA-graph path against transformers (tests/test_engine_reference.py);
#  c128      one server (dummy e5-large-shaped embedder, COUNT x 1024 synthetic index,
#            Qwen2.5-1.5B-shaped generator, answers forced to 128 tokens): generator and
#            generator_stream (streamed) closed loop at concurrency 128, the same workload; with
#            PROFILE=1, py-spy (all threads, then GIL holders) on the engine's stub during each, and
#            GIL holders on a `generator` forwarder's stub during generator's;
#  arrivals  rag_ensemble under open-loop Poisson arrivals at RATE right after the start (the first
#            point), at a constant RATE, and Poisson again (steady), with perf/stream_ttft.py
#            streaming beside the last; STEADY_ASYNC=1 repeats the steady point with perf_analyzer --async.
# nvidia-smi samples the GPU's utilisation every 200 ms throughout (gpu_util.csv, in the archive).
#   OUT=... PARTS="engine c128" bash scripts/gpu/arrivals.sh   (carry .carry, .gpu-pack/cache, .whl)
set -uo pipefail
OUT=${OUT:-perf/results}; mkdir -p $OUT
RATE=${RATE:-200}; TAG=${TAG:-arrivals}; PARTS=${PARTS:-engine c128 arrivals}
source scripts/gpu/serve.sh
has() { [[ " $PARTS " == *" $1 "* ]]; }
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used,power.draw --format=csv,noheader -lms 200 \
  > $OUT/gpu_util.csv 2>/dev/null & SMI=$!
if has engine; then
  timeout ${ENGINE_S:-300} $PY perf/generation_bench.py --concurrency ${CONCURRENCY:-128} --prompt 400 --output 128 \
    --variants auto --hf-batches --steps 20 --rates ${RATES:-200} --prefill-wait-ms ${PREFILL_WAITS:-0} ${ENGINE_ARGS:-} \
    --tag $TAG-engine --out $OUT 2>&1 | grep -E "^auto (open|prefill|\{)|^auto \[" | cut -c1-330
  echo "engine done +$(( $(date +%s) - t0 )) s"
fi
if has tests; then
  PYTHONPATH=$PWD:$PWD/client timeout 240 $PY -m pytest -q -m gpu tests/test_engine_reference.py 2>&1 | tail -3
  echo "tests done +$(( $(date +%s) - t0 )) s"
fi
has c128 || has arrivals || { kill $SMI; exit 0; }
if [ "${PROFILE:-0}" = 1 ]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/pyspy .whl/py_spy*.whl 2>&1 | tail -1
  PYSPY=$(ls /tmp/pyspy/bin/py-spy 2>/dev/null || find /tmp/pyspy -name py-spy -type f | head -1)
fi
$PY perf/synthetic_index.py --out /tmp/idx --count ${COUNT:-1000000} --dim 1024 --embedder $EMB > /dev/null || exit 1
echo "index built +$(( $(date +%s) - t0 )) s"
start_server /tmp/idx || exit 1
sweep() { $PY perf/sweep.py --url 127.0.0.1 --grpc-port 8001 --http-port 8000 --top-k 3 --max-tokens 128 \
  --max-trials 3 --timeout 120 --results $OUT --no-plots "$@" 2>&1 | grep -vE "^\s*$" | grep -v "model proto" | tail -4; }
if has arrivals; then
  sweep --models rag_ensemble --request-rate $RATE --distribution ${FIRST_DISTS:-poisson constant} --request-count 1024 --tag $TAG-first
  ( sleep 8; timeout 120 $PY perf/stream_ttft.py --url 127.0.0.1:8001 --index /tmp/idx --rate 10 --duration 15 \
      --label "beside rag_ensemble Poisson $RATE req/s" --out $OUT/stream_ttft_$TAG.json ) & TTFT=$!
  sweep --models rag_ensemble --request-rate $RATE --distribution poisson --request-count 2048 --tag $TAG-steady
  wait $TTFT   # by pid: a bare `wait` would also wait for the server and nvidia-smi, which never end
  if [ "${STEADY_ASYNC:-0}" = 1 ]; then   # the same point with perf_analyzer --async (no thread per request)
    sweep --models rag_ensemble --request-rate $RATE --distribution poisson --request-count 2048 --async \
      --tag $TAG-steady-async
  fi
  echo "arrivals done +$(( $(date +%s) - t0 )) s"
fi
if has c128; then
  STUB=$(pgrep -f "triton_python_backend_stub.*generator_stream" | head -1)
  FWD=$(pgrep -f "triton_python_backend_stub.*generator_0" | head -1)
  for M in ${C128_MODELS:-generator generator_stream}; do
    PROF=()
    if [ "${PROFILE:-0}" = 1 ]; then
      ( sleep 12; timeout 20 $PYSPY record -p $STUB -d 6 -r 200 --nonblocking --threads -f raw -o $OUT/pyspy_${M}_threads.txt > /dev/null 2>&1
        timeout 20 $PYSPY record -p $STUB -d 5 -r 200 --nonblocking --gil -f raw -o $OUT/pyspy_${M}_gil.txt > /dev/null 2>&1 ) & PROF+=($!)
      if [ $M = generator ]; then
        ( sleep 12; timeout 20 $PYSPY record -p $FWD -d 6 -r 200 --nonblocking --threads -f raw \
          -o $OUT/pyspy_forwarder_threads.txt > /dev/null 2>&1 ) & PROF+=($!)
      fi
    fi
    sweep --models $M --concurrency 128 --request-count ${C128_COUNT:-1536} --tag $TAG-c128-$M
    [ ${#PROF[@]} -gt 0 ] && wait "${PROF[@]}"
    echo "$M done +$(( $(date +%s) - t0 )) s"
  done
fi
curl -s localhost:8002/metrics | grep -E "^nv_inference_(request_success|queue_duration_us|compute_infer_duration_us)" \
  | grep -E "rag_ensemble|generator|reranker|embedder|retriever" | head -20
grep -hE "Traceback|not healthy|Error" /tmp/serve.log | head -5
kill $SERVE $SMI; wait $SERVE
# the device returns few files: the CSVs, plots and profiles travel in one archive
( cd $OUT && tar czf ${TAG}_extras.tgz $(ls *.csv *.png pyspy_* 2>/dev/null) && rm -f *.csv *.png pyspy_* ); ls $OUT
