"""``publish_after_commit``: a notification kept in the app's own transaction and published
once it commits (the outbox pattern).

The inbox row is written through the app's session, so it commits or rolls back with the
app's own change. Its notification has no id until the broker takes it, after the commit:
the row is written under a provisional id of the same form, renamed once the broker
answers. If the broker cannot take it then, the row stays, under the provisional id, and
the error is logged: the notification is kept, though its live delivery was missed.
"""
from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlalchemy.orm import Session

from ..core.notification import encode_fields, format_id, now_ms
from ..errors import NotifierError
from ..validation import validate_publish
from .store import Row

if TYPE_CHECKING:
    from ..service import Service

log = logging.getLogger(__name__)

PENDING = "notifier.pending"
"""``session.info`` key: what this session's transaction will publish when it commits."""


def publish_after_commit(service: "Service", session: Any, payload: dict[str, Any]) -> None:
    fields = validate_publish(payload)
    if "user_id" not in fields:
        raise NotifierError("publish_after_commit is for a user's notification: give user_id")
    fields.pop("inbox", None)
    store = service.inbox
    assert store is not None
    ms = now_ms()
    provisional = format_id(ms, random.randrange(1_000_000))
    session = session() if not isinstance(session, Session) and callable(session) else session  # scoped_session
    conn = session.connection()  # the app's transaction
    if not store.ready:
        store.init(conn)
    store.add([Row(fields["user_id"], provisional, fields["type"], encode_fields(fields).decode(), ms)], conn=conn)
    session.info.setdefault(PENDING, []).append((service, payload, fields["ts"], fields["user_id"], provisional))


@event.listens_for(Session, "after_commit")
def _publish_pending(session: Session) -> None:
    for service, payload, ts, user_id, provisional in session.info.pop(PENDING, ()):
        try:
            # Stamped as kept, so the live copy and the inbox's say the same time.
            notification_id = service.publish({**payload, "inbox": False}, ts=ts).id
            service.inbox.rename(user_id, provisional, notification_id)
        except NotifierError as exc:
            log.error("a committed notification for user %s was kept in the inbox (as %s) but not published: %s",
                      user_id, provisional, exc)


@event.listens_for(Session, "after_transaction_end")
def _drop_pending(session: Session, transaction: Any) -> None:
    """The transaction is over without a commit (rolled back, or the session closed): what it
    would have published goes with it. (After a commit, after_commit has taken it already.)"""
    if transaction.parent is None:
        session.info.pop(PENDING, None)
