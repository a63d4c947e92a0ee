"""The benchmark: simulated Istio/Prometheus canary rollouts judged by canarist and by the anchors' methods.

``python -m bench`` runs every engine on the same simulated traffic and writes ``bench/results/``.
"""
