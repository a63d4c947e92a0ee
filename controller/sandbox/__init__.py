"""What runs the controller on one machine: the local Kubernetes API stand-in and the demo.
Never imported by the engine, the edges, the manager or the in-cluster controller.
"""
