"""The Kubernetes manifests of deploy/k8s/ as a cluster would receive them, checked without a cluster:

- both overlays render with `kubectl kustomize` (the kubectl on PATH, or Debian's, installed by
  `python -m apgms.devservers` when missing);
- `kubernetes-validate` accepts every rendered object, strictly (no unknown fields), against the schemas of the
  oldest and the newest Kubernetes it ships (KUBERNETES_VERSIONS);
- the rendered objects do what docs/ops/kubernetes.md says: every Deployment has its probes, the preStop wait of
  SHUTDOWN_DELAY_S, a grace period above the whole shutdown, resources and a locked-down security context, and a
  Service, PodDisruptionBudget and HorizontalPodAutoscaler selecting it; only the proxy has an Ingress; the
  NetworkPolicies, evaluated here as a cluster would, let only the proxy (and the services themselves) reach the
  services, only the services and the migration Job reach PostgreSQL and Redis, and an in-cluster Prometheus reaches
  each Deployment's metrics port and nothing else; no Secret is rendered, and each Secret read is named in the docs;
  production pins its image by digest;
- every variable docker-compose.yml gives a process is given to the same process here (compared with the compose
  file's own environment keys, so a variable added there and forgotten here fails), and each process's real settings
  loader accepts the environment the overlay gives it (Secrets filled with values of the right shape).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import typer
import yaml
from test_compose_config import LOADERS, MIGRATE_COMMAND

from apgms import common, devstack
from apgms.devservers import DevServerError, ensure_kubectl
from shared.config import GRACEFUL_TIMEOUT_S, SHUTDOWN_DELAY_S, new_master_key, new_service_client_secret
from shared.kek import new_kek

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("dev", "production")
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCS = ROOT / "docs" / "ops" / "kubernetes.md"
# The oldest and the newest schema kubernetes-validate ships: the manifests use only APIs GA in both.
KUBERNETES_VERSIONS = ("1.25.0", "1.37.0")
RENDER_TIMEOUT_S = 60
SERVICE_NAMES = ("auth", "core", "compliance", "regulator")
DEPLOYMENT_NAMES = (*SERVICE_NAMES, "proxy")
DATASTORE_PORTS = frozenset({5432, 6379})
# Somewhere outside the cluster that no policy names (the datastores are managed, outside it).
EXTERNAL = "external"
# An in-cluster Prometheus as kube-prometheus runs it: the Prometheus Operator's pod label, in the namespace monitoring.
PROMETHEUS = {"app.kubernetes.io/name": "prometheus"}
PROMETHEUS_NAMESPACE = "monitoring"

Obj = dict[str, Any]


@pytest.fixture(scope="module")
def kubectl() -> Path:
    try:
        return ensure_kubectl(install=False)
    except DevServerError as error:
        pytest.fail(str(error))


def render(kubectl: Path, name: str) -> str:
    """The overlay `name` as `kubectl kustomize` renders it: what a cluster would receive, as YAML text."""
    result = subprocess.run(
        [str(kubectl), "kustomize", str(K8S / "overlays" / name)],
        capture_output=True,
        text=True,
        timeout=RENDER_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, f"kubectl kustomize overlays/{name} failed:\n{result.stderr}"
    return result.stdout


def objects_of(rendered: str) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest, kubectl: Path) -> tuple[str, list[Obj]]:
    """The overlay's name and its rendered objects."""
    name: str = request.param
    objects = objects_of(render(kubectl, name))
    assert objects, f"overlays/{name} rendered nothing"
    return name, objects


def of_kind(objects: Iterable[Obj], kind: str) -> dict[str, Obj]:
    return {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == kind}


def selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A label selector (matchLabels and matchExpressions In/NotIn/Exists/DoesNotExist) against a set of labels."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def pod_templates(objects: list[Obj]) -> dict[str, Obj]:
    """Every pod template (Deployments and Jobs), by workload name."""
    return {obj["metadata"]["name"]: obj["spec"]["template"] for obj in objects if obj["kind"] in ("Deployment", "Job")}


def env_of(template: Obj) -> dict[str, Obj]:
    (container,) = template["spec"]["containers"]
    return {entry["name"]: entry for entry in container.get("env", [])}


def named_ports(template: Obj) -> dict[str, int]:
    """The pod's container ports by name (a NetworkPolicy may name a port instead of numbering it)."""
    (container,) = template["spec"]["containers"]
    return {port["name"]: port["containerPort"] for port in container.get("ports", []) if "name" in port}


def test_overlays_render_and_every_object_validates(overlay: tuple[str, list[Obj]]) -> None:
    name, objects = overlay
    kinds = {obj["kind"] for obj in objects}
    for kind in ("Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "Job", "Ingress"):
        assert kind in kinds, f"overlays/{name} renders no {kind}"
    assert "NetworkPolicy" in kinds
    for obj in objects:
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as error:
                pytest.fail(f"overlays/{name}: {obj['kind']}/{obj['metadata']['name']} invalid for {version}: {error}")
    namespaces = {obj["metadata"].get("namespace") for obj in objects}
    assert len(namespaces) == 1 and None not in namespaces, f"overlays/{name}: one namespace for all, got {namespaces}"


def test_every_deployment_probes_drains_and_is_locked_down(overlay: tuple[str, list[Obj]]) -> None:
    name, objects = overlay
    deployments = of_kind(objects, "Deployment")
    assert set(deployments) == set(DEPLOYMENT_NAMES)
    workloads = pod_templates(objects)
    for workload, template in workloads.items():
        where = f"overlays/{name} {workload}"
        spec = template["spec"]
        (container,) = spec["containers"]
        pod_security = spec["securityContext"]
        security = container["securityContext"]
        assert pod_security["runAsNonRoot"] is True and pod_security["runAsUser"] != 0, where
        assert pod_security["seccompProfile"]["type"] == "RuntimeDefault", where
        assert security["allowPrivilegeEscalation"] is False, where
        assert security["readOnlyRootFilesystem"] is True, where
        assert security["capabilities"]["drop"] == ["ALL"], where
        assert security.get("privileged", False) is False, where
        assert spec["automountServiceAccountToken"] is False, where
        mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]], f"{where}: /tmp must be a writable emptyDir"
        for bound in ("requests", "limits"):
            assert set(container["resources"][bound]) == {"cpu", "memory"}, f"{where}: {bound}"
        assert ":" in container["image"], f"{where}: the overlay pins the image tag"
        if name == "production":
            # By digest: a tag can be moved to another image (and checkov's CKV_K8S_43 and CKV_K8S_15 ask for it).
            assert re.fullmatch(r"[^@]+@sha256:[0-9a-f]{64}", container["image"]), f"{where}: {container['image']}"

    for deployment_name, deployment in deployments.items():
        where = f"overlays/{name} {deployment_name}"
        template = deployment["spec"]["template"]
        (container,) = template["spec"]["containers"]
        port = next(p["containerPort"] for p in container["ports"] if p["name"] == "http")
        assert env_of(template)["PORT"]["value"] == str(port), where
        assert container["readinessProbe"]["httpGet"]["path"] == "/ready", where
        assert container["livenessProbe"]["httpGet"]["path"] == "/health", where
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            assert container[probe]["httpGet"]["port"] in ("http", port), where
        # The preStop wait is SHUTDOWN_DELAY_S, and the grace period covers it, the process's own delay and its
        # graceful timeout: the kubelet's SIGKILL must never come first.
        env = env_of(template)
        shutdown_delay_s = float(env["SHUTDOWN_DELAY_S"]["value"])
        graceful_timeout_s = float(env["GRACEFUL_TIMEOUT_S"]["value"])
        assert (shutdown_delay_s, graceful_timeout_s) == (SHUTDOWN_DELAY_S, GRACEFUL_TIMEOUT_S), where
        command = container["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep" and float(command[1]) == shutdown_delay_s, f"{where}: preStop {command}"
        grace = template["spec"]["terminationGracePeriodSeconds"]
        assert grace > float(command[1]) + shutdown_delay_s + graceful_timeout_s, f"{where}: grace period {grace}"
        assert "replicas" not in deployment["spec"], f"{where}: replicas belong to the autoscaler"
        assert selects(deployment["spec"]["selector"], template["metadata"]["labels"]), where


def test_every_deployment_has_a_service_budget_and_autoscaler(overlay: tuple[str, list[Obj]]) -> None:
    name, objects = overlay
    deployments = of_kind(objects, "Deployment")
    services = of_kind(objects, "Service")
    budgets = list(of_kind(objects, "PodDisruptionBudget").values())
    autoscalers = list(of_kind(objects, "HorizontalPodAutoscaler").values())
    templates = pod_templates(objects)
    for deployment_name, deployment in deployments.items():
        where = f"overlays/{name} {deployment_name}"
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        other_labels = [t["metadata"]["labels"] for n, t in templates.items() if n != deployment_name]
        # Each selects this Deployment's pods and no other workload's.
        matching_budgets = [b for b in budgets if selects(b["spec"]["selector"], labels)]
        assert len(matching_budgets) == 1, f"{where}: {len(matching_budgets)} PodDisruptionBudgets"
        assert not any(selects(matching_budgets[0]["spec"]["selector"], other) for other in other_labels), where
        assert matching_budgets[0]["spec"].get("maxUnavailable") == 1, where
        matching_scalers = [a for a in autoscalers if a["spec"]["scaleTargetRef"]["name"] == deployment_name]
        assert len(matching_scalers) == 1, f"{where}: {len(matching_scalers)} autoscalers"
        scaler = matching_scalers[0]["spec"]
        assert scaler["scaleTargetRef"]["kind"] == "Deployment", where
        assert 1 <= scaler["minReplicas"] <= scaler["maxReplicas"], where
        if name == "production":
            assert scaler["minReplicas"] >= 2, f"{where}: production keeps two replicas of everything"
        service = services[deployment_name]
        assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"], where
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        container_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "http")
        (service_port,) = service["spec"]["ports"]
        assert service_port["port"] == container_port and service_port["targetPort"] in ("http", container_port)

    # Every URL a process is given names a Service on the port its process listens on.
    for workload, template in templates.items():
        for var, entry in env_of(template).items():
            for url in str(entry.get("value", "")).split(","):
                if not url.startswith("http://"):
                    continue
                host, _, port = url.removeprefix("http://").partition(":")
                assert host in services, f"overlays/{name} {workload} {var}: {url} names no Service"
                assert services[host]["spec"]["ports"][0]["port"] == int(port), f"{workload} {var}: {url}"


def test_only_the_proxy_has_an_ingress_and_no_secret_is_rendered(overlay: tuple[str, list[Obj]]) -> None:
    name, objects = overlay
    ingresses = list(of_kind(objects, "Ingress").values())
    assert len(ingresses) == 1
    backends = [
        path["backend"]["service"]["name"]
        for ingress in ingresses
        for rule in ingress["spec"]["rules"]
        for path in rule["http"]["paths"]
    ]
    assert backends and set(backends) == {"proxy"}, backends
    assert "defaultBackend" not in ingresses[0]["spec"]
    if name == "production":
        (tls,) = ingresses[0]["spec"]["tls"]
        assert tls["secretName"] and set(tls["hosts"]) == {r["host"] for r in ingresses[0]["spec"]["rules"]}
    # The Ingress hosts are the proxy's PUBLIC_HOSTS (in production any other Host is 400 bad_host).
    (settings,) = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("apgms-")]
    public_hosts = set(settings["data"]["PUBLIC_HOSTS"].split(","))
    assert {r["host"] for r in ingresses[0]["spec"]["rules"]} <= public_hosts
    assert settings["data"]["APGMS_ENV"] == name

    assert not [o for o in objects if o["kind"] == "Secret"], "Secrets are created by the operator, never rendered"
    docs = DOCS.read_text()
    for workload, template in pod_templates(objects).items():
        for var, entry in env_of(template).items():
            ref = entry.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert f"`{ref['name']}`" in docs and f"`{ref['key']}`" in docs, (
                    f"{workload} {var} reads Secret {ref['name']} key {ref['key']}, which {DOCS.name} does not name"
                )


# --- NetworkPolicies, evaluated as a cluster does -----------------------------------------------------------------


@dataclass(frozen=True)
class Peer:
    """A pod of ours (its labels and named ports), a pod in another namespace, or an address outside the cluster."""

    labels: Mapping[str, str]
    namespace: str
    address: str | None = None
    ports: Mapping[str, int] = field(default_factory=dict)


def peer_matches(rule_peer: Obj, peer: Peer, own_namespace: str) -> bool:
    if "ipBlock" in rule_peer:
        return peer.address is not None and peer.address == rule_peer["ipBlock"]["cidr"]
    if peer.address is not None:
        return False
    namespace_selector = rule_peer.get("namespaceSelector")
    if namespace_selector is None:
        in_namespace = peer.namespace == own_namespace
    else:
        in_namespace = selects(namespace_selector, {"kubernetes.io/metadata.name": peer.namespace})
    return in_namespace and selects(rule_peer.get("podSelector", {}), peer.labels)


def rule_allows(rule: Obj, direction: str, peer: Peer, target: Peer, port: int, own_namespace: str) -> bool:
    """Whether one rule admits `peer` (the other end) to `port` of `target`; a named port in the rule is the
    target's port of that name, in ingress and egress rules alike."""
    peers = rule.get(direction)
    peer_ok = peers is None or any(peer_matches(p, peer, own_namespace) for p in peers)
    ports = rule.get("ports")
    port_ok = ports is None or any(
        p.get("port") in (None, port) or target.ports.get(str(p["port"])) == port for p in ports
    )
    return peer_ok and port_ok


def allowed(policies: list[Obj], namespace: str, source: Peer, target: Peer, port: int) -> bool:
    """Whether `source` may open a TCP connection to `target` on `port` under these policies."""

    def side(pod: Peer, policy_type: str, direction: str, other: Peer) -> bool:
        if pod.namespace != namespace or pod.address is not None:
            return True  # not ours: other namespaces' policies are not part of these manifests
        relevant = [
            p
            for p in policies
            if policy_type in p["spec"]["policyTypes"] and selects(p["spec"]["podSelector"], pod.labels)
        ]
        if not relevant:
            return True
        key = "ingress" if policy_type == "Ingress" else "egress"
        return any(
            rule_allows(rule, direction, other, target, port, namespace)
            for p in relevant
            for rule in p["spec"].get(key, [])
        )

    return side(source, "Egress", "to", target) and side(target, "Ingress", "from", source)


def our_pods(objects: list[Obj]) -> dict[str, Peer]:
    """A pod of each workload (Deployments and the Job), by workload name, as the policies see it."""
    namespace = objects[0]["metadata"]["namespace"]
    return {
        n: Peer(t["metadata"]["labels"], namespace, ports=named_ports(t)) for n, t in pod_templates(objects).items()
    }


def test_network_policies_let_only_the_proxy_reach_services_and_only_services_reach_datastores(
    overlay: tuple[str, list[Obj]],
) -> None:
    name, objects = overlay
    policies = list(of_kind(objects, "NetworkPolicy").values())
    namespace = objects[0]["metadata"]["namespace"]
    pods = our_pods(objects)
    assert set(pods) == {*DEPLOYMENT_NAMES, "apgms-migrate"}
    stranger = Peer({"app": "something-else"}, namespace)
    other_namespace = Peer({}, "default")
    ingress_controller = Peer({}, "ingress-nginx")
    ports = {
        n: next(p["containerPort"] for p in d["spec"]["template"]["spec"]["containers"][0]["ports"])
        for n, d in of_kind(objects, "Deployment").items()
    }

    # Nothing is allowed unless a policy says so.
    assert any(
        p["spec"]["podSelector"] == {} and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"} for p in policies
    )
    for service in SERVICE_NAMES:
        target, port = pods[service], ports[service]
        assert allowed(policies, namespace, pods["proxy"], target, port), f"{name}: proxy -> {service}"
        for caller in SERVICE_NAMES:
            assert allowed(policies, namespace, pods[caller], target, port), f"{name}: {caller} -> {service}"
        for outsider in (stranger, other_namespace, ingress_controller, pods["apgms-migrate"]):
            assert not allowed(policies, namespace, outsider, target, port), f"{name}: {outsider} -> {service}"
    assert allowed(policies, namespace, ingress_controller, pods["proxy"], ports["proxy"])
    for outsider in (stranger, other_namespace, *(pods[s] for s in SERVICE_NAMES)):
        assert not allowed(policies, namespace, outsider, pods["proxy"], ports["proxy"]), f"{name}: {outsider} -> proxy"

    # The datastores: whatever each overlay names them as (an address range or a namespace), the services and the
    # migration reach them and nothing else of ours does.
    (datastore_rule,) = [
        rule
        for p in policies
        for rule in p["spec"].get("egress", [])
        if {port["port"] for port in rule.get("ports", [])} & DATASTORE_PORTS
    ]
    (destination,) = datastore_rule["to"]
    if "ipBlock" in destination:
        datastore = Peer({}, EXTERNAL, address=destination["ipBlock"]["cidr"])
        assert name != "production" or destination["ipBlock"]["cidr"] != "192.0.2.0/24", "the base's placeholder"
    else:
        datastore = Peer({}, destination["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"])
    for port in DATASTORE_PORTS:
        for client in (*SERVICE_NAMES, "apgms-migrate"):
            assert allowed(policies, namespace, pods[client], datastore, port), f"{name}: {client} -> {port}"
        assert not allowed(policies, namespace, pods["proxy"], datastore, port), f"{name}: proxy -> {port}"
        assert not allowed(policies, namespace, stranger, datastore, port)
    # Nothing of ours reaches anywhere else outside.
    for pod in pods.values():
        assert not allowed(policies, namespace, pod, Peer({}, EXTERNAL, address="203.0.113.7/32"), 443)


def test_prometheus_in_the_monitoring_namespace_reaches_each_pod_s_metrics_port_and_nothing_else(
    overlay: tuple[str, list[Obj]],
) -> None:
    """Prometheus (its pod label AND its namespace) reaches each Deployment's pods on the port named http, where
    /metrics is served, and no other port of ours; the same label in another namespace, another pod of its namespace
    and any other namespace reach nothing through that policy. Where Prometheus may go outside our namespace (the
    datastores: managed, or the namespace apgms-data in dev) is decided by the policies there, not by these."""
    name, objects = overlay
    policies = list(of_kind(objects, "NetworkPolicy").values())
    namespace = objects[0]["metadata"]["namespace"]
    pods = our_pods(objects)
    prometheus = Peer(PROMETHEUS, PROMETHEUS_NAMESPACE)
    # Every port any of our pods listens on, the datastores' ports and Prometheus's own (9090).
    candidate_ports = {port for pod in pods.values() for port in pod.ports.values()} | DATASTORE_PORTS | {9090}
    for workload, pod in pods.items():
        metrics_port = pod.ports.get("http") if workload in DEPLOYMENT_NAMES else None
        assert workload == "apgms-migrate" or metrics_port is not None, f"{name}: {workload} has no port named http"
        for port in candidate_ports:
            reaches = allowed(policies, namespace, prometheus, pod, port)
            assert reaches == (port == metrics_port), f"overlays/{name}: Prometheus -> {workload}:{port} is {reaches}"

    not_prometheus = (
        Peer(PROMETHEUS, "default"),  # the label, in another namespace
        Peer({"app.kubernetes.io/name": "grafana"}, PROMETHEUS_NAMESPACE),  # another pod of Prometheus's namespace
        Peer({}, PROMETHEUS_NAMESPACE),
        Peer({}, "default"),
        Peer(PROMETHEUS, namespace),  # a pod of our namespace wearing the label
    )
    for outsider in not_prometheus:
        for workload, pod in pods.items():
            for port in pod.ports.values():
                assert not allowed(policies, namespace, outsider, pod, port), (
                    f"overlays/{name}: {outsider} -> {workload}"
                )

    docs = DOCS.read_text()
    assert (
        f"kubernetes.io/metadata.name: {PROMETHEUS_NAMESPACE}" in docs and "app.kubernetes.io/name: prometheus" in docs
    )


# --- the same variables as docker-compose.yml -------------------------------------------------------------------


def compose_environments() -> dict[tuple[str, ...], set[str]]:
    """Each process of our image in docker-compose.yml (by its command) and the variables compose gives it."""
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    found: dict[tuple[str, ...], set[str]] = {}
    for service in compose["services"].values():
        if "build" not in service:
            continue  # PostgreSQL, Redis, Prometheus, Grafana: not ours; managed or outside these manifests
        found[tuple(service["command"])] = set(service.get("environment", {}))
    return found


def test_every_variable_compose_gives_a_process_is_given_here(overlay: tuple[str, list[Obj]]) -> None:
    name, objects = overlay
    by_command = {}
    for workload, template in pod_templates(objects).items():
        (container,) = template["spec"]["containers"]
        by_command[tuple(container["command"])] = (workload, set(env_of(template)))
    compose = compose_environments()
    assert len(compose) == 6, f"compose's processes of our image: {sorted(compose)}"
    for command, variables in compose.items():
        assert command in by_command, f"overlays/{name}: nothing runs {' '.join(command)}"
        workload, given = by_command[command]
        missing = variables - given
        assert not missing, f"overlays/{name} {workload}: compose gives {sorted(missing)}, the manifests do not"


def secret_samples() -> dict[tuple[str, str], str]:
    """A value of the right shape for each Secret key docs/ops/kubernetes.md names, from the project's generators."""
    return {
        ("apgms-database", "url"): "postgresql://apgms:password@db.internal:5432/apgms",
        ("apgms-redis", "url"): "redis://:password@redis.internal:6379/0",
        ("apgms-master-key", "master-key"): new_master_key(),
        ("apgms-kek", "kek"): new_kek(),
        ("apgms-service-clients", "core"): new_service_client_secret(),
        ("apgms-service-clients", "compliance"): new_service_client_secret(),
        ("apgms-service-clients", "regulator"): new_service_client_secret(),
        ("apgms-metrics", "bearer-token"): new_service_client_secret(),
    }


def test_each_process_s_settings_loader_accepts_the_environment_given_here(
    overlay: tuple[str, list[Obj]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name, objects = overlay
    # The loaders read `.env` of the working directory outside production: none here, as in the container.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(devstack, "PROJECT_ROOT", tmp_path)
    config_maps = of_kind(objects, "ConfigMap")
    samples = secret_samples()
    for workload, template in pod_templates(objects).items():
        environ: dict[str, str] = {}
        for var, entry in env_of(template).items():
            source = entry.get("valueFrom", {})
            if "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                environ[var] = samples[(ref["name"], ref["key"])]
            elif "configMapKeyRef" in source:
                ref = source["configMapKeyRef"]
                environ[var] = config_maps[ref["name"]]["data"][ref["key"]]
            else:
                environ[var] = entry["value"]
        assert environ["APGMS_ENV"] == name
        (container,) = template["spec"]["containers"]
        command = tuple(container["command"])
        if command == MIGRATE_COMMAND:
            with monkeypatch.context() as patch:
                for variable in list(os.environ):
                    patch.delenv(variable)
                for variable, value in environ.items():
                    patch.setenv(variable, value)
                try:
                    assert common.database_url() == environ["DATABASE_URL"]
                except typer.Exit:
                    pytest.fail(f"overlays/{name}: apgms db migrate refuses the Job's environment")
            continue
        settings = LOADERS[command](environ)
        assert settings.port == int(environ["PORT"]), f"overlays/{name} {workload}"


def test_the_documented_apply_order_puts_the_migration_first(overlay: tuple[str, list[Obj]]) -> None:
    """docs/ops/kubernetes.md applies what has no `apgms.io/tier` label, then `-l apgms.io/tier=migrate` and waits
    for it, then the rest: the middle step must select the Job alone, and what the Job reads must come in the first."""
    name, objects = overlay
    docs = DOCS.read_text()
    assert "kubectl apply -l '!apgms.io/tier' -f -" in docs and "kubectl apply -l apgms.io/tier=migrate -f -" in docs
    tier = "apgms.io/tier"
    migrate = [o for o in objects if o["metadata"].get("labels", {}).get(tier) == "migrate"]
    assert [(o["kind"], o["metadata"]["name"]) for o in migrate] == [("Job", "apgms-migrate")], f"overlays/{name}"
    first = {(o["kind"], o["metadata"]["name"]) for o in objects if tier not in o["metadata"].get("labels", {})}
    job_spec = migrate[0]["spec"]["template"]["spec"]
    assert ("ServiceAccount", job_spec["serviceAccountName"]) in first
    for entry in env_of(migrate[0]["spec"]["template"]).values():
        ref = entry.get("valueFrom", {}).get("configMapKeyRef")
        if ref:
            assert ("ConfigMap", ref["name"]) in first, f"overlays/{name}: the Job reads {ref['name']}"
    assert not {("Deployment", n) for n in DEPLOYMENT_NAMES} & first, "the Deployments must wait for the last step"


def test_limits_are_at_least_the_requests(overlay: tuple[str, list[Obj]]) -> None:
    name, objects = overlay
    units = {"m": 0.001, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}

    def quantity(text: str) -> float:
        for suffix, factor in units.items():
            if text.endswith(suffix):
                return float(text.removesuffix(suffix)) * factor
        return float(text)

    for workload, template in pod_templates(objects).items():
        (container,) = template["spec"]["containers"]
        resources = container["resources"]
        for resource in ("cpu", "memory"):
            request, limit = resources["requests"][resource], resources["limits"][resource]
            assert quantity(limit) >= quantity(request), f"overlays/{name} {workload} {resource}: {request} > {limit}"
