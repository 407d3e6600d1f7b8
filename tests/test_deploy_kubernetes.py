"""The Kubernetes manifests are valid for the API server and consistent with each other.

Validation is offline, against the API server's own OpenAPI schemas (kubernetes-validate),
strict (unknown fields are errors), for the oldest and newest Kubernetes versions we claim.
"""

import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from kustomize_lite import build

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
OVERLAYS = ["gpu", "cpu"]
VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]


def rendered(overlay: str) -> dict[str, dict]:
    return {r["kind"]: r for r in build(K8S / "overlays" / overlay)}


def adapter_rule() -> dict:
    values = yaml.safe_load((K8S / "monitoring" / "prometheus-adapter-values.yaml").read_text())
    (rule,) = values["rules"]["custom"]
    return rule


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("folder", ["base", "overlays/gpu", "overlays/cpu"])
def test_every_resource_validates_strictly(folder, version):
    resources = build(K8S / folder)
    assert {r["kind"] for r in resources} >= {"ConfigMap", "Deployment", "Service",
                                              "PodDisruptionBudget", "HorizontalPodAutoscaler"}
    for resource in resources:
        kubernetes_validate.validate(resource, version, strict=True)


def test_validation_catches_a_broken_manifest():
    deployment = rendered("gpu")["Deployment"]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] = [8000]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)


def test_probes_use_tritons_health_endpoints_and_startup_covers_warm_up():
    container = rendered("gpu")["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/v2/health/ready"
    # a cold start downloads the production models: allow at least 10 minutes
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600
    assert container["command"][:2] == ["tritonrag", "serve"]


def test_gpu_overlay_requests_a_gpu_and_shares_the_cache_the_cpu_one_does_not():
    gpu = rendered("gpu")
    pod = gpu["Deployment"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    (cache,) = [v for v in pod["volumes"] if v["name"] == "cache"]
    assert cache["persistentVolumeClaim"]["claimName"] == gpu["PersistentVolumeClaim"]["metadata"]["name"]
    assert gpu["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]
    assert gpu["ConfigMap"]["data"]["TRITONRAG_GENERATOR"] == "Qwen/Qwen2.5-1.5B-Instruct"
    assert pod["containers"][0]["image"] == "registry.example.com/tritonrag:0.1.0"
    cpu = rendered("cpu")
    cpu_pod = cpu["Deployment"]["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in cpu_pod["containers"][0]["resources"].get("limits", {})
    assert "PersistentVolumeClaim" not in cpu
    assert cpu["ConfigMap"]["data"]["TRITONRAG_GENERATOR"].startswith("builtin:")
    assert all(r["metadata"]["namespace"] == "tritonrag" for r in build(K8S / "overlays" / "cpu"))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_pdb_and_hpa_point_at_the_deployment(overlay):
    r = rendered(overlay)
    deployment = r["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    ports = {p["name"]: p["containerPort"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert all(pod_labels[k] == v for k, v in r["Service"]["spec"]["selector"].items())
    assert {p["targetPort"] for p in r["Service"]["spec"]["ports"]} == set(ports)
    assert all(pod_labels[k] == v for k, v in r["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items())
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    hpa = r["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": deployment["metadata"]["name"]}
    assert hpa["minReplicas"] >= 2  # with the PDB's maxUnavailable 1, a drain never empties the service
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300


def test_hpa_metric_is_the_one_the_adapter_serves_from_pod_labelled_series():
    (metric,) = rendered("gpu")["HorizontalPodAutoscaler"]["spec"]["metrics"]
    rule = adapter_rule()
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == rule["name"]["as"]
    assert re.search(rule["name"]["matches"], rule["seriesQuery"].split("{")[0])
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
    assert "<<.LabelMatchers>>" in rule["metricsQuery"] and "<<.GroupBy>>" in rule["metricsQuery"]
    # the scrape job gives every series the labels that the rule maps to pods
    scrape = yaml.safe_load((K8S / "monitoring" / "prometheus-scrape.yaml").read_text())
    targets = {c.get("target_label") for c in scrape["scrape_configs"][0]["relabel_configs"]}
    assert {"namespace", "pod"} <= targets
    annotations = rendered("gpu")["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == "8002"
