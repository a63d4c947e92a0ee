"""Sending one notification to one service: the generic webhook, Slack, and apprise for the rest.

The generic webhook receives canarist's own JSON payload (:mod:`controller.engine.notices`); Slack
gets Block Kit through the official ``slack_sdk``; Microsoft Teams, Discord, e-mail and any other
apprise URL go through ``apprise``, which knows each service's format. A failure is a
:class:`DeliveryError` whose message never holds the URL (it carries the service's credentials):
the HTTP status or the exception's type, nothing the URL's text could leak through.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import urllib3

from controller.api.notify import SinkType
from controller.engine import notices

#: The libraries' loggers can print a URL (slack_sdk at DEBUG, urllib3 when it retries): kept quiet.
QUIET_LOGGERS = ("apprise", "slack_sdk", "urllib3")
#: The apprise plugins each typed sink accepts (APPRISE: any).
APPRISE_PLUGINS = {
    SinkType.TEAMS: {"NotifyMSTeams", "NotifyWorkflows"},
    SinkType.DISCORD: {"NotifyDiscord"},
    SinkType.EMAIL: {"NotifyEmail"},
}


class DeliveryError(Exception):
    """A notification not delivered; the message is safe to log (no URL)."""


def quiet_libraries() -> None:
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("apprise").setLevel(logging.CRITICAL)  # its warnings name the target


def check_url(kind: SinkType, url: str) -> None:
    """Raise :class:`DeliveryError` if ``url`` cannot be ``kind``'s (said without the URL)."""
    if kind in (SinkType.WEBHOOK, SinkType.SLACK):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise DeliveryError(f"a {kind.value} URL must be http:// or https:// with a host")
        return
    _apprise(kind, url)


def deliver(kind: SinkType, url: str, payload: Mapping[str, Any], *, timeout: float = 5.0) -> None:
    """Send ``payload`` to ``url`` as ``kind`` wants it; raise :class:`DeliveryError` if not delivered."""
    check_url(kind, url)
    if kind is SinkType.WEBHOOK:
        _webhook(url, payload, timeout)
    elif kind is SinkType.SLACK:
        _slack(url, payload, timeout)
    else:
        service = _apprise(kind, url)
        try:
            import apprise

            sent = service.notify(
                body=notices.text(payload), title=notices.title(payload), body_format=apprise.NotifyFormat.MARKDOWN
            )
        except Exception as exc:  # a plugin's own failure: never the URL in the message
            raise DeliveryError(f"{kind.value}: {type(exc).__name__}") from None
        if not sent:
            raise DeliveryError(f"{kind.value}: the service refused it or did not answer")


def _webhook(url: str, payload: Mapping[str, Any], timeout: float) -> None:
    body = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "canarist"}
    try:
        with urllib3.PoolManager() as pool:
            response = pool.request(
                "POST", url, body=body, headers=headers, timeout=urllib3.Timeout(total=timeout), retries=False,
                redirect=False,
            )  # fmt: skip
    except urllib3.exceptions.HTTPError as exc:
        raise DeliveryError(f"Webhook: {type(exc).__name__}") from None
    if not 200 <= response.status < 300:
        raise DeliveryError(f"Webhook: HTTP {response.status}")


def _slack(url: str, payload: Mapping[str, Any], timeout: float) -> None:
    from slack_sdk.webhook import WebhookClient

    title = notices.title(payload)
    blocks = [
        {"type": "header", "text": {"type": "plain_text", "text": title[:150]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": notices.text(payload)[:3000]}},
    ]
    try:
        response = WebhookClient(url, timeout=max(1, round(timeout))).send(text=title, blocks=blocks)
    except Exception as exc:  # urllib's errors name the URL: only the type is kept
        raise DeliveryError(f"Slack: {type(exc).__name__}") from None
    if response.status_code != 200:
        raise DeliveryError(f"Slack: HTTP {response.status_code}")


def _apprise(kind: SinkType, url: str) -> Any:
    import apprise

    service = apprise.Apprise()
    if not service.add(url):
        raise DeliveryError(f"{kind.value}: not a URL apprise knows")
    wanted = APPRISE_PLUGINS.get(kind)
    if wanted is not None and {type(s).__name__ for s in service} - wanted:
        raise DeliveryError(f"{kind.value}: the URL is for another service")
    return service
