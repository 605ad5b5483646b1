"""Kubernetes network policy for pycni: the pure engine.

Where a policy becomes rules (one look for a newcomer):

    model.py     frozen values parsed and validated from the Kubernetes JSON/YAML: NetworkPolicy
                 (networking.k8s.io/v1), AdminNetworkPolicy and BaselineAdminNetworkPolicy
                 (policy.networking.k8s.io/v1alpha1), Pod, Namespace, Node, World; PolicyError
                 names the bad field (`spec.ingress[0].ports[1].endPort`)
    evaluate.py  the reference semantics: verdict(world, src, dst, port, protocol) -> Decision
                 (ANP by priority, then NetworkPolicy, then BANP; egress at the source AND
                 ingress at the destination), with the deciding policies and rules
    compile.py   world -> per-node enforcement model (per local pod: ordered ingress/egress rule
                 lists whose peers are named address sets), simulate() over that model, and
                 render_nft(): one atomic nft script for pycni's policy chains and sets
    explain.py   the text of `pycni policy explain` and the validation path of `pycni policy apply`

Everything here is pure (no I/O, no netlink, no subprocess) except model.load_file().
"""
