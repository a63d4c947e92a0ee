"""Chaos for the controller: a seeded fault schedule for the Kubernetes API, invariants checked on
every write, and the soak that drives whole rollouts through both (``python -m bench.chaos``).

Sandbox only: the engine, the edges and the manager never import it (import-linter keeps it so).
"""
