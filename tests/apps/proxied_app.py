"""A host app behind a reverse proxy (ProxyFix trusts one X-Forwarded-For hop) with notifier mounted."""
from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from notifier import Notifier

app = Flask(__name__)
app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1)  # REMOTE_ADDR now comes from X-Forwarded-For
Notifier(app)
