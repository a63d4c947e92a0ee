"""The only modules that import client libraries: Kubernetes (kube, with its Lease election in
kube.leader) and Prometheus. Each implements a Protocol of :mod:`controller.engine.ports`.
"""
