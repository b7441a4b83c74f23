"""The inbox in the browser: notifier.js's inbox API and "unread" event, and the demo's bell,
in real headless Chromium against a real gunicorn with NOTIFIER_INBOX_URL (a SQLite file).

The browser fixtures and page helpers are test_browser.py's.
"""

from __future__ import annotations

import time

import pytest
from playwright.sync_api import expect

from clients import SYNC_TYPE, publish
from notifier.tokens import issue_token
from test_browser import PREFIX, SECRET, browser, open_demo, page, sync_page  # noqa: F401 (fixtures)


@pytest.fixture(scope="module")
def inbox_server(server_factory, tmp_path_factory):
    """One gevent worker, the in-process broker, the inbox in a SQLite file, tokens signed with SECRET."""
    db = tmp_path_factory.mktemp("inbox") / "inbox.db"
    return server_factory(env={"NOTIFIER_INBOX_URL": f"sqlite:///{db}", "NOTIFIER_SECRET": SECRET})


def inbox_ids(tab) -> list[str]:
    return tab.evaluate("() => [...document.querySelectorAll('#inbox-list li')].map((li) => li.dataset.id)")


def test_two_demo_tabs_of_one_user_keep_the_same_bell_and_list(inbox_server, page):
    url = inbox_server.url
    other = page.context.new_page()
    errors: list[str] = []
    other.on("pageerror", lambda exc: errors.append(str(exc)))
    tabs = [page, other]
    for tab in tabs:
        open_demo(tab, url, f"?token={issue_token(SECRET, 'alice')}")
        expect(tab.locator("#bell")).to_have_attribute("data-inbox", "on")
        expect(tab.locator("#user_id")).to_have_value("alice")  # the publish form targets the token's user
        sync_page(tab, url)
    ids = [publish(url, user_id="alice", title=f"for alice {i}") for i in (1, 2, 3)]
    publish(url, user_id="mallory", title="not for alice")
    for tab in tabs:
        expect(tab.locator("#unread")).to_have_text("3")
        expect(tab.locator("#inbox-list li")).to_have_count(3)
        assert inbox_ids(tab) == ids[::-1]  # newest first

    other.click(f'#inbox-list li[data-id="{ids[2]}"]')  # one read, in the tab in front
    for tab in tabs:
        expect(tab.locator("#unread")).to_have_text("2")
        expect(tab.locator(f'#inbox-list li[data-id="{ids[2]}"]')).not_to_have_class("unread")
    other.click(f'#inbox-list li[data-id="{ids[0]}"] .remove')  # an unread one deleted
    for tab in tabs:
        expect(tab.locator("#unread")).to_have_text("1")
        expect(tab.locator("#inbox-list li")).to_have_count(2)
    other.click("#mark-all")
    for tab in tabs:
        expect(tab.locator("#unread")).to_have_text("0")
        expect(tab.locator("#inbox-list li.unread")).to_have_count(0)
        expect(tab.locator("#mark-all")).to_be_hidden()
    assert inbox_ids(page) == [ids[2], ids[1]]
    assert not errors, f"uncaught errors in the second tab: {errors}"


def test_inbox_api_and_the_unread_event_in_a_page(inbox_server, page):
    """list/markRead/remove with a token; "read"/"deleted" and "unread" (with no request at all
    for a client nobody asked the count of); the server's errors as rejections."""
    url = inbox_server.url
    open_demo(page, url)  # no token: the demo says the inbox needs a user
    expect(page.locator("#inbox-status")).to_contain_text("The inbox is a user's")
    bob, carol = issue_token(SECRET, "bob"), issue_token(SECRET, "carol")
    asked: list[str | None] = []  # the Authorization of each inbox request from now on
    page.on("request", lambda r: asked.append(r.headers.get("authorization")) if "/inbox" in r.url else None)
    page.evaluate("""([bob, carol]) => {
        window.got = []; window.counts = []; window.changes = [];
        const quiet = new Notifier({token: carol});  // nobody listens to its "unread"
        quiet.on('notification', (n) => window.got.push(['carol', n.title]));
        const c = new Notifier({token: bob});
        c.on('notification', (n) => window.got.push(['bob', n.title]));
        c.on('unread', (n) => window.counts.push(n));
        for (const kind of ['read', 'deleted']) c.on(kind, (e) => window.changes.push([kind, e.ids, e.unread]));
        window.quiet = quiet.connect(); window.bob = c.connect();
    }""", [bob, carol])
    deadline = time.monotonic() + 10
    while page.evaluate("new Set(window.got.map((g) => g[0])).size") < 2:  # both subscribers registered
        assert time.monotonic() < deadline, "the page's clients never got a sync marker"
        publish(url, type=SYNC_TYPE, title="sync")
        page.wait_for_timeout(200)
    publish(url, user_id="carol", title="for carol")
    first = publish(url, user_id="bob", title="one")
    second = publish(url, user_id="bob", title="two")
    publish(url, user_id="bob", title="not kept", inbox=False)
    page.wait_for_function("window.got.some((g) => g[1] === 'not kept') && window.counts.at(-1) === 2")
    page.wait_for_function("window.got.some((g) => g[1] === 'for carol')")
    page.wait_for_timeout(200)  # past the debounce: the count of carol's would have been asked by now
    assert f"Bearer {bob}" in asked and f"Bearer {carol}" not in asked, asked

    newest = page.evaluate("window.bob.inbox.list({limit: 1})")
    assert [n["id"] for n in newest["notifications"]] == [second] and newest["more"] is True
    assert newest["notifications"][0]["read"] is False and newest["unread"] == 2
    older = page.evaluate("(id) => window.bob.inbox.list({before: id})", second)
    assert [n["title"] for n in older["notifications"]] == ["one"] and older["more"] is False

    assert page.evaluate("(id) => window.bob.inbox.markRead([id])", first) == {"unread": 1}
    page.wait_for_function("window.changes.length === 1 && window.counts.at(-1) === 1")
    assert page.evaluate("(id) => window.bob.inbox.remove(id)", second) is None
    page.wait_for_function("window.changes.length === 2 && window.counts.at(-1) === 0")
    assert page.evaluate("window.bob.inbox.markRead('all')") == {"unread": 0}
    page.wait_for_function("window.changes.length === 3")
    assert page.evaluate("window.changes") == [["read", [first], 1], ["deleted", [second], 0], ["read", "all", 0]]
    assert page.evaluate("window.bob.unread") == 0

    rejected = """(call) => call().then(() => 'resolved', (e) => [e.status, e.message])"""
    assert page.evaluate(f"({rejected})(() => window.bob.inbox.remove({second!r}))") == [
        404, f"not in your inbox: {second}"]
    assert page.evaluate(f"({rejected})(() => window.bob.inbox.list({{limit: 0}}))")[0] == 400
    status, message = page.evaluate(f"({rejected})(() => new Notifier().inbox.list())")
    assert status == 401 and "token" in message


def test_inbox_api_with_the_host_apps_session_cookie(server_factory, page, tmp_path_factory):
    """No token: the page's cookies name the user, through the host app's identify hook."""
    db = tmp_path_factory.mktemp("inbox-dropin") / "inbox.db"
    app = server_factory(app="examples.flask_app:app", prefix=PREFIX, env={"NOTIFIER_INBOX_URL": f"sqlite:///{db}"})
    page.goto(app.url + "/login?user=dora")
    page.add_script_tag(url=app.url + PREFIX + "/notifier.js")
    kept = publish(app.url + PREFIX, user_id="dora", title="for dora")
    answer = page.evaluate("new Notifier().inbox.list()")
    assert [n["id"] for n in answer["notifications"]] == [kept] and answer["unread"] == 1
    assert page.evaluate("new Notifier().inbox.markRead('all')") == {"unread": 0}
