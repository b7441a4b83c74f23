"""Peer for the benchmark: the smallest Flask-SSE app that does what notifier does.

Run by bench/bench.py as ``gunicorn -k gevent -w 1 flask_sse_app:app`` from its own venv
(bench/.venvs/flask-sse). ``POST /notify`` takes the same JSON body as notifier's and
hands it to ``sse.publish``; subscribers read ``GET /events`` (Flask-SSE's blueprint:
one Redis pub/sub connection per subscriber, by design of Flask-SSE).
"""
import os

import redis
from flask import Flask, jsonify, request
from flask_sse import sse

app = Flask(__name__)
app.config["REDIS_URL"] = os.environ["REDIS_URL"]
app.register_blueprint(sse, url_prefix="/events")


@app.post("/notify")
def notify():
    sse.publish(request.get_json(), type="notification")
    return jsonify(ok=True), 202


@app.get("/readyz")
def readyz():
    redis.Redis.from_url(app.config["REDIS_URL"]).ping()
    return jsonify(status="ready")
