"""The inbox routes: GET /inbox, POST /inbox/read, DELETE /inbox/<id>, for the user the
request identifies (a token, or the host app's session through ``identify``), as the
streams identify them. A change is told to every connection of that user at once."""
from __future__ import annotations


from flask import Response, request

from ..auth import check_origin
from ..core.notification import DELETED, READ
from ..errors import InvalidNotification, NotFound, Unauthorized
from ..service import Service, is_id
from .body import read_json_body
from .views import Subscription, json_bytes, limit_arg, service

DEFAULT_LIMIT = 50


def _user(svc: Service) -> str:
    if svc.inbox is None:
        raise NotFound("the inbox is off: set NOTIFIER_INBOX_URL (or Notifier(app, inbox=db))")
    check_origin(svc.settings, request.headers.get("Origin"), request.host)  # as the streams do
    user_id = Subscription(svc, live=False, stream=False).user_id
    if user_id is None:
        raise Unauthorized("the inbox is a user's: connect with a token (?token= or Authorization: Bearer) "
                           "or the app's session")
    return user_id


def inbox_list() -> tuple[Response, int]:
    """GET /inbox?limit=&before=: newest first, each with ``read``, and the unread count."""
    svc = service()
    user_id = _user(svc)
    before = request.args.get("before") or None
    if before is not None and not is_id(before):
        raise InvalidNotification("before must be a notification id")
    page = svc.inbox.page(user_id, limit_arg(DEFAULT_LIMIT), before)  # type: ignore[union-attr]
    # The stored fields are JSON already: spliced in, not decoded and encoded again.
    items = ",".join(f'{{"id":"{row["id"]}",{row["body"][1:-1]},"read":{"true" if row["read"] else "false"}}}'
                     for row in page.rows)
    body = f'{{"notifications":[{items}],"unread":{page.unread},"more":{"true" if page.more else "false"}}}'
    return json_bytes(body.encode()), 200


def inbox_read() -> tuple[Response, int]:
    """POST /inbox/read {"ids": [...]} or {"all": true}."""
    svc = service()
    user_id = _user(svc)
    payload = read_json_body(svc)
    if payload == {"all": True}:
        ids = None
    elif isinstance(payload, dict) and set(payload) == {"ids"} and isinstance(payload["ids"], list) \
            and 1 <= len(payload["ids"]) <= 1000 and all(isinstance(i, str) and is_id(i) for i in payload["ids"]):
        ids = payload["ids"]
    else:
        raise InvalidNotification('body must be {"ids": [1 to 1000 notification ids]} or {"all": true}')
    unread, missing = svc.inbox.mark_read(user_id, ids)  # type: ignore[union-attr]
    if missing:
        raise NotFound(f"not in your inbox: {', '.join(missing[:10])}")
    svc.inbox_changed(user_id, READ, ids if ids is not None else "all", unread)
    return json_bytes(b'{"unread":%d}' % unread), 200


def inbox_delete(notification_id: str) -> tuple[Response, int]:
    """DELETE /inbox/<id>."""
    svc = service()
    user_id = _user(svc)
    unread = svc.inbox.remove(user_id, notification_id) if is_id(notification_id) else None  # type: ignore[union-attr]
    if unread is None:
        raise NotFound(f"not in your inbox: {notification_id[:64]}")
    svc.inbox_changed(user_id, DELETED, [notification_id], unread)
    return Response(status=204), 204
