"""The floor for any Flask request here: a bare route that reads a JSON body and answers 202
with a JSON id, run by bench/publish.py on the same gunicorn gevent worker (and settings) as
notifier. What notifier's POST /notify costs above this is notifier's own."""
from flask import Flask, jsonify, request

app = Flask(__name__)


@app.post("/notify")
def notify():
    payload = request.get_json()
    return jsonify(id="1764288000000-0" if isinstance(payload, dict) else None), 202


@app.get("/readyz")
def readyz():
    return jsonify(status="ready")
