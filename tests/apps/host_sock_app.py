"""A host app with a flask-sock route of its own (an echo) next to notifier's /ws."""
from flask import Flask
from flask_sock import Sock

from notifier import Notifier

app = Flask(__name__)
sock = Sock(app)


@sock.route("/echo")
def echo(ws):
    """Reads with ws.receive(): needs simple-websocket's reader, which notifier's /ws does without."""
    while True:
        ws.send("echo:" + ws.receive(timeout=10))


Notifier(app, url_prefix="/n")
