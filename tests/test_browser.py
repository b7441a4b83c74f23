"""The browser client (/notifier.js) and the demo page (/demo) in real headless Chromium.

Debian's /usr/bin/chromium, driven by Playwright (scripts/test installs chromium when it is
missing; Playwright's own browser downloads are never used). The servers are real gunicorn
with gevent workers on a real redis-server. Every wait has a timeout: Playwright's
``expect`` (10 s here) or an explicit deadline.

A page has "connected" once its WebSocket is open, which can be a moment before the server
has registered the subscriber: ``sync_page`` publishes markers until the page has one,
as ``clients.sync_subscribers`` does for the test clients (markers are left out of what
the tests read from the page).
"""

from __future__ import annotations

import http.server
import re
import threading
import time
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest
import requests
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import expect, sync_playwright

from clients import SYNC_TYPE, publish
from conftest import free_port

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parent.parent
WAIT_MS = 10_000
PREFIX = "/notifier"

expect.set_options(timeout=WAIT_MS)

# The notifications the demo shows, newest first, without the sync markers.
SHOWN = """() => [...document.querySelectorAll('#notifications li')]
  .filter((li) => li.dataset.type !== %r)
  .map((li) => ({id: li.dataset.id, type: li.dataset.type,
                 title: li.querySelector('.title').firstChild?.nodeType === 3
                        ? li.querySelector('.title').firstChild.textContent : '',
                 message: li.querySelector('.message').textContent,
                 time: li.querySelector('time').textContent,
                 ts: li.querySelector('time').dateTime}))""" % SYNC_TYPE


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"{CHROMIUM} is missing: run scripts/test, which installs chromium")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser):
    """A fresh browser context and page; fails the test if the page threw an uncaught error."""
    context = browser.new_context()
    context.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    page = context.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield page
    finally:
        context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


@pytest.fixture(scope="module")
def server(server_factory, module_redis):
    """Two gevent workers on Redis: the page sits on one, publishes fan out through Redis."""
    return server_factory(workers=2, redis=module_redis)


def open_demo(page, base_url: str, query: str = "", transport: str = "websocket") -> None:
    page.goto(base_url + "/demo" + query)
    expect(page.locator("#state")).to_have_text("connected")
    expect(page.locator("#transport")).to_have_text(f"· {transport}")


def sync_page(page, base_url: str, timeout: float = 10.0) -> None:
    """Publish markers until the page has received one: its subscriber is registered."""
    deadline = time.monotonic() + timeout
    while True:
        publish(base_url, type=SYNC_TYPE, title="sync")
        try:
            page.wait_for_function(f"document.querySelector('li[data-type=\"{SYNC_TYPE}\"]') !== null",
                                   timeout=500)
            return
        except PlaywrightTimeout:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the page never received a sync marker within {timeout}s") from None


def shown(page) -> list[dict]:
    return page.evaluate(SHOWN)


def titles(page) -> list[str]:
    return [n["title"] for n in shown(page)]


def wait_title(page, title: str) -> None:
    expect(page.locator("#notifications li .title", has_text=title)).to_have_count(1)


def client_stats(page) -> dict:
    return page.evaluate("() => window.notifierClient.stats")


# --------------------------------------------------------------------------------------
# the files
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("path, content_type", [
    ("/notifier.js", "text/javascript; charset=utf-8"), ("/notifier.d.ts", "application/typescript; charset=utf-8"),
    ("/demo", "text/html; charset=utf-8"),
])
def test_browser_files_are_served_with_their_type_and_revalidate(server, path, content_type):
    r = requests.get(server.url + path, timeout=5)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == content_type, r.headers
    assert r.content == (ROOT / "notifier" / "static" / {"/demo": "demo.html"}.get(path, path[1:])).read_bytes()
    assert "no-cache" in r.headers["Cache-Control"] and r.headers["ETag"], r.headers
    again = requests.get(server.url + path, headers={"If-None-Match": r.headers["ETag"]}, timeout=5)
    assert again.status_code == 304


def test_a_wrong_file_name_is_a_json_404(server):
    r = requests.get(server.url + "/notifier.jsx", timeout=5)
    assert r.status_code == 404 and "error" in r.json()


def test_the_package_ships_every_browser_file():
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["notifier"]
    files = [p.relative_to(ROOT / "notifier").as_posix() for p in (ROOT / "notifier" / "static").iterdir()]
    assert {"static/notifier.js", "static/notifier.d.ts", "static/demo.html"} <= set(files)
    assert all(any(fnmatch(f, g) for g in globs) for f in files), (files, globs)


# --------------------------------------------------------------------------------------
# the page in Chromium
# --------------------------------------------------------------------------------------


def test_page_connects_over_websocket_and_shows_notifications_newest_first(server, page):
    open_demo(page, server.url)
    assert page.evaluate("() => window.notifierClient.transport") == "websocket"
    sync_page(page, server.url)
    first = publish(server.url, type="deploy.finished", title="Deploy finished", message="v42 is live")
    second = publish(server.url, title="Second", message="newest on top")
    wait_title(page, "Second")
    got = shown(page)
    assert [n["id"] for n in got] == [second, first]
    assert got[1]["type"] == "deploy.finished" and got[1]["title"] == "Deploy finished"
    assert got[1]["message"] == "v42 is live"
    assert got[1]["ts"].endswith("Z") and got[1]["time"], got[1]  # ts from the server, shown as a local time


def test_demo_says_when_the_inbox_is_off(server, page):
    """No NOTIFIER_INBOX_URL: GET /inbox is a 404, and the page says so instead of a bell count
    (tests/test_browser_inbox.py has the bell with the inbox on)."""
    open_demo(page, server.url)
    expect(page.locator("#inbox-status")).to_contain_text("The inbox is off on this server")
    expect(page.locator("#inbox-status")).to_contain_text("NOTIFIER_INBOX_URL")
    expect(page.locator("#bell")).to_have_attribute("data-inbox", "off")
    expect(page.locator("#unread")).to_be_hidden()


def test_demo_form_publishes_through_post_notify(server, page):
    open_demo(page, server.url)
    sync_page(page, server.url)
    page.fill("#type", "demo.form")
    page.fill("#title", "From the form")
    page.fill("#message", "typed in the page")
    page.click("#publish button[type=submit]")
    expect(page.locator("#publish-status")).to_have_text(re.compile(r"^published \d{13}-\d{6}$"))
    published_id = page.get_attribute("#publish-status", "data-id")
    expect(page.locator(f'#notifications li[data-id="{published_id}"] .title')).to_have_text("From the form")
    # it went through the server: it is in history, as published
    history = requests.get(server.url + "/notifications?limit=20", timeout=5).json()["notifications"]
    stored = next(n for n in history if n["id"] == published_id)
    assert (stored["type"], stored["title"], stored["message"]) == ("demo.form", "From the form", "typed in the page")
    # bad input: the server's JSON error is shown, nothing is published
    page.fill("#title", "")
    page.fill("#message", "")
    page.click("#publish button[type=submit]")
    expect(page.locator("#publish-status")).to_have_text("at least one of title, message is required")
    expect(page.locator("#publish-status")).to_have_class("note error")


def test_subscribing_from_the_page_gets_that_topic_and_unsubscribing_stops_it(server, page):
    open_demo(page, server.url)
    sync_page(page, server.url)
    page.fill("#sub-topic", "orders")
    page.click("#subscribe button[type=submit]")
    expect(page.locator("#subscribe-status")).to_have_text("subscribed to orders")  # the server's ack
    expect(page.locator('#topics .chip[data-topic="orders"]')).to_have_count(1)
    publish(server.url, topic="orders", type="order.created", title="Order 17")
    publish(server.url, topic="billing", title="Invoice")
    publish(server.url, title="Broadcast")
    wait_title(page, "Broadcast")  # in publish order: anything for billing would be here by now
    assert titles(page) == ["Broadcast", "Order 17"]
    page.click('#topics .chip[data-topic="orders"] button')
    expect(page.locator("#subscribe-status")).to_have_text("unsubscribed from orders")
    publish(server.url, topic="orders", title="Order 18")
    publish(server.url, title="End")
    wait_title(page, "End")
    assert titles(page) == ["End", "Broadcast", "Order 17"]


BLOCKERS = {
    # a firewall that refuses the connection
    "refused": "window.WebSocket = new Proxy(window.WebSocket, {construct(Real, args) {"
               " window.__wsAttempts = (window.__wsAttempts || 0) + 1;"
               " return new Real('ws://127.0.0.1:%(port)d/ws'); }});",
    # a proxy that answers the upgrade with plain HTTP
    "not upgraded": "window.WebSocket = new Proxy(window.WebSocket, {construct(Real, args) {"
                    " window.__wsAttempts = (window.__wsAttempts || 0) + 1;"
                    r" return new Real(args[0].replace(/\/ws(\?|$)/, '/healthz$1')); }});",
    # no WebSocket at all
    "missing": "delete window.WebSocket; window.__wsAttempts = 1;",
}


@pytest.mark.parametrize("blocker", list(BLOCKERS))
def test_blocked_websocket_falls_back_to_sse_and_still_gets_everything(server, page, blocker):
    page.add_init_script(BLOCKERS[blocker] % {"port": free_port()})
    open_demo(page, server.url, transport="sse")
    assert page.evaluate("() => window.__wsAttempts") >= 1  # it did try WebSocket first
    sync_page(page, server.url)
    publish(server.url, title="Over SSE", message="no WebSocket needed")
    wait_title(page, "Over SSE")
    # subscribe on SSE: a new stream with the new topic list, resuming from the last id
    page.fill("#sub-topic", "orders")
    page.click("#subscribe button[type=submit]")
    expect(page.locator("#subscribe-status")).to_have_text("subscribed to orders")
    expect(page.locator("#transport")).to_have_text("· sse")
    publish(server.url, topic="orders", title="Order over SSE")
    publish(server.url, title="Last")
    wait_title(page, "Last")
    assert titles(page) == ["Last", "Order over SSE", "Over SSE"]
    assert client_stats(page)["duplicates"] == 0


def test_page_resumes_after_a_server_restart_without_loss_or_duplicate(notifier_server, redis_server, page):
    main = notifier_server(redis=redis_server)
    other = notifier_server(redis=redis_server)  # same Redis: publishes while main is down
    open_demo(page, main.url, "?max_delay=1000")
    sync_page(page, main.url)
    before = publish(main.url, title="before")
    wait_title(page, "before")

    main.stop()  # SIGTERM: the page gets 1001 and retries with backoff
    expect(page.locator("#state")).not_to_have_text("connected")
    missed = [publish(other.url, title=f"while down {i}") for i in (1, 2, 3)]
    main.start()

    expect(page.locator("#state")).to_have_text("connected")
    wait_title(page, "while down 3")
    after = publish(main.url, title="after")
    wait_title(page, "after")
    got = shown(page)
    assert [n["id"] for n in got] == [after, *reversed(missed), before]
    assert [n["title"] for n in got] == ["after", "while down 3", "while down 2", "while down 1", "before"]
    stats = client_stats(page)
    assert stats["duplicates"] == 0, stats  # the server sent nothing twice either
    assert stats["connects"] >= 2, stats


def test_a_resume_point_gone_from_history_fires_reset_then_live(server, page):
    """The client API directly: a stale lastEventId gets "reset" (not a notification), then what
    history still holds after it, then live ones."""
    open_demo(page, server.url)
    page.evaluate("""() => {
        window.seen = [];
        const client = new Notifier({lastEventId: '0000000000001-000000'});
        client.on('reset', (n) => window.seen.push(['reset', n.id, n.data.last_event_id]));
        client.on('notification', (n) => window.seen.push(['notification', n.id, n.title]));
        client.on('notification:late.one', (n) => window.seen.push(['late.one', n.id]));
        client.connect();
        window.resetClient = client;
    }""")
    page.wait_for_function("window.seen.length >= 1")
    kind, reset_id, stale = page.evaluate("window.seen[0]")
    assert (kind, stale, reset_id) == ("reset", "0000000000001-000000", "0000000000001-000000")
    deadline = time.monotonic() + 10
    while not page.evaluate("window.seen.some((s) => s[2] === 'live')"):  # registered yet?
        assert time.monotonic() < deadline, "no live notification after the reset"
        publish(server.url, type="late.one", title="live")
        page.wait_for_timeout(300)
    seen = page.evaluate("window.seen")
    notes = [s for s in seen if s[0] == "notification"]
    live = [s for s in notes if s[2] == "live"]
    assert [s[1] for s in notes] == sorted(s[1] for s in notes)  # replayed history, then live, in order
    assert [s[1] for s in seen if s[0] == "late.one"] == [s[1] for s in live]
    assert page.evaluate("window.resetClient.lastEventId") == notes[-1][1]  # resumes from there next time


def test_demo_in_an_existing_app_under_a_url_prefix(server_factory, page):
    app = server_factory(app="examples.flask_app:app", prefix=PREFIX, env={"NOTIFIER_DEMO": "true"})
    open_demo(page, app.url + PREFIX)
    assert page.evaluate("() => window.notifierClient.url") == app.url + PREFIX + "/"
    sync_page(page, app.url + PREFIX)
    page.fill("#title", "Mounted")
    page.click("#publish button[type=submit]")
    wait_title(page, "Mounted")


def test_redis_restarted_empty_closes_with_1012_and_the_page_shows_a_reset_then_goes_on(
        notifier_server, redis_server, page):
    server = notifier_server(redis=redis_server)
    open_demo(page, server.url, "?max_delay=1000")
    page.evaluate("""() => { window.closeCodes = [];
        window.notifierClient.on('state', (state, info) => {
            if (state === 'disconnected') window.closeCodes.push(info.code); }); }""")
    sync_page(page, server.url)
    publish(server.url, title="before")
    wait_title(page, "before")
    redis_server.stop()
    redis_server.start()  # no persistence: history is gone, and the page's resume point with it
    expect(page.locator("#notifications li.reset")).to_have_count(1)  # notifier.reset, shown as such
    assert 1012 in page.evaluate("window.closeCodes")
    expect(page.locator("#state")).to_have_text("connected")
    publish(server.url, title="after the reset")
    wait_title(page, "after the reset")
    assert titles(page)[0] == "after the reset"
    assert client_stats(page)["duplicates"] == 0



CROSS_ORIGIN_PAGE = """<!doctype html><title>idle</title>
<script src="%(server)s/notifier.js"></script>
<script>
  window.seen = [];
  const notifier = new Notifier({ transports: [new URLSearchParams(location.search).get("transport")] });
  notifier.on("notification", (n) => window.seen.push(n.title));
  notifier.on("state", (state) => { document.title = state; });
  notifier.connect();
  window.notifierClient = notifier;
</script>"""


@pytest.fixture(scope="module")
def other_origin(server):
    """A second HTTP server on another port (another origin) serving a page that uses the server's notifier.js.

    A real loopback server, not a Playwright route: Chromium lets only loopback pages reach loopback.
    """
    body = (CROSS_ORIGIN_PAGE % {"server": server.url}).encode()

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.mark.parametrize("transport", ["websocket", "sse"])
def test_the_readme_snippet_works_from_a_page_on_another_origin(server, other_origin, page, transport):
    page.goto(f"{other_origin}/app?transport={transport}")
    expect(page).to_have_title("connected")
    assert page.evaluate("window.notifierClient.url") == server.url + "/"  # from the script's src
    assert page.evaluate("window.notifierClient.transport") == transport
    deadline = time.monotonic() + 10
    while not page.evaluate("window.seen.length"):
        assert time.monotonic() < deadline, "nothing received by the page of the other origin"
        publish(server.url, title="sync")
        page.wait_for_timeout(300)
    publish(server.url, title="cross-origin")
    page.wait_for_function("window.seen.includes('cross-origin')")


def test_backoff_grows_with_jitter_and_each_round_tries_websocket_then_sse(server, page):
    """A client pointed at a port where nothing listens: its attempts, delays and token calls."""
    open_demo(page, server.url)
    page.evaluate("""(url) => {
        window.log = []; window.tokenCalls = 0;
        const c = new Notifier({url, minDelay: 100, maxDelay: 800,
                                token: async () => { window.tokenCalls++; return null; }});
        c.on('state', (state, info) => window.log.push([state, info.transport ?? null, info.delay ?? null]));
        c.connect();
        window.deadClient = c;
    }""", f"http://127.0.0.1:{free_port()}/")
    page.wait_for_function("window.log.filter((e) => e[0] === 'disconnected').length >= 5")
    page.evaluate("window.deadClient.close()")
    log = page.evaluate("window.log")
    delays = [e[2] for e in log if e[0] == "disconnected"][:5]
    for delay, full in zip(delays, [100, 200, 400, 800, 800]):
        assert full / 2 <= delay <= full, (delays, log)
    assert len(set(delays)) > 1, delays  # jitter: not all the same (they double, too)
    connecting = [e[1] for e in log if e[0] == "connecting"]
    assert connecting[:6] == ["websocket", "sse"] * 3, log
    assert page.evaluate("window.tokenCalls") == len(connecting)  # called before every attempt
    assert log[-1][0] == "closed"


SECRET = "browser-test-secret-0123456789abcdef"


def test_an_expired_token_is_replaced_by_calling_the_token_function_again(notifier_server, page):
    """The server ends a connection whose token expires (1008); the client fetches a fresh one and goes on."""
    from notifier.tokens import issue_token

    server = notifier_server(env={"NOTIFIER_SECRET": SECRET})
    issued: list[str] = []

    def fresh_token() -> str:
        issued.append(issue_token(SECRET, "alice", ttl=2))
        return issued[-1]

    page.expose_function("freshToken", fresh_token)
    open_demo(page, server.url)
    page.evaluate("""() => {
        window.got = []; window.codes = [];
        const c = new Notifier({token: () => window.freshToken(), minDelay: 100, maxDelay: 500});
        c.on('notification', (n) => window.got.push(n.title));
        c.on('state', (state, info) => { if (state === 'disconnected') window.codes.push(info.code); });
        c.connect();
        window.alice = c;
    }""")
    deadline = time.monotonic() + 10
    while "for alice" not in page.evaluate("window.got"):
        assert time.monotonic() < deadline, "alice's client never got her notification"
        publish(server.url, user_id="alice", title="for alice")
        page.wait_for_timeout(300)
    page.wait_for_function("window.codes.includes(1008)")  # the token expired: the server closed
    page.wait_for_function("window.alice.state === 'connected'")
    publish(server.url, user_id="bob", title="for bob")
    publish(server.url, user_id="alice", title="after a fresh token")
    page.wait_for_function("window.got.includes('after a fresh token')")
    assert "for bob" not in page.evaluate("window.got")
    assert len(issued) >= 2 and len(set(issued)) == len(issued)
    assert page.evaluate("window.alice.stats.duplicates") == 0


@pytest.mark.parametrize("transport", ["websocket", "sse"])
def test_a_disconnected_user_is_closed_and_not_reconnected_while_others_go_on(notifier_server, redis_server, page,
                                                                            transport):
    """POST /disconnect for alice: her page fires "disconnect", ends "closed" and opens nothing
    more (WebSocket close 4001, or SSE's last notifier.disconnect event); bob's page goes on."""
    from notifier.tokens import issue_token

    server = notifier_server(workers=2, redis=redis_server, env={"NOTIFIER_SECRET": SECRET})
    open_demo(page, server.url)
    page.evaluate("""([alice, bob, transport]) => {
        window.clients = {};
        window.got = {alice: [], bob: []};
        window.states = {alice: [], bob: []};
        window.disconnects = [];
        for (const [name, token] of [['alice', alice], ['bob', bob]]) {
            const c = new Notifier({token, transports: [transport], minDelay: 100, maxDelay: 200});
            c.on('notification', (n) => window.got[name].push(n.title));
            c.on('state', (state, info) => window.states[name].push([state, info.code ?? null]));
            if (name === 'alice') c.on('disconnect', (info) => window.disconnects.push(info));
            c.connect();
            window.clients[name] = c;
        }
    }""", [issue_token(SECRET, "alice"), issue_token(SECRET, "bob"), transport])
    deadline = time.monotonic() + 10
    while not all(page.evaluate("[window.got.alice.includes('hi'), window.got.bob.includes('hi')]")):
        assert time.monotonic() < deadline, "the pages never got their notifications"
        publish(server.url, user_id="alice", title="hi")
        publish(server.url, user_id="bob", title="hi")
        page.wait_for_timeout(200)
    r = requests.post(server.url + "/disconnect", json={"user_id": "alice"}, timeout=5)
    assert r.status_code == 202, r.text
    page.wait_for_function("window.clients.alice.state === 'closed'")
    page.wait_for_timeout(1000)  # time for a reconnect (minDelay 100 ms), which must not come
    states = page.evaluate("window.states.alice")
    assert states[-1][0] == "closed" and [s for s, _ in states].count("connecting") == 1, states
    if transport == "websocket":
        assert states[-1][1] == 4001, states
    info = page.evaluate("window.disconnects")
    assert len(info) == 1 and info[0]["transport"] == transport, info
    publish(server.url, user_id="bob", title="bob goes on")
    page.wait_for_function("window.got.bob.includes('bob goes on')")
    assert page.evaluate("window.clients.bob.state") == "connected"


def test_presence_join_leave_and_the_demo_shows_who_is_online(notifier_server, redis_server, page, closing):
    """notifier.js: on("join") / on("leave") once per user, presence(topic) over WebSocket, a
    rejection on SSE; the demo lists who is on its topics."""
    from clients import WSClient
    from notifier.tokens import issue_token

    server = notifier_server(workers=2, redis=redis_server,
                             env={"NOTIFIER_SECRET": SECRET, "NOTIFIER_PRESENCE_EVENTS": "room:*"})
    open_demo(page, server.url, f"?topic=room:1&token={issue_token(SECRET, 'alice')}")
    expect(page.locator('#presence li[data-topic="room:1"] .users')).to_have_text("alice")
    page.evaluate("""([bob, carol]) => {
        window.events = [];
        const watch = window.notifierClient;
        watch.on('join', (e) => window.events.push(['join', e.topic, e.user_id]));
        watch.on('leave', (e) => window.events.push(['leave', e.topic, e.user_id]));
        window.bobs = [0, 1].map(() => new Notifier({token: bob, topics: ['room:1']}).connect());
        window.carolSse = new Notifier({token: carol, topics: ['room:1'], transports: ['sse']}).connect();
    }""", [issue_token(SECRET, "bob"), issue_token(SECRET, "carol")])
    page.wait_for_function("window.bobs.every((c) => c.state === 'connected') && window.carolSse.state === 'connected'")
    expect(page.locator('#presence li[data-topic="room:1"] .users')).to_have_text("alice, bob, carol")
    users = page.evaluate("window.notifierClient.presence('room:1').then((p) => p.users)")
    assert users == ["alice", "bob", "carol"]
    error = page.evaluate("window.carolSse.presence('room:1').then(() => 'resolved', (e) => e.message)")
    assert "WebSocket" in error
    dave = closing(WSClient(server.url, topics=["room:1"], token=issue_token(SECRET, "dave")))  # another browser
    expect(page.locator('#presence li[data-topic="room:1"] .users')).to_have_text("alice, bob, carol, dave")
    dave.close()
    page.evaluate("window.bobs[0].close()")
    page.wait_for_timeout(500)  # a second tab of bob's closing is no leave
    expect(page.locator('#presence li[data-topic="room:1"] .users')).to_have_text("alice, bob, carol")
    page.evaluate("window.bobs[1].close(); window.carolSse.close()")
    expect(page.locator('#presence li[data-topic="room:1"] .users')).to_have_text("alice")
    events = page.evaluate("window.events")
    assert sorted(events) == sorted([["join", "room:1", "bob"], ["join", "room:1", "carol"], ["join", "room:1", "dave"],
                                     ["leave", "room:1", "dave"], ["leave", "room:1", "bob"],
                                     ["leave", "room:1", "carol"]]), events


def test_sse_parser_handles_any_chunking_and_line_endings(server, page):
    """The SSE reader sees the stream in whatever pieces the network gives: here one character at a time."""
    page.goto(server.url + "/notifier.js")  # any page of the server's origin
    page.add_script_tag(url=server.url + "/notifier.js")
    stream = ("retry: 2000\n\n: keepalive\n\nid: 1\nevent: a\ndata: {\"n\":1}\n\n"
              "id: 2\r\nevent: b\r\ndata: {\"n\":2}\r\n\r\ndata: two\rdata: lines\r\r: end\n\n")
    got = page.evaluate("""(stream) => {
        const got = [];
        const parser = new Notifier.SseParser((data) => got.push(data));
        for (const ch of stream) parser.push(ch);
        return got;
    }""", stream)
    assert got == ['{"n":1}', '{"n":2}', "two\nlines"]
