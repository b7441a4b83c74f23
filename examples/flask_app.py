"""An existing Flask app with its own login, adding notifier in three lines.

Run: gunicorn examples.flask_app:app -c gunicorn.conf.py
Then: curl 'localhost:8000/login?user=alice' -c jar; curl -N -b jar localhost:8000/notifier/events
and:  curl -X POST localhost:8000/notifier/notify -H 'Content-Type: application/json' \
           -d '{"user_id": "alice", "title": "Hello Alice"}'
"""
import os

from flask import Flask, jsonify, request, session

from notifier import Notifier

app = Flask(__name__)
app.config["SECRET_KEY"] = os.environ.get("SECRET_KEY", "dev-only-not-secret")


@app.get("/login")
def login():
    """Stands in for the app's real login: puts the user in the session."""
    session["user_id"] = request.args["user"]
    return jsonify(user=session["user_id"])


@app.post("/logout")
def logout():
    """Logging out ends the user's open notification streams too, in every tab and on
    every worker: a stream opened with the session cookie would otherwise outlive it."""
    user = session.pop("user_id", None)
    if user is not None:
        notifier.disconnect(user)
    return jsonify(user=None)


@app.post("/orders")
def create_order():
    """Business code publishing from Python: the buyer gets a notification."""
    order = {"id": 1, "user": session.get("user_id", "anonymous")}
    notifier.publish("Order received", f"Order #{order['id']} is being prepared",
                     type="order.created", user_id=order["user"], data=order)
    return jsonify(order), 201


# The three lines: mount notifier, and tell it who the logged-in user is.
notifier = Notifier(app, url_prefix="/notifier")
notifier.identify(lambda: session.get("user_id"))
