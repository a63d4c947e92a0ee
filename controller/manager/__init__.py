"""The in-cluster controller: the loop over rollouts, its /metrics and health, and the wiring of
edges to the engine.
"""
