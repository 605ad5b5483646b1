"""model.py: parsing the Kubernetes objects, the API defaults, and refusals naming the field."""

from __future__ import annotations

import ipaddress

import pytest

from cni_plugin.policy import model as m


def _np(spec: dict, name: str = "p", ns: str = "x") -> dict:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def test_policy_types_default_ingress_plus_egress_when_egress_rules() -> None:
    assert m.parse_object(_np({"podSelector": {}})).policy_types == ("Ingress",)
    assert m.parse_object(_np({"podSelector": {}, "egress": []})).policy_types == ("Ingress",)
    assert m.parse_object(_np({"podSelector": {}, "egress": [{}]})).policy_types == ("Ingress", "Egress")
    assert m.parse_object(_np({"podSelector": {}, "policyTypes": ["Egress"]})).policy_types == ("Egress",)


def test_full_v1_shape() -> None:
    pol = m.parse_object(
        _np(
            {
                "podSelector": {
                    "matchLabels": {"app": "web"},
                    "matchExpressions": [{"key": "tier", "operator": "Exists"}],
                },
                "ingress": [
                    {
                        "from": [
                            {
                                "podSelector": {
                                    "matchExpressions": [{"key": "role", "operator": "NotIn", "values": ["db"]}]
                                },
                                "namespaceSelector": {"matchLabels": {"team": "a"}},
                            },
                            {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}},
                        ],
                        "ports": [
                            {"port": 80},
                            {"protocol": "UDP", "port": "dns"},
                            {"port": 8000, "endPort": 8100},
                            {"protocol": "SCTP"},
                        ],
                    }
                ],
            }
        )
    )
    assert isinstance(pol, m.NetworkPolicy)
    peer0, peer1 = pol.ingress[0].peers
    assert peer0.namespace_selector is not None and peer0.pod_selector is not None
    assert peer1.ip_block is not None and peer1.ip_block.excepts == (ipaddress.ip_network("10.1.0.0/16"),)
    ports = pol.ingress[0].ports
    assert [str(p) for p in ports] == ["80/TCP", "dns/UDP", "8000-8100/TCP", "any/SCTP"]
    assert pol.pod_selector.matches({"app": "web", "tier": "x"})
    assert not pol.pod_selector.matches({"app": "web"})


@pytest.mark.parametrize(
    ("spec", "field", "fragment"),
    [
        (
            {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]},
            "spec.ingress[0].from[0].ipBlock.cidr",
            "invalid CIDR",
        ),
        (
            {
                "podSelector": {},
                "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}}]}],
            },
            "spec.ingress[0].from[0].ipBlock.except[0]",
            "strict subset",
        ),
        (
            {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.0.0.0/8"]}}]}]},
            "spec.ingress[0].from[0].ipBlock.except[0]",
            "strict subset",
        ),
        (
            {"podSelector": {}, "ingress": [{"ports": [{"port": 80}, {"port": 90, "endPort": 80}]}]},
            "spec.ingress[0].ports[1].endPort",
            "greater than or equal",
        ),
        (
            {"podSelector": {}, "ingress": [{"ports": [{"port": "http", "endPort": 90}]}]},
            "spec.ingress[0].ports[0].endPort",
            "named port",
        ),
        (
            {"podSelector": {}, "egress": [{"ports": [{"protocol": "ICMP", "port": 1}]}]},
            "spec.egress[0].ports[0].protocol",
            "unknown protocol",
        ),
        ({"podSelector": {}, "egress": [{"ports": [{"port": 70000}]}]}, "spec.egress[0].ports[0].port", "between"),
        (
            {"podSelector": {"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["b"]}]}},
            "spec.podSelector.matchExpressions[0].operator",
            "one of In",
        ),
        (
            {"podSelector": {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["b"]}]}},
            "spec.podSelector.matchExpressions[0].values",
            "must be empty",
        ),
        (
            {"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}},
            "spec.podSelector.matchExpressions[0].values",
            "non-empty",
        ),
        (
            {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]},
            "spec.ingress[0].from[0].ipBlock",
            "may not be combined",
        ),
        ({"podSelector": {}, "ingress": [{"from": [{}]}]}, "spec.ingress[0].from[0]", "must set"),
        ({"podSelector": {}, "policyTypes": ["Sideways"]}, "spec.policyTypes[0]", "Ingress or Egress"),
        ({}, "spec.podSelector", "required"),
        (
            {"podSelector": {}, "ingress": [{"ports": [{"port": "Bad_Name"}]}]},
            "spec.ingress[0].ports[0].port",
            "named port",
        ),
    ],
)
def test_bad_input_names_the_field(spec: dict, field: str, fragment: str) -> None:
    with pytest.raises(m.PolicyError) as err:
        m.parse_object(_np(spec))
    assert err.value.field == field
    assert fragment in err.value.reason
    assert str(err.value).startswith(field + ": ")


def test_parse_text_names_the_object_too() -> None:
    text = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: ok, namespace: x}
spec: {podSelector: {}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: broken, namespace: x}
spec:
  podSelector: {}
  ingress: [{ports: [{port: 80}, {port: 80, endPort: 79}]}]
"""
    with pytest.raises(m.PolicyError) as err:
        m.parse_text(text)
    assert str(err.value).startswith("NetworkPolicy broken: spec.ingress[0].ports[1].endPort: ")


def test_list_documents_and_json() -> None:
    text = (
        '{"apiVersion": "v1", "kind": "List", '
        '"items": [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}]}'
    )
    (ns,) = m.parse_text(text)
    assert isinstance(ns, m.Namespace)
    assert ns.label_map == {m.NAMESPACE_NAME_LABEL: "x"}


def test_pod_and_node() -> None:
    pod = m.parse_object(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "a", "namespace": "x", "labels": {"pod": "a"}},
            "spec": {
                "nodeName": "n1",
                "containers": [
                    {
                        "name": "c",
                        "ports": [
                            {"name": "serve-80-tcp", "containerPort": 80},
                            {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                        ],
                    }
                ],
            },
            "status": {"podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}]},
        }
    )
    assert isinstance(pod, m.Pod)
    assert pod.ips == (ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("fd00::1"))
    assert pod.named_port("dns", "UDP") == [53] and pod.named_port("dns", "TCP") == []
    assert pod.node_name == "n1"
    node = m.parse_object(
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": "n1"},
            "status": {
                "addresses": [{"type": "InternalIP", "address": "192.0.2.1"}, {"type": "Hostname", "address": "n1"}]
            },
        }
    )
    assert isinstance(node, m.Node) and node.addresses == (ipaddress.ip_address("192.0.2.1"),)


def test_ipblock_ranges_subtract_excepts() -> None:
    block = m.IPBlock(ipaddress.ip_network("10.0.0.0/24"), (ipaddress.ip_network("10.0.0.0/25"),))
    assert block.ranges() == [ipaddress.ip_network("10.0.0.128/25")]
    assert block.contains(ipaddress.ip_address("10.0.0.200"))
    assert not block.contains(ipaddress.ip_address("10.0.0.1"))
    assert not block.contains(ipaddress.ip_address("fd00::1"))


def _anp(spec: dict, kind: str = "AdminNetworkPolicy", name: str = "a") -> dict:
    return {"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec}


def test_admin_policies_parse() -> None:
    anp = m.parse_object(
        _anp(
            {
                "priority": 5,
                "subject": {"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "db"}}}},
                "ingress": [
                    {
                        "name": "r",
                        "action": "Pass",
                        "from": [{"namespaces": {}}],
                        "ports": [
                            {"portNumber": {"protocol": "TCP", "port": 5432}},
                            {"portRange": {"protocol": "UDP", "start": 1000, "end": 2000}},
                            {"namedPort": "metrics"},
                        ],
                    }
                ],
                "egress": [{"action": "Deny", "to": [{"networks": ["0.0.0.0/0"]}]}],
            }
        )
    )
    assert isinstance(anp, m.AdminPolicy) and anp.priority == 5 and anp.kind == "AdminNetworkPolicy"
    assert [str(p) for p in anp.ingress[0].ports] == ["5432/TCP", "1000-2000/UDP", "metrics"]
    banp = m.parse_object(
        _anp(
            {"subject": {"namespaces": {}}, "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]},
            "BaselineAdminNetworkPolicy",
            "default",
        )
    )
    assert isinstance(banp, m.AdminPolicy) and banp.priority is None


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        (_anp({"subject": {"namespaces": {}}}), "spec.priority"),
        (_anp({"priority": 1001, "subject": {"namespaces": {}}}), "spec.priority"),
        (
            _anp(
                {
                    "priority": 1,
                    "subject": {"namespaces": {}},
                    "ingress": [{"action": "Maybe", "from": [{"namespaces": {}}]}],
                }
            ),
            "spec.ingress[0].action",
        ),
        (
            _anp(
                {"subject": {"namespaces": {}}, "ingress": [{"action": "Pass", "from": [{"namespaces": {}}]}]},
                "BaselineAdminNetworkPolicy",
                "default",
            ),
            "spec.ingress[0].action",
        ),
        (_anp({"subject": {"namespaces": {}}}, "BaselineAdminNetworkPolicy", "other"), "metadata.name"),
        (
            _anp(
                {
                    "priority": 1,
                    "subject": {"namespaces": {}},
                    "ingress": [{"action": "Deny", "from": [{"networks": ["10.0.0.0/8"]}]}],
                }
            ),
            "spec.ingress[0].from[0].networks",
        ),
        (
            _anp(
                {
                    "priority": 1,
                    "subject": {"namespaces": {}},
                    "egress": [{"action": "Deny", "to": [{"networks": ["10.0.0.0/40"]}]}],
                }
            ),
            "spec.egress[0].to[0].networks[0]",
        ),
        (
            _anp(
                {
                    "priority": 1,
                    "subject": {"namespaces": {}},
                    "egress": [
                        {
                            "action": "Deny",
                            "to": [{"namespaces": {}}],
                            "ports": [{"portRange": {"start": 10, "end": 5}}],
                        }
                    ],
                }
            ),
            "spec.egress[0].ports[0].portRange.end",
        ),
    ],
)
def test_admin_bad_input_names_the_field(obj: dict, field: str) -> None:
    with pytest.raises(m.PolicyError) as err:
        m.parse_object(obj)
    assert err.value.field == field


def test_unknown_kind_and_api_version() -> None:
    with pytest.raises(m.PolicyError) as err:
        m.parse_object({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}})
    assert err.value.field == "kind"
    with pytest.raises(m.PolicyError) as err:
        m.parse_object({"apiVersion": "extensions/v1beta1", "kind": "NetworkPolicy", "metadata": {"name": "s"}})
    assert err.value.field == "apiVersion"
