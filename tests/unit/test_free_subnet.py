"""The test fixture free_subnet never hands one test overlapping subnets (issue 15's refused dial)."""

from __future__ import annotations

import random

import pytest

from tests import conftest


def test_one_tests_subnets_never_overlap(monkeypatch):
    monkeypatch.setattr(conftest, "_machine_routes", list)
    monkeypatch.setattr(conftest, "_HANDED_OUT", [])  # what earlier tests hold is not in this tiny pool
    # A tiny pool: a /23 holds two /24s, so a repeat would be likely if picks were independent.
    monkeypatch.setattr(conftest, "TEST_V4_POOL", conftest.ipaddress.ip_network("198.18.0.0/23"))
    random.seed(1)
    first, second = conftest.free_subnet(4), conftest.free_subnet(4)
    assert not first.overlaps(second)
    with pytest.raises(RuntimeError, match="no free"):  # the /23 is used up: never an overlap
        conftest.free_subnet(4, 30)
