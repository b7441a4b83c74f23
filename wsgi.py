"""The WSGI entry point: ``gunicorn wsgi:app`` (see gunicorn.conf.py and the Procfile)."""
from notifier import ConfigError, create_app

try:
    app = create_app()
except ConfigError as exc:  # one line that names the key, not a traceback
    raise SystemExit(f"notifier cannot start: {exc}") from None
