"""Undo stack: LIFO unwinding, idempotent 'already gone', failures logged but never masking."""

from __future__ import annotations

import io

import pytest

from cni_plugin.rollback import Sweep, Undo
from cni_plugin.spec.errors import FirewallFailure, LinkNotFound, NetlinkFailure


def test_unwinds_in_reverse_order_on_failure():
    done: list[str] = []
    with pytest.raises(ValueError, match="boom"):
        with Undo(io.StringIO()) as undo:
            for name in ("ipam", "veth", "masq"):
                undo.push(name, done.append, name)
            raise ValueError("boom")
    assert done == ["masq", "veth", "ipam"]


def test_disarm_keeps_everything():
    done: list[str] = []
    with Undo(io.StringIO()) as undo:
        undo.push("veth", done.append, "veth")
        undo.disarm()
    assert done == []


def test_success_without_disarm_does_not_unwind():
    done: list[str] = []
    with Undo(io.StringIO()) as undo:
        undo.push("veth", done.append, "veth")
    assert done == []


def test_failing_step_is_logged_and_does_not_mask_the_cause():
    log = io.StringIO()
    done: list[str] = []

    def broken() -> None:
        raise NetlinkFailure("netlink: delete link failed", "EBUSY")

    with pytest.raises(KeyError):
        with Undo(log) as undo:
            undo.push("first", done.append, "first")
            undo.push("broken", broken)
            undo.push("last", done.append, "last")
            raise KeyError("original")
    assert done == ["last", "first"], "unwinding goes on after a failed step"
    assert "rollback step 'broken' failed" in log.getvalue()
    assert "EBUSY" in log.getvalue()


def test_already_gone_counts_as_done():
    log = io.StringIO()

    def gone() -> None:
        raise LinkNotFound("veth1234")

    with pytest.raises(RuntimeError):
        with Undo(log) as undo:
            undo.push("gone", gone)
            raise RuntimeError("x")
    assert log.getvalue() == ""
    assert undo.ran == ["gone"]


def test_sweep_runs_every_step_and_reports_all_failures():
    ran: list[str] = []

    def step(name: str, exc: Exception | None = None) -> None:
        ran.append(name)
        if exc is not None:
            raise exc

    sweep = Sweep()
    sweep.run(step, "link", NetlinkFailure("netlink: delete failed", "EBUSY"))
    sweep.run(step, "gone", LinkNotFound("veth0"))  # already gone counts as done
    sweep.run(step, "masq", FirewallFailure("nft refused"))
    sweep.run(step, "ipam")
    assert ran == ["link", "gone", "masq", "ipam"]
    with pytest.raises(NetlinkFailure) as info:
        sweep.finish()
    assert "EBUSY" in info.value.details and "nft refused" in info.value.details


def test_sweep_without_failures_finishes_quietly():
    sweep = Sweep()
    sweep.run(lambda: None)
    sweep.finish()
