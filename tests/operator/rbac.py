"""Kubernetes RBAC as the API server applies a namespaced Role, for the emulated API server.

The operator tests run the operator against an emulator that authorizes each of its
requests with the Role the chart renders (`rules_from_chart`), so a request the Role does
not grant fails the tests, and a grant no request needs shows up as unused. The request
attributes follow the API server's RequestInfo: the verb from the method (`list`/`watch`
for a collection, `watch` also from `?watch=true`), the resource and subresource from the
path, and for a list or watch the name from `fieldSelector=metadata.name=...`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# Discovery and health URLs every authenticated user may read (the `system:discovery`
# and `system:public-info-viewer` ClusterRoles).
DISCOVERY_PREFIXES = ("/api", "/apis", "/version", "/openapi", "/healthz", "/livez", "/readyz")


@dataclass(frozen=True)
class Attributes:
    """What the API server authorizes for one resource request."""

    verb: str
    group: str
    resource: str  # "pods", or "pods/status" for a subresource
    namespace: str  # "" for a cluster-scoped resource
    name: str  # "" for a collection

    def __str__(self) -> str:
        where = f" in namespace {self.namespace!r}" if self.namespace else " (cluster scope)"
        return (f"{self.verb} {self.resource}{f' {self.name!r}' if self.name else ''}"
                f" in API group {self.group!r}{where}")


@dataclass(frozen=True)
class Rule:
    """One PolicyRule of a Role (resource rules only)."""

    groups: frozenset[str]
    resources: frozenset[str]
    verbs: frozenset[str]
    names: frozenset[str] = frozenset()

    @classmethod
    def from_manifest(cls, rule: Mapping[str, Any]) -> Rule:
        return cls(frozenset(rule["apiGroups"]), frozenset(rule["resources"]),
                   frozenset(rule["verbs"]), frozenset(rule.get("resourceNames") or ()))

    def allows(self, attrs: Attributes) -> bool:
        return (_has(self.verbs, attrs.verb) and _has(self.groups, attrs.group)
                and _has(self.resources, attrs.resource)
                and (not self.names or attrs.name in self.names))


def _has(allowed: frozenset[str], value: str) -> bool:
    return "*" in allowed or value in allowed


def attributes(method: str, path: str, params: Mapping[str, str]) -> Attributes | None:
    """The request's attributes, or None for a non-resource URL (discovery)."""
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["api"] and len(parts) >= 3:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 4:
        group, rest = parts[1], parts[3:]
    else:
        return None
    watch = params.get("watch") in ("true", "1")
    if rest[:1] == ["watch"]:  # the deprecated /watch/ path prefix
        rest, watch = rest[1:], True
    namespace = ""
    if rest[:1] == ["namespaces"] and len(rest) >= 3:
        namespace, rest = rest[1], rest[2:]
    named = len(rest) > 1
    resource, name = rest[0], rest[1] if named else ""
    if len(rest) > 2:
        resource = f"{resource}/{rest[2]}"
    if not name:
        for term in params.get("fieldSelector", "").split(","):
            key, _, value = term.partition("=")
            if key == "metadata.name" and value:
                name = value.lstrip("=")
    if method in ("GET", "HEAD"):
        verb = "watch" if watch else ("get" if named else "list")
    else:
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch",
                "DELETE": "delete" if named else "deletecollection"}[method]
    return Attributes(verb, group, resource, namespace, name)


@dataclass(frozen=True)
class Role:
    """A namespaced Role: its rules apply in its own namespace only."""

    namespace: str
    rules: tuple[Rule, ...]

    @classmethod
    def from_manifest(cls, role: Mapping[str, Any]) -> Role:
        assert role["kind"] == "Role", role["kind"]
        return cls(role["metadata"]["namespace"],
                   tuple(Rule.from_manifest(r) for r in role.get("rules") or ()))

    def granting(self, attrs: Attributes) -> list[Rule]:
        """The rules that allow `attrs`; none means the API server answers 403."""
        if attrs.namespace != self.namespace:
            return []
        return [rule for rule in self.rules if rule.allows(attrs)]

    def grants(self) -> set[tuple[str, str, str, str]]:
        """Every (group, resource, verb, name) the rules spell out ("" name: any)."""
        return {(g, r, v, n) for rule in self.rules for g in rule.groups
                for r in rule.resources for v in rule.verbs for n in (rule.names or {""})}


def forbidden_status(attrs: Attributes, user: str) -> dict[str, Any]:
    """The API server's 403 body."""
    kind = attrs.resource.split("/")[0]
    what = f'{kind} "{attrs.name}"' if attrs.name else kind
    where = f' in the namespace "{attrs.namespace}"' if attrs.namespace else ""
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "reason": "Forbidden", "code": 403,
            "message": f'{what} is forbidden: User "{user}" cannot {attrs.verb} resource '
                       f'"{attrs.resource}" in API group "{attrs.group}"{where}',
            "details": {"name": attrs.name, "kind": kind}}


def used(role: Role, requests: Iterable[Attributes]) -> set[tuple[str, str, str, str]]:
    """The grants (as `Role.grants` spells them) that `requests` needed."""
    return {(a.group, a.resource, a.verb, a.name if rule.names else "")
            for a in requests for rule in role.granting(a)}


def discovery(path: str) -> bool:
    """A non-resource URL every authenticated user may read."""
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in DISCOVERY_PREFIXES)
