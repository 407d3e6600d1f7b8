"""docker-compose.yml follows the Compose spec; its load balancer, Prometheus and Grafana
configs agree with its services; the dashboard loads (no Docker engine in CI to run them)."""

import json
import re
import importlib.util
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
REPLICAS = sorted(name for name in SERVICES if name.startswith("replica-"))
DASHBOARD = ROOT / "deploy" / "grafana" / "tritonrag.json"


def compose_schema() -> dict:
    # The Compose spec's JSON schema as docker-compose 1.29.2 (the last Python release) ships
    # it; installed with --no-deps by `make setup` for this file only.
    # Located without importing it (its package needs dependencies we do not install).
    (package,) = importlib.util.find_spec("compose").submodule_search_locations
    return json.loads((Path(package) / "config" / "compose_spec.json").read_text())


def test_compose_file_validates_against_the_compose_spec():
    jsonschema.Draft201909Validator(compose_schema()).validate(COMPOSE)


def test_the_schema_check_catches_a_broken_file():
    broken = json.loads(json.dumps(COMPOSE))
    broken["services"]["lb"]["depends_on"] = {"replica-0": {"condition": "when_ready"}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft201909Validator(compose_schema()).validate(broken)


def test_profiles_default_is_one_replica_behind_the_balancer():
    always = {name for name, s in SERVICES.items() if "profiles" not in s}
    assert always == {"replica-0", "lb"}
    assert SERVICES["replica-1"]["profiles"] == ["multi-gpu"]
    assert {n for n, s in SERVICES.items() if "monitoring" in s.get("profiles", [])} == {"prometheus", "grafana"}


def test_each_replica_gets_its_own_gpu_and_the_shared_cache():
    seen = set()
    for name in REPLICAS:
        service = SERVICES[name]
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
        (gpu,) = device["device_ids"]
        seen.add(gpu)
        assert "model-cache:/cache" in service["volumes"]
        assert any("/v2/health/ready" in part for part in service["healthcheck"]["test"])
        assert "Qwen/Qwen2.5-1.5B-Instruct" in service["environment"]["TRITONRAG_GENERATOR"]
    assert len(seen) == len(REPLICAS) == 2


def test_everything_published_binds_loopback_unless_told_otherwise():
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            assert port.startswith("${TRITONRAG_BIND:-127.0.0.1}:"), (name, port)
    published = {p.rsplit(":", 2)[-1] for p in SERVICES["lb"]["ports"]}
    assert published == {"8000", "8001"}


def test_mounted_files_exist():
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), (name, source)


def test_load_balancer_sends_http_and_grpc_to_every_replica():
    conf = (ROOT / "deploy" / "compose" / "nginx.conf").read_text()
    upstreams = dict(re.findall(r"upstream (\w+) \{(.*?)\}", conf, re.S))
    servers = {name: re.findall(r"server ([\w.-]+):(\d+) resolve", body) for name, body in upstreams.items()}
    assert servers["triton_http"] == [(r, "8000") for r in REPLICAS]
    assert servers["triton_grpc"] == [(r, "8001") for r in REPLICAS]
    assert "grpc_pass grpc://triton_grpc;" in conf and "proxy_pass http://triton_http;" in conf
    assert re.search(r"listen 8001;\s*http2 on;", conf)
    assert all("max_fails=" in line for line in conf.splitlines() if " resolve " in line)


def test_prometheus_scrapes_every_replica_with_a_pod_label():
    config = yaml.safe_load((ROOT / "deploy" / "compose" / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    targets = {(t["targets"][0], t["labels"]["pod"]) for t in job["static_configs"]}
    assert targets == {(f"{r}:8002", r) for r in REPLICAS}


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


def test_dashboard_loads_and_shows_what_the_issue_asks():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "tritonrag"
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for wanted in ("throughput", "p99", "queue time", "gpu utilisation"):
        assert wanted in titles
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for expr in dashboard_exprs():
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
    provider = yaml.safe_load((ROOT / "deploy/compose/grafana/provisioning/dashboards/tritonrag.yaml").read_text())
    mount = [v for v in SERVICES["grafana"]["volumes"] if v.startswith("./deploy/grafana/")][0]
    assert mount.split(":")[1].startswith(provider["providers"][0]["options"]["path"])
