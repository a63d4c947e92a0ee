"""Shared fixtures: a real Prometheus server (Debian's binary) for the metrics tests, a real Triton for Triton's."""

import pytest

pytest.register_assert_rewrite("tests.prometheus_fixture", "tests.triton_fixture")

pytest_plugins = ["tests.prometheus_fixture", "tests.triton_fixture"]
