"""Scores and top-k fused in one Triton-language kernel per corpus tile: launchers and the
fuse-or-not policy (`launch`), the kernels (`triton_lang_kernels`) and CUDA-graph replay
of a whole fused search (`graphs`)."""
