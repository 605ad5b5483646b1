"""EtcdDatastore's pure parts: endpoints, key names (no etcd needed: nothing is contacted)."""

from __future__ import annotations

import ipaddress

import pytest

from cni_plugin.cluster.etcd import EtcdDatastore, _endpoint, _prefix_end, _unb64

N = ipaddress.ip_network


def test_endpoint_forms():
    assert _endpoint("http://10.0.0.5:2379") == ("http", "10.0.0.5", 2379)
    assert _endpoint("10.0.0.5:3379") == ("http", "10.0.0.5", 3379)
    assert _endpoint("https://[fd00::5]") == ("https", "fd00::5", 2379)
    with pytest.raises(ValueError, match="not an etcd endpoint"):
        _endpoint("unix:///run/etcd.sock")


def test_constructor_checks_and_splits():
    ds = EtcdDatastore("http://a:1, http://b:2", prefix="pycni-x/")
    assert ds.endpoints == ["http://a:1", "http://b:2"]
    assert ds.config_key == "/pycni-x/config" and ds.subnets_prefix == "/pycni-x/subnets/"
    with pytest.raises(ValueError):
        EtcdDatastore([])
    with pytest.raises(ValueError):
        EtcdDatastore(["http://a:1"], lease_ttl=0)


@pytest.mark.parametrize("subnet, key", [
    ("10.244.3.0/24", "/pycni/subnets/10.244.3.0-24"),
    ("fd00:10:244:3::/64", "/pycni/subnets/fd00:10:244:3::-64"),
])
def test_subnet_key_round_trip(subnet, key):
    ds = EtcdDatastore(["http://127.0.0.1:2379"])
    assert ds.subnet_key(N(subnet)) == key
    assert ds._subnet_of_key(key) == N(subnet)


def test_a_key_that_is_not_a_subnet_is_refused():
    ds = EtcdDatastore(["http://127.0.0.1:2379"])
    for bad in ("/pycni/subnets/not-a-subnet", "/pycni/subnets/10.244.3.1-24", "/pycni/subnets/10.244.3.0"):
        with pytest.raises(ValueError):
            ds._subnet_of_key(bad)


def test_prefix_range_end_is_last_byte_plus_one():
    assert _unb64(_prefix_end("/pycni/")) == b"/pycni0"


@pytest.mark.parametrize("fault, expected", [
    ("etcd3gw.exceptions.ConnectionFailedError", "DatastoreUnavailable"),
    ("etcd3gw.exceptions.ConnectionTimeoutError", "DatastoreUnavailable"),
    ("etcd3gw.exceptions.InternalServerError", "DatastoreUnavailable"),
    ("requests.exceptions.ChunkedEncodingError", "DatastoreUnavailable"),
    ("etcd3gw.exceptions.Etcd3Exception", "DatastoreError"),
])
def test_every_client_failure_is_translated_at_the_boundary(mocker, fault, expected):
    """Fault injection: whatever etcd3gw/requests raise leaves as a Datastore error naming the endpoint."""
    import importlib

    from cni_plugin.cluster import model

    module, _, name = fault.rpartition(".")
    exc_type = getattr(importlib.import_module(module), name)
    mocker.patch("etcd3gw.client.Etcd3Client.post", side_effect=exc_type('{"message": "boom"}'))
    ds = EtcdDatastore(["http://192.0.2.1:2379"])
    with pytest.raises(model.DatastoreError, match="192.0.2.1:2379") as info:
        ds.nodes()
    assert type(info.value).__name__ == expected
    assert isinstance(info.value.__cause__, exc_type)
