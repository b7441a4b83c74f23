"""``flask --app wsgi notifier ...``: mint tokens, send a notification, listen to the stream.

The commands hang on the notifier blueprint's CLI group, so they exist wherever notifier
is mounted (the standalone app and drop-in apps alike). ``send`` publishes in-process
through the app's broker when that broker is Redis (every server following it gets it);
otherwise, and always with ``--url``, it goes over HTTP through ``notifier.client``.
``listen`` follows ``GET /events`` through ``notifier.client``: one JSON line per
notification, resuming after drops.

Every command runs in a fresh process that has just imported Flask and made the app,
so each imports only what it uses (``notifier.client`` for HTTP, PyJWT for a token)
and ``send`` answers quickly.
"""
from __future__ import annotations

import json
from typing import Any

import click
from flask import Blueprint, current_app

from .config import local_url
from .errors import BrokerUnavailable, NotifierError
from .tokens import DEFAULT_TTL, issue_token
from .validation import MAX_BATCH


def _state() -> Any:
    return current_app.extensions["notifier"]


def _mounted_url() -> str:
    """This host's server, with the prefix the notifier blueprint is mounted under."""
    for rule in current_app.url_map.iter_rules():
        if rule.endpoint == "notifier.healthz":
            return local_url() + rule.rule[: -len("/healthz")]
    return local_url()


def _json_object(ctx: click.Context, param: click.Parameter, value: str | None) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        data = json.loads(value)
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise click.BadParameter("must be a JSON object, like '{\"id\": 17}'")
    return data


class _Sender:
    """Publishes for ``send``: in-process into Redis when the app has a Redis broker and no
    --url was given (every server following it gets it), else over HTTP."""

    def __init__(self, service: Any, url: str | None, key: str | None, timeout: float) -> None:
        self.service, self.timeout = service, timeout
        self.url = url
        self.target = url or _mounted_url()
        self.key = key or next(iter(service.settings.api_keys), None)

    def send(self, payload: dict[str, Any] | list[dict[str, Any]]) -> None:
        """Publish one notification or a batch; print the ids, one a line."""
        if self.url is None and self.service.settings.redis_url:
            try:
                ids = self.service.publish(payload, start=False).ids
            except BrokerUnavailable as exc:
                raise click.ClickException(f"not sent: {exc.message}") from None
            except NotifierError as exc:
                where = f"item {exc.index + 1} of the batch: " if exc.index is not None else ""
                raise click.UsageError(where + exc.message) from None
        else:
            from .client import ClientError, publish_many

            try:
                ids = publish_many(payload, url=self.target, key=self.key, timeout=self.timeout) \
                    if isinstance(payload, list) else [self._publish_one(payload)]
            except ValueError as exc:  # a malformed --url
                raise click.BadParameter(str(exc), param_hint="--url") from None
            except ClientError as exc:
                if exc.status is not None and 400 <= exc.status < 500:
                    raise click.UsageError(f"{self.target} refused it ({exc.status}): {exc.error}") from None
                raise click.ClickException(f"not sent: {exc}") from None
        for notification_id in ids:
            click.echo(notification_id)

    def _publish_one(self, fields: dict[str, Any]) -> str:
        from .client import publish

        return publish(fields.get("title"), fields.get("message"), user=fields.get("user_id"),
                       topic=fields.get("topic"), type=fields.get("type"), data=fields.get("data"),
                       url=self.target, key=self.key, timeout=self.timeout)


def register(bp: Blueprint) -> None:
    """Add the ``token``, ``send``, ``listen`` and ``inbox init`` commands to the blueprint's CLI group."""

    @bp.cli.command("token")
    @click.argument("user")
    @click.option("--topic", "topics", multiple=True, help="private topic to grant (repeatable; a trailing * grants a prefix)")
    @click.option("--ttl", type=int, default=DEFAULT_TTL, show_default=True, help="seconds the token is valid")
    def token_command(user: str, topics: tuple[str, ...], ttl: int) -> None:
        """Print a subscriber token for USER, signed with NOTIFIER_SECRET."""
        try:
            click.echo(issue_token(_state().settings.secret, user, topics, ttl))
        except (NotifierError, ValueError) as exc:
            raise click.UsageError(str(exc)) from None

    @bp.cli.command("send")
    @click.argument("title", required=False)
    @click.argument("message", required=False)
    @click.option("--user", help="send to this user's connections")
    @click.option("--topic", help="send to the connections subscribed to this topic")
    @click.option("--type", "type_", metavar="TYPE", help="notification type (default: notification)")
    @click.option("--data", callback=_json_object, metavar="JSON", help="a JSON object carried as data")
    @click.option("--jsonl", type=click.File("r"), metavar="FILE|-",
                  help="publish one notification per line (JSON objects with the API's fields), in batches")
    @click.option("--url", help="publish over HTTP to this server (default: through REDIS_URL, or this host's server)")
    @click.option("--key", help="publisher key for --url (default: the first of NOTIFIER_API_KEYS)")
    @click.option("--timeout", type=float, default=10.0, show_default=True, help="seconds to wait for the server")
    def send_command(title: str | None, message: str | None, user: str | None, topic: str | None,
                     type_: str | None, data: dict[str, Any] | None, jsonl: Any, url: str | None, key: str | None,
                     timeout: float) -> None:
        """Publish a notification with TITLE (and MESSAGE), or every line of --jsonl; prints the ids.

        Without --user or --topic it goes to every connection.
        """
        if user is not None and topic is not None:
            raise click.UsageError("give --user or --topic, not both")
        if (title is None) == (jsonl is None):
            raise click.UsageError("give a TITLE, or --jsonl FILE (- for standard input)")
        sender = _Sender(_state(), url, key, timeout)
        if jsonl is None:
            fields = {"title": title, "message": message, "user_id": user, "topic": topic, "type": type_, "data": data}
            sender.send({k: v for k, v in fields.items() if v is not None})
            return
        batch: list[dict[str, Any]] = []
        for number, line in enumerate(jsonl, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError as exc:
                raise click.UsageError(f"line {number}: not valid JSON: {exc}") from None
            if not isinstance(item, dict):
                raise click.UsageError(f"line {number}: must be a JSON object")
            batch.append(item)
            if len(batch) == MAX_BATCH:
                sender.send(batch)
                batch = []
        if batch:
            sender.send(batch)

    @bp.cli.command("listen")
    @click.option("--topic", "topics", multiple=True, help="topic to subscribe to (repeatable)")
    @click.option("--token", help="subscriber token (see the token command)")
    @click.option("--user", help="listen as this user: mints a fresh token with NOTIFIER_SECRET at every connect")
    @click.option("--url", help="the server (default: this host's, on $PORT)")
    @click.option("--last-event-id", help="resume after this notification id")
    @click.option("--count", type=int, help="exit after this many notifications")
    @click.option("--read-timeout", type=float, default=60.0, show_default=True,
                  help="seconds of silence (no keepalive either) before reconnecting")
    def listen_command(topics: tuple[str, ...], token: str | None, user: str | None, url: str | None,
                       last_event_id: str | None, count: int | None, read_timeout: float) -> None:
        """Print each notification as it arrives, one JSON line each; reconnects and resumes after drops."""
        if token is not None and user is not None:
            raise click.UsageError("give --token or --user, not both")
        source: Any = token
        if user is not None:
            secret, private = _state().settings.secret, tuple(t for t in topics if t.startswith("private-"))

            def source() -> str:
                return issue_token(secret, user, private, DEFAULT_TTL)

            try:
                source()  # fails here, not at connect time, without NOTIFIER_SECRET
            except (NotifierError, ValueError) as exc:
                raise click.UsageError(str(exc)) from None
        from .client import ClientError, subscribe

        subscription = subscribe(url or _mounted_url(), topics, source, last_event_id or None,
                                 read_timeout=read_timeout)
        seen = 0
        try:
            for notification in subscription:
                click.echo(json.dumps(notification, separators=(",", ":"), ensure_ascii=False))
                seen += 1
                if count is not None and seen >= count:
                    break
        except ValueError as exc:  # a malformed --url
            raise click.BadParameter(str(exc), param_hint="--url") from None
        except ClientError as exc:
            raise click.ClickException(f"refused: {exc}") from None
        except KeyboardInterrupt:
            pass
        finally:
            subscription.close()

    @bp.cli.group("inbox")
    def inbox_group() -> None:
        """The inbox's tables (NOTIFIER_INBOX_URL, or the app's database given as inbox=)."""

    @inbox_group.command("init")
    def inbox_init_command() -> None:
        """Create the inbox's tables if missing (idempotent; the server also does on first use)
        and print the schema version: for a deploy's release step."""
        inbox = _state().inbox
        if inbox is None:
            raise click.UsageError("the inbox is off: set NOTIFIER_INBOX_URL (or Notifier(app, inbox=db))")
        try:
            version = inbox.init()
        except NotifierError as exc:
            raise click.ClickException(str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - the database's own error, said in one line
            raise click.ClickException(f"inbox database: {exc}") from None
        click.echo(f"inbox tables ready (schema version {version})")
