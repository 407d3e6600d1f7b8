"""Exact top-k vector search: the `ExactSearch` facade and its NumPy path (`exact`), the
CuPy path (`cupy_search`) with its CUDA C kernels (`cuda_c_kernels`), the torch path
(`torch_search`), the shared top-k order and key format (`topk`), and the fused
Triton-language score + top-k kernels (`fused/`)."""
