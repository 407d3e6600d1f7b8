# Sourced by the GPU host scripts: the environment, then `start_server INDEX [EXTRA tritonrag serve args]`
# starts tritonrag serve (dummy production-shaped models, dense retrieval, forced output length) on
# 8000/8001/8002 in the background and waits until it is ready or has died (SERVE: its pid).
[ "${GROW_SHM:-1}" = 1 ] && mount -o remount,size=16G /dev/shm 2>/dev/null   # a VM's small /dev/shm kills stubs (SIGBUS)
source .carry/setup-gpu.sh
source scripts/gpu/stub_env.sh
rm -f /tmp/stubsite/cupy* /tmp/stubsite/fastrlock*   # CuPy 14 there needs NumPy 2: the retriever uses torch
PY=$(command -v python3)
export PATH=$(echo "$PATH" | tr ':' '\n' | grep -v -e '\.venv' | paste -sd:)
export TRITONRAG_CACHE_DIR=$PWD/.gpu-pack/cache PYTHONPATH=$PWD:$PWD/client:$PYTHONPATH PYTHONUNBUFFERED=1
EMB=${EMB:-dummy:multilingual-e5-large-instruct}
GEN=${GEN:-dummy:qwen2.5-1.5b-instruct}
t0=$(date +%s)

start_server() {
  local index=$1; shift
  $PY -m tritonrag serve --embedder $EMB --generator $GEN --index $index \
    --param retriever.fusion=dense --param generator_stream.ignore_eos=true "$@" ${EXTRA_PARAMS:-} \
    --max-queue embedder=4096 --max-queue retriever=4096 --max-queue reranker=4096 --max-queue generator=4096 \
    --no-supervise --http-port 8000 --grpc-port 8001 --metrics-port 8002 > /tmp/serve.log 2>&1 &
  SERVE=$!
  for i in $(seq 400); do curl -sf localhost:8000/v2/health/ready && break; kill -0 $SERVE 2>/dev/null || break; sleep 1; done
  echo "ready at +$(( $(date +%s) - t0 )) s"
  curl -sf localhost:8000/v2/health/ready || { tail -50 /tmp/serve.log; return 1; }
}
