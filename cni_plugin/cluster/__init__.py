"""pycni as the node's cluster controller: pods on every node reach each other without NAT.

Where things are decided and where they are written (one look for a newcomer):

    model.py       pure values: ClusterConfig (the cluster-wide settings), NodeRecord (one node:
                   its pod subnets, underlay address, VTEP MAC), the Datastore protocol and errors
    subnets.py     pure: pick a free per-node subnet inside the cluster CIDR
    memory.py      MemoryDatastore: the Datastore twin for unit tests
    etcd.py        EtcdDatastore (etcd3gw): config key, one leased key per node subnet
    kubernetes.py  KubernetesDatastore: Node objects (spec.podCIDRs, status.addresses) by list+watch
    plan.py        pure: desired = plan(config, me, peers, local facts): routes, FDB, neighbours
    dataplane.py   apply by diff: read what pycni tagged in the kernel, add what is missing,
                   remove what is stale; nothing pycni did not create is touched
    conflist.py    pure render of the node's conflist, and its atomic write
    controller.py  the loop in pycni-agent: claim, list, watch, reconcile on events and a timer
    status.py      the status file `pycni cluster status` reads

Network policy on the same sources (the engine itself is cni_plugin/policy/, pure):

    policy_source.py      the PolicySource seam; EtcdPolicyStore (the objects `pycni apply`
                          writes, the nodes' published attachments), MemoryPolicySource
    kubernetes.py         KubernetesPolicySource: NetworkPolicy/Pod/Namespace (+ANP/BANP) list+watch
    policy_world.py       pure: snapshot + attachment records -> the engine's World
    policy_controller.py  the thread in pycni-agent: compile this node, one nft transaction, the
                          sync socket a bridge ADD waits on (cni_plugin/attachments.py)
    policy_cli.py         pycni apply|delete -f, pycni policy explain|stats

Only etcd.py and kubernetes.py import their client libraries; only cni_plugin.netlink imports
pyroute2 (dataplane.py goes through it).
"""
