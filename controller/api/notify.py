"""``spec.notify``: where a rollout's decisions are announced, and which ones.

A sink names a service (:class:`SinkType`) and a Kubernetes Secret key in the rollout's namespace
that holds its URL: the URL carries the service's credentials (a Slack webhook's token, an SMTP
password), so it is never in the policy, and canarist never writes it to a log line, an Event or
the status. ``events`` chooses what is announced; without it, every decision but a hold (whose
reason changes often while a step waits for evidence).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field, StringConstraints

from controller.api.fields import DnsLabel, Model

#: A Secret's name (a DNS subdomain) and a key of its data (what the API server accepts for both).
SecretName = Annotated[
    str, StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$", max_length=253)
]
SecretKey = Annotated[str, StringConstraints(pattern=r"^[-._a-zA-Z0-9]+$", max_length=253)]
MAX_SINKS = 8


class NotifyEvent(StrEnum):
    """What is announced: one event per decision, named as a user reads it."""

    STARTED = "Started"
    ADVANCED = "Advanced"
    HELD = "Held"  # a hold whose reason changed
    PAUSED = "Paused"
    RESUMED = "Resumed"
    PROMOTED = "Promoted"
    COMPLETED = "Completed"
    ROLLED_BACK = "RolledBack"  # a proven regression, a human's abort, a deadline
    GATE_FAILED = "GateFailed"
    SLO_BREACHED = "SloBreached"
    RESTARTED = "Restarted"  # a retry, or a new canary


#: What a sink announces unless it says: everything but holds.
DEFAULT_EVENTS = tuple(e for e in NotifyEvent if e is not NotifyEvent.HELD)


class SinkType(StrEnum):
    """The service a sink posts to; how its URL is written is in the README (Notifications)."""

    WEBHOOK = "Webhook"  # canarist's JSON payload (canarist.io/notification/v1), POSTed to an http(s) URL
    SLACK = "Slack"  # a Slack incoming webhook URL
    TEAMS = "Teams"  # a Microsoft Teams (Power Automate or Office connector) webhook URL
    DISCORD = "Discord"  # a Discord webhook URL
    EMAIL = "Email"  # mailto:// or mailtos:// (SMTP), as apprise writes it
    APPRISE = "Apprise"  # any other apprise URL


class SecretKeyRef(Model):
    name: SecretName
    key: SecretKey


class UrlSource(Model):
    secret_key_ref: SecretKeyRef = Field(description="The Secret (in the rollout's namespace) and key holding the URL.")


class NotifySink(Model):
    name: DnsLabel = Field(description="The sink's name, for logs and the notification counter.")
    type: Annotated[SinkType, Field(strict=False)]  # enums by their value, as YAML writes them
    url_from: UrlSource
    events: (
        Annotated[list[Annotated[NotifyEvent, Field(strict=False)]], Field(min_length=1, max_length=len(NotifyEvent))]
        | None
    ) = Field(default=None, description="What this sink announces (default: every decision but a hold).")

    def wants(self, event: NotifyEvent) -> bool:
        return event in (self.events or DEFAULT_EVENTS)


class Notify(Model):
    sinks: Annotated[list[NotifySink], Field(min_length=1, max_length=MAX_SINKS)]
