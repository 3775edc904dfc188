"""The emulator's RBAC (`rbac.py`): request attributes and rule matching as the API server has them."""

from __future__ import annotations

import pytest
from rbac import Attributes, Role, Rule, attributes, discovery

NS = "ns"


@pytest.mark.parametrize(
    ("method", "path", "params", "expected"),
    [
        ("GET", "/api/v1/namespaces/ns/pods", {}, Attributes("list", "", "pods", NS, "")),
        ("GET", "/api/v1/namespaces/ns/pods", {"watch": "true"}, Attributes("watch", "", "pods", NS, "")),
        ("GET", "/api/v1/watch/namespaces/ns/pods", {}, Attributes("watch", "", "pods", NS, "")),
        ("GET", "/api/v1/namespaces/ns/configmaps/m", {}, Attributes("get", "", "configmaps", NS, "m")),
        ("PATCH", "/api/v1/namespaces/ns/pods/p/status", {},
         Attributes("patch", "", "pods/status", NS, "p")),
        ("POST", "/api/v1/namespaces/ns/events", {}, Attributes("create", "", "events", NS, "")),
        ("DELETE", "/api/v1/namespaces/ns/pods", {}, Attributes("deletecollection", "", "pods", NS, "")),
        # A list or watch names its object through a field selector.
        ("GET", "/apis/apps/v1/namespaces/ns/statefulsets",
         {"watch": "1", "fieldSelector": "metadata.name=kv"},
         Attributes("watch", "apps", "statefulsets", NS, "kv")),
        ("GET", "/api/v1/nodes", {}, Attributes("list", "", "nodes", "", "")),
        ("GET", "/api/v1/namespaces/ns", {}, Attributes("get", "", "namespaces", "", "ns")),
    ],
)
def test_request_attributes(method: str, path: str, params: dict[str, str], expected: Attributes) -> None:
    assert attributes(method, path, params) == expected


@pytest.mark.parametrize("path", ["/api", "/api/v1", "/apis", "/apis/apps/v1", "/version"])
def test_discovery_is_not_a_resource_request(path: str) -> None:
    assert attributes("GET", path, {}) is None and discovery(path)


def test_rules_match_verb_group_resource_name_and_namespace() -> None:
    role = Role(NS, (Rule(frozenset({""}), frozenset({"configmaps"}), frozenset({"get"}),
                          frozenset({"m"})),
                     Rule(frozenset({"apps"}), frozenset({"statefulsets"}),
                          frozenset({"list", "watch"}), frozenset({"kv"}))))
    assert role.granting(Attributes("get", "", "configmaps", NS, "m"))
    assert not role.granting(Attributes("get", "", "configmaps", NS, "other"))
    assert not role.granting(Attributes("get", "", "configmaps", "elsewhere", "m"))
    assert not role.granting(Attributes("patch", "", "configmaps", NS, "m"))
    assert not role.granting(Attributes("get", "apps", "configmaps", NS, "m"))
    # resourceNames on a list: only with a field selector naming the object.
    assert role.granting(Attributes("watch", "apps", "statefulsets", NS, "kv"))
    assert not role.granting(Attributes("list", "apps", "statefulsets", NS, ""))
    assert role.grants() == {("", "configmaps", "get", "m"), ("apps", "statefulsets", "list", "kv"),
                             ("apps", "statefulsets", "watch", "kv")}
