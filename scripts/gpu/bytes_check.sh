# usage: bash scripts/gpu/bytes_check.sh  (after sourcing setup-gpu.sh)
$TRITONSERVER --model-repository=$(pwd)/scripts/gpu/bytes_repo --backend-directory=$TRITON_BACKENDS --http-port 8200 --grpc-port 8201 --metrics-port 8202 > /tmp/bc.log 2>&1 &
pid=$!
for i in $(seq 60); do curl -sf localhost:8200/v2/health/ready && break; sleep 1; done
curl -s localhost:8200/v2/models/echo/infer -d '{"inputs":[{"name":"q","datatype":"BYTES","shape":[1,1],"data":["What does the with statement do?"]}]}'; echo
grep -E "numpy|GPU device|CPU device|what\(\)|OK |FAIL " /tmp/bc.log | cut -c1-1800
kill $pid; wait $pid
