"""Peer for the benchmark: the smallest Flask-SocketIO app that does what notifier does.

Run by bench/bench.py as ``gunicorn -k gevent -w 1 socketio_app:app`` from its own venv
(bench/.venvs/socketio, without gevent-websocket, so Engine.IO uses simple-websocket).
``POST /notify`` takes the same JSON body as notifier's and emits it to every client as
the event ``notification``, through Redis (``message_queue``) as a multi-worker
deployment must.
"""
import os

import redis
from flask import Flask, jsonify, request
from flask_socketio import SocketIO

app = Flask(__name__)
socketio = SocketIO(app, message_queue=os.environ["REDIS_URL"], async_mode="gevent")


@app.post("/notify")
def notify():
    socketio.emit("notification", request.get_json())
    return jsonify(ok=True), 202


@app.get("/readyz")
def readyz():
    redis.Redis.from_url(os.environ["REDIS_URL"]).ping()
    return jsonify(status="ready")
