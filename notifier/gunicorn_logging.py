"""gunicorn's logger with tokens and keys redacted: query strings can carry ``token=``.

The access log format already leaves query strings out; this covers gunicorn's own
messages (an invalid request line is logged whole) and anything else it prints.
"""
from __future__ import annotations

import logging
import re

from gunicorn.glogging import Logger

SECRET_PARAM = re.compile(r"(?i)((?:token|key|secret|authorization)=)[^&\s'\"]+")
BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")


def redact(text: str) -> str:
    return BEARER.sub(r"\1[redacted]", SECRET_PARAM.sub(r"\1[redacted]", text))


class RedactSecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


class RedactingLogger(Logger):
    """Use with ``logger_class`` in gunicorn.conf.py."""

    def setup(self, cfg) -> None:  # type: ignore[no-untyped-def]
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            log.addFilter(RedactSecrets())
