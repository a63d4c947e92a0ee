"""canarist: statistical canary rollouts of ML model versions on Istio."""

__version__ = "0.1.0"
