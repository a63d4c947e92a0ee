"""Shared fixtures: a real Prometheus server (Debian's binary) for the metrics tests."""

import pytest

pytest.register_assert_rewrite("tests.prometheus_fixture")

pytest_plugins = ["tests.prometheus_fixture"]
