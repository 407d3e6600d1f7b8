# Full Triton smoke on the device: stubs get NumPy 1 and no SciPy/sklearn/CuPy (all NumPy-2 builds there).
source .carry/setup-gpu.sh
source scripts/gpu/stub_env.sh
rm -f /tmp/stubsite/cupy* /tmp/stubsite/fastrlock*
VENV_PY=$(command -v python3)
# The stub's interpreter finds `python3` on PATH to set its prefix; hide the venv's so that
# its NumPy-2 site-packages stay out of the stubs' sys.path.
export PATH=$(echo "$PATH" | tr ':' '\n' | grep -v -e '\.venv' | paste -sd:)
PYTHONUNBUFFERED=1 $VENV_PY scripts/gpu_smoke.py --from-pack .gpu-pack --out $OUT/smoke 2>&1 | grep -v "^I1\|^|\|^+\|Loading weights\|embedding passages\|Writing"
grep -E "GPU device|CPU device|CuPy is not usable|what\(\)|Failed|ERROR" $OUT/smoke/tritonserver.log | cut -c1-400 | head -12
