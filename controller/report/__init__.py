"""The HTML report and its plots, read from a rollout's stored status."""
