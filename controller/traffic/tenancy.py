"""Who may route what: the multi-tenant rules for a rollout's hosts, gateways and exportTo. Pure.

canarist writes VirtualServices with a cluster-wide role, so the rollout's author must not be able
to borrow that power. The rules (DESIGN.md section 4, "Tenants are isolated"):

Hosts
  Every host of a rollout (``spec.service.host`` and each of ``spec.service.hosts``) must name the
  rollout's own Service, ``spec.service.name`` in the rollout's namespace, in one of its forms
  (``name``, ``name.ns``, ``name.ns.svc``, ``name.ns.svc.cluster.local``), or be allowed by a
  :class:`Grant` the controller's administrator gave (``canarist run --allow-host NS=PATTERN``).
  A pattern is a host or a wildcard (``*.example.com``: any name under example.com, at any depth,
  and wildcards under it; ``*`` alone: any host). ``{namespace}`` in a pattern stands for the
  rollout's namespace, so ``--allow-host '*=*.{namespace}.example.com'`` gives every team its own
  subdomain. A wildcard host is refused unless a grant covers the whole wildcard.

Gateways
  ``mesh`` (the sidecars) is always allowed. A Gateway in the rollout's own namespace (``name`` or
  ``ns/name``) is allowed by default: whoever may create a Gateway there already controls that
  namespace, and the hosts it can carry are limited as above; ``--no-namespace-gateways`` turns
  that off. Any other gateway needs a grant (``--allow-gateway NS=GWNS/NAME``, or ``GWNS/*``).

exportTo
  The rendered VirtualService and DestinationRule are exported with :func:`export_to`: a rollout
  bound to ``mesh`` exports to ``*``, a gateway-only rollout to its own namespace plus the gateways'
  namespaces. Why ``*`` for mesh: callers in any namespace reach the rollout's Service; were the
  VirtualService hidden from them, their requests would bypass the split and be load-balanced over
  stable and canary pods alike, so a rollback would not protect them. Exporting is safe because the
  hosts are restricted: the VirtualService can only steer traffic addressed to the rollout's own
  Service (or what an administrator granted). The DestinationRule follows the VirtualService, since
  a proxy that sees a route to a subset must also see the subset.

Conflicts
  :func:`overlaps` decides whether two hosts, each written in its own namespace, may denote a common
  name. It is conservative: a short name, ``name.ns`` and ``name.ns.svc`` are all taken as the
  Service they may abbreviate as well as the literal name, and ``*.example.com`` overlaps every name
  below example.com. The Kubernetes edge uses it to refuse a host that another VirtualService
  already routes, in any namespace.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from controller.api.fields import DNS_LABEL
from controller.api.model import ModelRollout
from controller.api.rules import Path, Problem

CLUSTER_DOMAIN = "cluster.local"
MESH = "mesh"
EVERY_NAMESPACE = "*"
NAMESPACE_PLACEHOLDER = "{namespace}"


@dataclass(frozen=True)
class Grant:
    """One permission an administrator gave: rollouts in ``namespace`` ("*": any) may use ``pattern``.

    For hosts, ``pattern`` is a host, a ``*.suffix`` wildcard or ``*``; for gateways, ``GWNS/NAME``
    or ``GWNS/*``. ``{namespace}`` in the pattern is replaced by the rollout's namespace."""

    namespace: str
    pattern: str

    def applies_to(self, namespace: str) -> bool:
        return self.namespace in (EVERY_NAMESPACE, namespace)

    def pattern_for(self, namespace: str) -> str:
        return self.pattern.replace(NAMESPACE_PLACEHOLDER, namespace).lower()


@dataclass(frozen=True)
class TenancyRules:
    """The controller's tenancy configuration; the default allows each rollout its own Service only."""

    hosts: tuple[Grant, ...] = ()
    gateways: tuple[Grant, ...] = ()
    namespace_gateways: bool = True

    def describe(self) -> str:
        """One line for logs: what is allowed beyond each rollout's own Service."""
        hosts = ", ".join(f"{g.namespace}={g.pattern}" for g in self.hosts) or "none"
        gateways = ", ".join(f"{g.namespace}={g.pattern}" for g in self.gateways) or "none"
        own = "own-namespace gateways allowed" if self.namespace_gateways else "own-namespace gateways refused"
        return f"extra hosts: {hosts}; extra gateways: {gateways}; {own}"


DEFAULT_RULES = TenancyRules()


# --- configuration -----------------------------------------------------------------------------


def parse_grant(text: str, *, gateway: bool) -> Grant:
    """``NAMESPACE=PATTERN`` as given on the command line; ValueError with one clear line otherwise."""
    option = "--allow-gateway" if gateway else "--allow-host"
    namespace, sep, pattern = text.partition("=")
    namespace, pattern = namespace.strip(), pattern.strip().lower()
    if not sep or not namespace or not pattern:
        raise ValueError(f"{option} {text!r}: expected NAMESPACE=PATTERN (NAMESPACE may be '*')")
    if namespace != EVERY_NAMESPACE and not _is_label(namespace):
        raise ValueError(f"{option} {text!r}: {namespace!r} is not a namespace name or '*'")
    probe = pattern.replace(NAMESPACE_PLACEHOLDER, "ns")
    if gateway:
        gwns, slash, name = probe.partition("/")
        if not slash or not _is_label(gwns) or not (name == "*" or _is_label(name)):
            raise ValueError(f"{option} {text!r}: a gateway is GATEWAY-NAMESPACE/NAME or GATEWAY-NAMESPACE/*")
    elif probe != "*" and not _is_host(probe.removeprefix("*.")):
        raise ValueError(f"{option} {text!r}: {pattern!r} is not a host, '*.suffix' or '*'")
    return Grant(namespace, pattern)


def rules_from_options(
    hosts: Iterable[str] = (), gateways: Iterable[str] = (), *, namespace_gateways: bool = True
) -> TenancyRules:
    """Rules from ``--allow-host`` / ``--allow-gateway`` values; ValueError names the bad one."""
    return TenancyRules(
        hosts=tuple(parse_grant(h, gateway=False) for h in hosts),
        gateways=tuple(parse_grant(g, gateway=True) for g in gateways),
        namespace_gateways=namespace_gateways,
    )


def _is_label(text: str) -> bool:
    return len(text) <= 63 and re.fullmatch(DNS_LABEL.strip("^$"), text) is not None


def _is_host(text: str) -> bool:
    return 0 < len(text) <= 253 and all(_is_label(part) for part in text.split("."))


# --- the check ---------------------------------------------------------------------------------


def own_hosts(service: str, namespace: str) -> frozenset[str]:
    """The names of Service ``service`` in ``namespace`` that a rollout may always route."""
    return frozenset(
        {service, f"{service}.{namespace}", f"{service}.{namespace}.svc", f"{service}.{namespace}.svc.{CLUSTER_DOMAIN}"}
    )


def check(rollout: ModelRollout, rules: TenancyRules = DEFAULT_RULES) -> list[Problem]:
    """Every host or gateway of ``rollout`` that its tenant may not use, with the field path."""
    return [*_hosts(rollout, rules), *_gateways(rollout, rules)]


def _hosts(rollout: ModelRollout, rules: TenancyRules) -> Iterator[Problem]:
    service, namespace = rollout.spec.service, rollout.metadata.namespace
    mine = own_hosts(service.name, namespace)
    fields: list[tuple[Path, str | None]] = [(("spec", "service", "host"), service.host)]
    fields += [(("spec", "service", "hosts", i), host) for i, host in enumerate(service.hosts)]
    for path, host in fields:
        if host is None or host in mine or host_allowed(host, namespace, rules):
            continue
        what = "a wildcard" if host.startswith("*") else f"not the rollout's own Service ({service.name})"
        yield Problem(
            path, f"{host!r} is {what}, and no --allow-host of the controller grants it to namespace {namespace!r}"
        )


def host_allowed(host: str, namespace: str, rules: TenancyRules) -> bool:
    """Whether a grant covers ``host`` (as Istio reads it in ``namespace``) for that namespace."""
    name = istio_name(host, namespace)
    return any(g.applies_to(namespace) and covers(g.pattern_for(namespace), name) for g in rules.hosts)


def _gateways(rollout: ModelRollout, rules: TenancyRules) -> Iterator[Problem]:
    namespace = rollout.metadata.namespace
    for i, gateway in enumerate(rollout.spec.service.gateways):
        if gateway_allowed(gateway, namespace, rules):
            continue
        gwns, _ = split_gateway(gateway, namespace)
        own = "the rollout's own namespace (--no-namespace-gateways is set)"
        where = own if gwns == namespace else f"namespace {gwns!r}"
        yield Problem(
            ("spec", "service", "gateways", i),
            f"{gateway!r} is a gateway of {where}, and no --allow-gateway of the controller "
            f"grants it to namespace {namespace!r}",
        )


def gateway_allowed(gateway: str, namespace: str, rules: TenancyRules) -> bool:
    """``mesh``, an own-namespace Gateway (unless turned off) or one a grant names."""
    if gateway == MESH:
        return True
    gwns, name = split_gateway(gateway, namespace)
    if gwns == namespace and rules.namespace_gateways:
        return True
    for grant in rules.gateways:
        if grant.applies_to(namespace):
            want_ns, _, want_name = grant.pattern_for(namespace).partition("/")
            if want_ns == gwns and want_name in ("*", name):
                return True
    return False


def split_gateway(gateway: str, namespace: str) -> tuple[str, str]:
    """(namespace, name) of a VirtualService's gateway reference, a bare name being in ``namespace``."""
    gwns, slash, name = gateway.partition("/")
    return (gwns, name) if slash else (namespace, gateway)


def export_to(rollout: ModelRollout) -> list[str]:
    """The exportTo of the rendered objects (see the module docstring for the reasoning)."""
    namespace = rollout.metadata.namespace
    gateways = rollout.spec.service.gateways
    if MESH in gateways:
        return [EVERY_NAMESPACE]
    others = sorted({split_gateway(g, namespace)[0] for g in gateways} - {namespace})
    return [".", *others]


# --- host names ---------------------------------------------------------------------------------


def istio_name(host: str, namespace: str) -> str:
    """A host as Istio resolves it in a VirtualService of ``namespace``: a name without a dot is a
    Service there; anything else is taken literally."""
    host = host.lower()
    if host == "*" or "." in host:
        return host
    return f"{host}.{namespace}.svc.{CLUSTER_DOMAIN}"


def interpretations(host: str, namespace: str) -> frozenset[str]:
    """Every fully-qualified name ``host`` may denote, written in ``namespace``: Istio's literal
    reading, plus the Service a Kubernetes search path would find (``name.ns``, ``name.ns.svc``)."""
    name = istio_name(host, namespace)
    out = {name}
    if name != "*":
        if name.count(".") == 1:
            out.add(f"{name}.svc.{CLUSTER_DOMAIN}")
        if name.endswith(".svc"):
            out.add(f"{name}.{CLUSTER_DOMAIN}")
    return frozenset(out)


def covers(pattern: str, name: str) -> bool:
    """Whether every name ``name`` denotes is among those ``pattern`` denotes (both fully qualified)."""
    pattern, name = pattern.lower(), name.lower()
    if pattern == "*":
        return True
    if name == "*":
        return False
    if not pattern.startswith("*."):
        return pattern == name
    suffix = pattern[1:]  # ".example.com"
    if name.startswith("*."):
        return name[1:] == suffix or name[1:].endswith(suffix)
    return name.endswith(suffix)


def names_overlap(a: str, b: str) -> bool:
    """Whether two fully-qualified names (either may be a wildcard) share a name."""
    return covers(a, b) or covers(b, a)


def overlaps(host: str, namespace: str, other: str, other_namespace: str) -> bool:
    """Whether ``host`` written in ``namespace`` and ``other`` written in ``other_namespace`` may
    route a common name (conservative: see :func:`interpretations`)."""
    return any(
        names_overlap(a, b) for a in interpretations(host, namespace) for b in interpretations(other, other_namespace)
    )


def without_hosts(objects: Sequence[Mapping[str, Any]], hosts: Iterable[str]) -> list[dict[str, Any]]:
    """``objects`` with ``hosts`` taken out of each VirtualService's ``hosts`` (its first, the
    rollout's own, is always kept): how a rollback still reaches the routes canarist already holds
    when a host newly added to the spec is refused as a conflict."""
    drop = set(hosts)
    out: list[dict[str, Any]] = []
    for obj in objects:
        copied = copy.deepcopy(dict(obj))
        spec = copied.get("spec")
        if copied.get("kind") == "VirtualService" and isinstance(spec, dict) and spec.get("hosts"):
            first, *rest = spec["hosts"]
            spec["hosts"] = [first, *(h for h in rest if h not in drop)]
        out.append(copied)
    return out


def overlapping(hosts: Sequence[str], namespace: str, others: Sequence[str], other_namespace: str) -> list[str]:
    """The hosts of ``hosts`` that overlap any of ``others``."""
    return [h for h in hosts if any(overlaps(h, namespace, o, other_namespace) for o in others)]
