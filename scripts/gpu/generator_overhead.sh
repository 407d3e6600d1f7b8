#!/usr/bin/env bash
# The engine in process vs behind Triton at c=128 (issue 21): generation_bench (engine alone), the
# Generator with its tokenizer in process (generator_inproc.py, prompts rendered per request or once),
# then `generator` through Triton under perf_analyzer with py-spy on the engine stub (raw stacks to $OUT).
#   bash scripts/gpu/generator_overhead.sh      (carry .carry, .gpu-pack, .whl with numpy 1.26 + py-spy)
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
source scripts/gpu/serve.sh
python3 -m pip install -q --no-index --no-deps --target /tmp/pyspy .whl/py_spy*.whl 2>&1 | tail -1
PYSPY=$(ls /tmp/pyspy/bin/py-spy 2>/dev/null || find /tmp/pyspy -name py-spy -type f | head -1)
echo "pyspy=$PYSPY"
if [ "${INPROC:-1}" = 1 ]; then
timeout 240 $PY perf/generation_bench.py --concurrency 128 --variants auto --hf-batches --steps 20 --tag probe --out $OUT 2>&1 | grep -vE "^\s*$" | tail -4
echo "inproc done +$(( $(date +%s) - t0 ))"
fi
if [ "${GENPROC:-1}" = 1 ]; then
timeout 150 $PY scripts/gpu/generator_inproc.py --prerender 2>&1 | grep -E "^\{|prompt tokens|Error" | tail -3
timeout 150 $PY scripts/gpu/generator_inproc.py 2>&1 | grep -E "^\{|Error" | tail -3
echo "generator inproc done +$(( $(date +%s) - t0 ))"
fi
$PY perf/synthetic_index.py --out /tmp/idx --count 20000 --dim 1024 --embedder $EMB > /dev/null 2>&1 || echo index failed
start_server /tmp/idx || exit 1
STUB=$(pgrep -f "triton_python_backend_stub.*generator_stream" | head -1); FWD=$(pgrep -f "triton_python_backend_stub.*generator_0" | head -1)
echo "stub=$STUB fwd=$FWD"
for M in generator; do
  ( sleep 15; $PYSPY record -p $STUB -d 12 -r 200 --nonblocking --threads -f raw -o $OUT/pyspy_${M}_engine.txt > /dev/null 2>&1;
    $PYSPY record -p $STUB -d 8 -r 200 --nonblocking --gil -f raw -o $OUT/pyspy_${M}_engine_gil.txt > /dev/null 2>&1;
    timeout 20 $PYSPY dump -p $STUB > $OUT/pyspy_${M}_dump.txt 2>&1 ) & PROF=$!
  $PY perf/sweep.py --url 127.0.0.1 --grpc-port 8001 --http-port 8000 --models $M --concurrency 128 --top-k 3 \
    --max-tokens 128 --max-trials 3 --request-count 2048 --timeout 150 --results $OUT --tag probe --no-plots 2>&1 | grep -vE "^\s*$" | tail -6
  wait $PROF   # by pid: a bare `wait` would also wait for the server, which never ends
  echo "$M done +$(( $(date +%s) - t0 ))"
done
curl -s localhost:8002/metrics | grep -E "^tritonrag_generator|nv_inference_(request_success|queue_duration_us|compute_infer_duration_us|exec_count)" | head -30
grep -hE "Traceback|not healthy|Error" /tmp/serve.log | head
kill $SERVE; wait $SERVE
ls -la $OUT
