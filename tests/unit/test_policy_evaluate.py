"""evaluate.verdict: the Kubernetes semantics beyond the upstream e2e matrix."""

from __future__ import annotations

import ipaddress

from cni_plugin.policy import evaluate as ev
from cni_plugin.policy import model as m

IP = ipaddress.ip_address


def world(*docs: str) -> m.World:
    base = """
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {ns: x}}
---
apiVersion: v1
kind: Namespace
metadata: {name: y, labels: {ns: y}}
---
apiVersion: v1
kind: Node
metadata: {name: n1, labels: {role: worker}}
status: {addresses: [{type: InternalIP, address: 192.0.2.1}]}
---
apiVersion: v1
kind: Node
metadata: {name: n2}
status: {addresses: [{type: InternalIP, address: 192.0.2.2}]}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: web}}
spec:
  nodeName: n1
  containers: [{name: c, ports: [{name: http, containerPort: 8080}, {name: http, containerPort: 8081, protocol: UDP}]}]
status: {podIPs: [{ip: 10.0.1.2}, {ip: "fd00::1:2"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: y, labels: {app: client}}
spec: {nodeName: n2, containers: [{name: c, ports: [{name: http, containerPort: 9090}]}]}
status: {podIPs: [{ip: 10.0.2.3}, {ip: "fd00::2:3"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: h, namespace: y}
spec: {nodeName: n1, hostNetwork: true}
status: {podIP: 192.0.2.1}
"""
    return m.build_world(m.parse_text("\n---\n".join((base, *docs))))


DENY_ALL_X = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
"""


def test_no_policy_everything_allowed() -> None:
    w = world()
    d = ev.verdict(w, w.pod("y/b"), w.pod("x/a"), 80)
    assert d.allowed and d.ingress.tier == ev.TIER_DEFAULT and d.egress.tier == ev.TIER_DEFAULT


def test_deny_all_names_the_isolating_policy() -> None:
    w = world(DENY_ALL_X)
    d = ev.verdict(w, w.pod("y/b"), w.pod("x/a"), 80)
    assert not d.allowed and d.egress.allowed and not d.ingress.allowed
    assert d.deciding == (ev.RuleRef(ev.TIER_NP, "x/deny-all", "ingress", None, "Isolate"),)
    assert not ev.verdict(w, w.pod("x/a"), w.pod("y/b"), 80).allowed  # egress side


def test_own_node_and_host_network_pods_of_that_node_are_always_allowed() -> None:
    w = world(DENY_ALL_X)
    n1, n2 = w.node("n1"), w.node("n2")
    assert n1 is not None and n2 is not None
    assert ev.verdict(w, n1, w.pod("x/a"), 8080).ingress.tier == ev.TIER_NODE
    assert ev.verdict(w, IP("192.0.2.1"), w.pod("x/a"), 8080).allowed  # the node's address, resolved
    assert ev.verdict(w, w.pod("y/h"), w.pod("x/a"), 8080).allowed
    assert not ev.verdict(w, n2, w.pod("x/a"), 8080).allowed  # another node is just an address


def test_named_port_resolves_against_the_destination_pod() -> None:
    egress_named = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: to-http, namespace: y}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{ports: [{port: http}]}]
"""
    w = world(egress_named)
    b, a = w.pod("y/b"), w.pod("x/a")
    assert ev.verdict(w, b, a, 8080).allowed  # x/a's http is 8080
    assert not ev.verdict(w, b, a, 9090).allowed  # 9090 is y/b's own http, not the destination's
    assert ev.verdict(w, b, a, 8081, "UDP").allowed is False  # named port defaults to TCP
    assert not ev.verdict(w, b, IP("198.51.100.1"), 8080).allowed  # an address has no named ports


def test_ipblock_external_and_dual_stack() -> None:
    pol = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-lb, namespace: x}
spec:
  podSelector: {}
  ingress:
  - from:
    - {ipBlock: {cidr: 198.51.100.0/24, except: [198.51.100.128/25]}}
    - {ipBlock: {cidr: "2001:db8::/32"}}
"""
    w = world(pol)
    a = w.pod("x/a")
    assert ev.verdict(w, IP("198.51.100.7"), a, 80).allowed
    assert not ev.verdict(w, IP("198.51.100.200"), a, 80).allowed
    assert ev.verdict(w, IP("2001:db8::5"), a, 80).allowed
    assert not ev.verdict(w, w.pod("y/b"), a, 80).allowed
    assert not ev.verdict(w, w.pod("y/b"), a, 80, family=6).allowed


def test_policies_add_up_and_rules_are_reported() -> None:
    p1 = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: one, namespace: x}
spec: {podSelector: {}, ingress: [{ports: [{port: 80}]}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: two, namespace: x}
spec: {podSelector: {matchLabels: {app: web}}, ingress: [{ports: [{port: 81}]}, {ports: [{port: 80, endPort: 90}]}]}
"""
    w = world(p1)
    d = ev.verdict(w, w.pod("y/b"), w.pod("x/a"), 80)
    assert d.allowed
    assert {str(r) for r in d.ingress.rules} == {
        "NetworkPolicy x/one ingress[0] -> Allow",
        "NetworkPolicy x/two ingress[1] -> Allow",
    }
    assert ev.verdict(w, w.pod("y/b"), w.pod("x/a"), 85).allowed
    assert not ev.verdict(w, w.pod("y/b"), w.pod("x/a"), 91).allowed


ANP = """
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {name: second}
spec:
  priority: 20
  subject: {namespaces: {matchLabels: {ns: x}}}
  ingress:
  - {name: allow-y, action: Allow, from: [{namespaces: {matchLabels: {ns: y}}}]}
---
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {name: first}
spec:
  priority: 10
  subject: {namespaces: {matchLabels: {ns: x}}}
  ingress:
  - {name: pass-9000, action: Pass, from: [{namespaces: {}}], ports: [{portNumber: {protocol: TCP, port: 9000}}]}
  - {name: deny-22, action: Deny, from: [{namespaces: {}}], ports: [{portNumber: {protocol: TCP, port: 22}}]}
  egress:
  - {name: no-metadata, action: Deny, to: [{networks: [169.254.169.254/32]}]}
"""

BANP = """
apiVersion: policy.networking.k8s.io/v1alpha1
kind: BaselineAdminNetworkPolicy
metadata: {name: default}
spec:
  subject: {namespaces: {}}
  ingress: [{name: deny-by-default, action: Deny, from: [{namespaces: {}}]}]
"""


def test_anp_priority_order_deny_allow_and_pass() -> None:
    w = world(ANP, DENY_ALL_X)
    b, a = w.pod("y/b"), w.pod("x/a")
    d = ev.verdict(w, b, a, 22)
    assert not d.allowed and d.ingress.tier == ev.TIER_ANP
    assert str(d.ingress.rules[0]) == "AdminNetworkPolicy first ingress[1] 'deny-22' -> Deny"
    d = ev.verdict(w, b, a, 80)  # first: no match; second: Allow beats the NetworkPolicy deny-all
    assert d.allowed and d.ingress.rules[0].policy == "second"
    d = ev.verdict(w, b, a, 9000)  # Pass: on to NetworkPolicy, which denies
    assert not d.allowed and d.ingress.tier == ev.TIER_NP and d.ingress.passed[0].name == "pass-9000"
    assert not ev.verdict(w, a, IP("169.254.169.254"), 80).allowed


def test_banp_applies_only_where_no_networkpolicy_isolates() -> None:
    allow_from_y = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-y, namespace: x}
spec: {podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]}
"""
    w = world(BANP)
    d = ev.verdict(w, w.pod("x/a"), w.pod("y/b"), 80)
    assert not d.allowed and d.ingress.tier == ev.TIER_BANP
    w = world(BANP, allow_from_y)
    d = ev.verdict(w, w.pod("y/b"), w.pod("x/a"), 80)
    assert d.allowed and d.ingress.tier == ev.TIER_NP


def test_loopback_and_non_pod_ends() -> None:
    w = world(DENY_ALL_X)
    a = w.pod("x/a")
    assert ev.verdict(w, a, a, 80).ingress.tier == ev.TIER_LOOPBACK
    d = ev.verdict(w, IP("203.0.113.9"), IP("203.0.113.10"), 80)
    assert d.allowed and d.egress.tier == ev.TIER_NOT_POD and d.ingress.tier == ev.TIER_NOT_POD
