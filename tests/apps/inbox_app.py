"""A Flask-SQLAlchemy shop app that keeps its users' notifications in its own database.

    DATABASE_URL=sqlite:////tmp/shop.db gunicorn -k gevent 'tests.apps.inbox_app:create_app()'

``POST /orders`` stores an order and, in the same transaction, the "Order received"
notification (``notifier.publish_after_commit``); it is published once the commit is done.
``?fail=1`` stands for a check that fails after both were written: the transaction rolls
back, and neither the order nor its notification exists. Users log in at /login?user=alice.
"""
import os

from flask import Flask, abort, jsonify, request, session
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from notifier import Notifier
from notifier.inbox.store import sqlalchemy_url


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)
notifier = Notifier()
USERS = {"alice": 1, "bob": 2}


class Order(db.Model):
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(index=True)
    item: Mapped[str] = mapped_column(String(100))


class PaymentDeclined(Exception):
    """Raised once the order and its notification are written: both must be undone."""


def database_url() -> str:
    """DATABASE_URL as Heroku gives it (``postgres://``), for SQLAlchemy with psycopg 3."""
    return sqlalchemy_url(os.environ.get("DATABASE_URL", "sqlite:///inbox_app.db"))  # relative: in the instance folder


def create_app(test_config: dict | None = None) -> Flask:
    app = Flask(__name__)
    app.config.from_mapping(SECRET_KEY=os.environ.get("SECRET_KEY", "dev"), SQLALCHEMY_DATABASE_URI=database_url())
    if test_config:
        app.config.update(test_config)

    db.init_app(app)
    notifier.init_app(app, url_prefix="/notifier", inbox=db)
    with app.app_context():
        db.create_all()  # the app's tables; notifier makes its own on first use

    @notifier.identify
    def current_user():
        return session.get("user_id")

    @app.get("/login")
    def login():  # stands in for the app's real login
        session["user_id"] = USERS.get(request.args.get("user", "")) or abort(404)
        return jsonify(user_id=session["user_id"])

    @app.post("/orders")
    def create_order():
        user_id = current_user()
        if user_id is None:
            abort(401)
        order = Order(user_id=user_id, item=(request.get_json(silent=True) or {}).get("item", "book"))
        db.session.add(order)
        db.session.flush()  # the order's id, for the notification
        notifier.publish_after_commit(user_id=user_id, title="Order received", type="order.created",
                                      data={"order": order.id})
        if request.args.get("fail"):
            raise PaymentDeclined(order.id)
        db.session.commit()  # the order and its notification; published from here on
        return jsonify(id=order.id), 201

    @app.errorhandler(PaymentDeclined)
    def payment_declined(exc):
        db.session.rollback()  # neither the order nor its notification
        return jsonify(error="payment declined"), 402

    @app.get("/orders")
    def list_orders():
        user_id = current_user()
        if user_id is None:
            abort(401)
        orders = db.session.scalars(db.select(Order).filter_by(user_id=user_id).order_by(Order.id))
        return jsonify(orders=[{"id": o.id, "item": o.item} for o in orders])

    return app
