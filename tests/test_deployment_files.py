"""The Docker image keeps the shape users rely on (a Docker engine is not available in CI)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_dockerfile_builds_on_the_triton_image_that_matches_server_2_51():
    text = (ROOT / "Dockerfile").read_text()
    assert "FROM nvcr.io/nvidia/tritonserver:24.10-py3" in text
    assert '"numpy<2"' in text  # the 2.51 Python stub breaks on BYTES tensors under NumPy 2
    assert "HEALTHCHECK" in text and "/v2/health/ready" in text
    assert 'CMD ["tritonrag", "serve"' in text
