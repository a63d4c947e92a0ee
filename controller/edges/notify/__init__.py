"""Notifications at the edge: a rollout's decisions announced to Slack, Teams, Discord, e-mail and
webhooks (``sinks``: one delivery; ``notifier``: the queue, the worker and the retries)."""

from controller.edges.notify.notifier import Notifier, Sink, file_sink
from controller.edges.notify.sinks import DeliveryError, deliver

__all__ = ["DeliveryError", "Notifier", "Sink", "deliver", "file_sink"]
