#!/usr/bin/env bash
# Issue 21 in one call on the GPU host (carry .carry, .gpu-pack/cache, .whl with NumPy 1.26):
#  1. the decode engine alone at the served workload's size (prompt ~400 tokens: a question and
#     3 synthetic passages; 128 forced output tokens), concurrency 128;
#  2. one server (dummy e5-large-shaped embedder, 1M x 1024 synthetic index, Qwen2.5-1.5B-shaped
#     generator, answers forced to 128 tokens): rag_ensemble under open-loop Poisson arrivals at
#     RATE right after the start (the first point), at a constant RATE, and Poisson again (steady),
#     with perf/stream_ttft.py streaming beside the last; then generator and generator_stream
#     (streamed) closed-loop at concurrency 128, the same workload as 1.
#   OUT=... bash scripts/gpu/arrivals.sh
set -uo pipefail
OUT=${OUT:-perf/results}; mkdir -p $OUT
RATE=${RATE:-200}; TAG=${TAG:-arrivals}
source scripts/gpu/serve.sh
timeout 150 $PY perf/generation_bench.py --concurrency 128 --prompt 400 --output 128 --variants auto --hf-batches \
  --steps 20 --tag $TAG-engine --out $OUT 2>&1 | grep -E "^auto" | tail -2
echo "engine done +$(( $(date +%s) - t0 )) s"
$PY perf/synthetic_index.py --out /tmp/idx --count ${COUNT:-1000000} --dim 1024 --embedder $EMB > /dev/null || exit 1
echo "index built +$(( $(date +%s) - t0 )) s"
start_server /tmp/idx || exit 1
sweep() { $PY perf/sweep.py --url 127.0.0.1 --grpc-port 8001 --http-port 8000 --top-k 3 --max-tokens 128 \
  --max-trials 3 --timeout 120 --results $OUT --no-plots "$@" 2>&1 | grep -vE "^\s*$" | grep -v "model proto" | tail -4; }
sweep --models rag_ensemble --request-rate $RATE --distribution poisson constant --request-count 1024 --tag $TAG-first
( sleep 8; $PY perf/stream_ttft.py --url 127.0.0.1:8001 --index /tmp/idx --rate 10 --duration 15 \
    --label "beside rag_ensemble Poisson $RATE req/s" --out $OUT/stream_ttft_$TAG.json ) &
sweep --models rag_ensemble --request-rate $RATE --distribution poisson --request-count 2048 --tag $TAG-steady
wait
echo "arrivals done +$(( $(date +%s) - t0 )) s"
sweep --models generator generator_stream --concurrency 128 --request-count 1024 --tag $TAG-c128
echo "c128 done +$(( $(date +%s) - t0 )) s"
curl -s localhost:8002/metrics | grep -E "^nv_inference_(request_success|queue_duration_us|compute_infer_duration_us)" \
  | grep -E "rag_ensemble|generator|reranker|embedder|retriever" | head -20
grep -hE "Traceback|not healthy|Error" /tmp/serve.log | head -5
kill $SERVE; wait $SERVE
# the device returns at most 8 files: the CSVs and plots travel in one archive
( cd $OUT && tar czf arrivals_csv_png.tgz $(ls *.csv *.png 2>/dev/null) && rm -f *.csv *.png ); ls $OUT
