"""The local demo: a whole rollout on one machine."""
