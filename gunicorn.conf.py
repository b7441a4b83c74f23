"""gunicorn settings for notifier (``gunicorn wsgi:app`` reads this file from here).

They live in ``notifier.gunicorn_conf``, so a host app's own gunicorn can take them too:
``gunicorn -c python:notifier.gunicorn_conf 'yourapp:create_app()'``.
Values in GUNICORN_CMD_ARGS override these, as gunicorn documents.
"""
from notifier.gunicorn_conf import *  # noqa: F401,F403
