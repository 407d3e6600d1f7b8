"""The GPU deployment files keep the shape users rely on (a Docker engine is not available in CI)."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_dockerfile_builds_on_the_triton_image_that_matches_server_2_51():
    text = (ROOT / "Dockerfile").read_text()
    assert "FROM nvcr.io/nvidia/tritonserver:24.10-py3" in text
    assert '"numpy<2"' in text  # the 2.51 Python stub breaks on BYTES tensors under NumPy 2
    assert "HEALTHCHECK" in text and "/v2/health/ready" in text
    assert 'CMD ["tritonrag", "serve"' in text


def test_compose_reserves_gpus_publishes_ports_and_checks_health():
    service = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["triton-rag"]
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    published = {p.rsplit(":", 2)[-1] for p in service["ports"]}
    assert published == {"8000", "8001", "8002"}
    assert all(p.startswith("${TRITONRAG_BIND:-127.0.0.1}:") for p in service["ports"])
    assert any("/v2/health/ready" in part for part in service["healthcheck"]["test"])
    assert any(v.endswith(":/cache") for v in service["volumes"])
    assert "Qwen/Qwen2.5-1.5B-Instruct" in service["environment"]["TRITONRAG_GENERATOR"]
    assert "multilingual-e5-large-instruct" in service["environment"]["TRITONRAG_EMBEDDER"]
