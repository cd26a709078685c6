"""The example Kubernetes manifests stay consistent with the server they deploy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from talkwire.server.app import READY_SERVICE
from talkwire.server.bus import BusSettings
from talkwire.server.config import load_config
from talkwire.server.events.routing import parse_topics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"


def _docs() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(DEPLOY.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and "kind" in doc and doc["kind"] != "Kustomization":
                out[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return out


def test_configmap_and_secret_make_a_valid_replica_config(tmp_path: Path) -> None:
    docs = _docs()
    config_file = tmp_path / "config.yaml"
    config_file.write_text(docs["ConfigMap/talkwire-config"]["data"]["config.yaml"])
    env = dict(docs["Secret/talkwire-secrets"]["stringData"])
    env["TALKWIRE_SERVER__REPLICA"] = "talkwire-7c9f-abcde"
    config = load_config(str(config_file), env=env)
    assert config.server.replica == "talkwire-7c9f-abcde"
    assert config.store.url.startswith("postgresql+asyncpg://")
    bus = BusSettings.from_config(config.bus)
    assert (bus.kind, bus.url) == ("redis", "redis://redis:6379/0")
    assert config.events["group_id"]
    assert parse_topics(config.events["topics"])
    assert config.server.max_connection_age > 0


def test_deployment_probes_and_grace_periods() -> None:
    docs = _docs()
    config = yaml.safe_load(docs["ConfigMap/talkwire-config"]["data"]["config.yaml"])
    pod = docs["Deployment/talkwire"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["grpc"]["service"] == READY_SERVICE
    assert container["livenessProbe"]["grpc"]["service"] == ""
    env = {e["name"]: e for e in container["env"]}
    assert env["TALKWIRE_SERVER__REPLICA"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > pre_stop + config["server"]["grace_period"]
    assert docs["PodDisruptionBudget/talkwire"]["spec"]["maxUnavailable"] == 1
    assert docs["Service/talkwire"]["spec"]["clusterIP"] == "None"
