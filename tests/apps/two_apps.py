"""Two app-factory apps in one process, each with notifier mounted, behind one WSGI
dispatcher: /a and /b. Each must get its own hub, broker and identify hook."""
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from examples.factory_app import create_app

app_a = create_app({"SECRET_KEY": "a"})
app_b = create_app({"SECRET_KEY": "b"})
app = DispatcherMiddleware(app_a, {"/b": app_b})
