"""The only modules that import client libraries: Kubernetes (kube, leader) and Prometheus."""
