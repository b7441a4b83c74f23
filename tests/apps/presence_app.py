"""A host app asking notifier who is online, from Python: ``notifier.presence(topic)`` and
``notifier.online(user_id)`` (what an app does to skip an e-mail to a user who is online)."""
from flask import Flask, jsonify

from notifier import Notifier

app = Flask(__name__)
notifier = Notifier(app)


@app.get("/who/<path:topic>")
def who(topic):
    return jsonify(notifier.presence(topic))


@app.get("/online/<user>")
def online(user):
    return jsonify(connections=notifier.online(user))
