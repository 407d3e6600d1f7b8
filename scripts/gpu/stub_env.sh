# The device's Python has NumPy 2 (and SciPy/sklearn built for it); Triton 2.51's stub
# needs NumPy 1. Build a site-packages view without numpy/scipy/sklearn, plus NumPy 1.26.
SP=$(python3 -c 'import site;print(site.getsitepackages()[0])')
mkdir -p /tmp/stubsite && for f in $SP/*; do case $(basename $f) in numpy*|scipy*|sklearn*|scikit_learn*) ;; *) ln -sf $f /tmp/stubsite/ ;; esac; done
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/np1 .whl/numpy-1.26.4-*.whl 2>/dev/null
export TRITONRAG_STUB_PYTHONPATH=/tmp/np1:/tmp/carry/site:/tmp/stubsite
