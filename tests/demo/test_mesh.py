"""The demo's istiod stand-in: how each weight period's actual split is measured."""

from __future__ import annotations

from controller.sandbox.demo.mesh import Period, split_checks


def test_requests_answered_while_the_weights_change_count_in_neither_period() -> None:
    periods = [
        Period(0.0, {"v1": 100, "v2": 0}, {"v1": 0, "v2": 0}, {"v1": 0, "v2": 0}),
        # 30 requests answered between the snapshot before and the one after the change (a busy process)
        Period(10.0, {"v1": 50, "v2": 50}, {"v1": 1030, "v2": 0}, {"v1": 1000, "v2": 0}),
        Period(20.0, {"v1": 0, "v2": 100}, {"v1": 1530, "v2": 520}, {"v1": 1530, "v2": 500}),
    ]
    checks = split_checks(periods, {"v1": 1532, "v2": 1520}, now=30.0)
    assert [c.served for c in checks] == [{"v1": 1000, "v2": 0}, {"v1": 500, "v2": 500}, {"v1": 2, "v2": 1000}]
    assert [c.seconds for c in checks] == [10.0, 10.0, 10.0]
    assert checks[1].share("v2") == 0.5 and checks[1].total == 1000
