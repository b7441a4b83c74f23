"""A plain app-factory Flask app (like Flask's flaskr tutorial) with notifier added.

    flask --app examples.factory_app run --debug        # threads, on your laptop
    gunicorn -k gevent 'examples.factory_app:create_app()'   # gevent workers

Users log in at /login?user=alice (ids are ints, as a database gives them); POST /posts
commits a post and then notifies its author; open / to watch it arrive live.
"""
import os

from flask import Flask, abort, jsonify, request, session

from notifier import Notifier

notifier = Notifier()
USERS = {"alice": 1, "bob": 2}


def create_app(test_config: dict | None = None) -> Flask:
    app = Flask(__name__)
    app.config.from_mapping(SECRET_KEY=os.environ.get("SECRET_KEY", "dev"))
    if os.environ.get("FACTORY_REDIS_URL"):  # stands in for a host app's own config file
        app.config["NOTIFIER_REDIS_URL"] = os.environ["FACTORY_REDIS_URL"]
    if test_config:
        app.config.update(test_config)

    notifier.init_app(app, url_prefix="/notifier")

    @notifier.identify
    def current_user():
        return session.get("user_id")  # an int, or None when logged out

    @app.get("/login")
    def login():
        name = request.args.get("user", "")
        if name not in USERS:
            abort(404)
        session["user_id"] = USERS[name]
        return jsonify(user_id=USERS[name])

    @app.post("/posts")
    def create_post():
        user_id = session.get("user_id")
        if user_id is None:
            abort(401)
        title = (request.get_json(silent=True) or {}).get("title", "untitled")
        # ... db.execute("INSERT ..."); db.commit() — then, once it is committed:
        notification_id = notifier.publish("Post published", title, type="post.created", user_id=user_id)
        return jsonify(notification=notification_id), 201

    @app.get("/")
    def index():
        return PAGE

    return app


PAGE = """<!doctype html>
<title>factory app</title>
<ul id="feed"></ul>
<script src="/notifier/notifier.js"></script>
<script>
  const feed = document.getElementById("feed");
  const notifier = new Notifier();  // the session cookie says who this is
  notifier.on("notification", (n) => {
    const li = document.createElement("li");
    li.textContent = n.title + ": " + n.message;
    feed.prepend(li);
  });
  notifier.connect();
</script>
"""
