"""The chat page in a real browser: Chromium (Playwright) against a live Daphne on the test database.

Signs up through the real sign-up page, chats with the `demo` model over the real websocket, and
checks streaming, Stop, history after a reload, Regenerate, Edit-and-resend, resuming after a dropped
socket, and that model output can never run script (live and after a reload).

Set PARLEY_SCREENSHOTS=/some/dir to keep screenshots of the page while streaming and after.
"""

from __future__ import annotations

import concurrent.futures
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True, serialized_rollback=True)]

CHROMIUM = os.environ.get("PLAYWRIGHT_CHROMIUM", "/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]
TOKEN_DELAY = "0.02"  # seconds per demo token: an answer visibly grows in steps, and /long (~8 s) outlasts a reload on a loaded machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _database_url(settings_dict: dict) -> str:
    user = settings_dict.get("USER") or "postgres"
    password = f":{settings_dict['PASSWORD']}" if settings_dict.get("PASSWORD") else ""
    host = settings_dict.get("HOST") or "127.0.0.1"
    port = settings_dict.get("PORT") or 5432
    return f"postgres://{user}{password}@{host}:{port}/{settings_dict['NAME']}"


@pytest.fixture(scope="session")
def live_daphne(django_db_setup, tmp_path_factory):
    """A Daphne process serving config.asgi:application on the test database; yields its base URL."""
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("the live server shares the test database, which needs PostgreSQL (make test uses it)")
    port = _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": _database_url(connection.settings_dict),
        "PARLEY_DEMO_TOKEN_DELAY": TOKEN_DELAY,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DEBUG": "1",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("DATABASE_TEST_NAME", None)
    log_path = tmp_path_factory.mktemp("daphne") / "daphne.log"
    log = open(log_path, "wb")  # noqa: SIM115 - kept open for the process's life
    process = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "config.asgi:application"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 40
    while True:
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=1) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            log.close()
            raise RuntimeError("Daphne did not start:\n" + log_path.read_text()[-3000:])
        time.sleep(0.2)
    yield base
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()


def in_thread(fn, *args):
    """ORM calls from a test driving Playwright's sync API (its event loop owns this thread)."""
    from django.db import connection

    def run():
        try:
            return fn(*args)
        finally:
            connection.close()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(run).result()


class Screens:
    def __init__(self) -> None:
        folder = os.environ.get("PARLEY_SCREENSHOTS")
        self.folder = Path(folder) if folder else None
        if self.folder:
            self.folder.mkdir(parents=True, exist_ok=True)

    def shot(self, page, name: str) -> None:
        if self.folder:
            page.screenshot(path=str(self.folder / f"{name}.png"))


@pytest.fixture
def browser_page(live_daphne):
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium is missing at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"],
        )
        context = browser.new_context(base_url=live_daphne, viewport={"width": 1280, "height": 860})
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_daphne)
        page = context.new_page()
        page.set_default_timeout(20_000)
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.js_errors = errors
        try:
            yield page
        finally:
            context.close()
            browser.close()
        assert not errors, f"JavaScript errors on the page: {errors}"


# --- helpers -------------------------------------------------------------------------------------


def sign_up(page) -> str:
    email = f"browser-{uuid.uuid4().hex[:10]}@example.com"
    password = "a-Long-and-unusual-passphrase-31"
    page.goto("/accounts/signup/")
    page.fill("input[name=email]", email)
    page.fill("input[name=password1]", password)
    page.fill("input[name=password2]", password)
    with page.expect_navigation():
        page.locator("form input[name=password2]").press("Enter")
    assert "/accounts/signup/" not in page.url, page.content()[:2000]
    return email


def open_new_chat(page) -> None:
    page.goto("/chat/new/")
    page.wait_for_selector("#chat-conn[data-conn=online]")
    page.select_option("#chat-model", "demo")


def assistant(page, index: int = -1):
    answers = page.locator("#chat-messages li.msg-assistant")
    count = answers.count()
    return answers.nth(count + index if index < 0 else index)


def send(page, text: str) -> None:
    before = page.locator("#chat-messages li.msg-assistant").count()
    page.fill("#chat-input", text)
    page.press("#chat-input", "Enter")
    page.wait_for_function(
        "n => document.querySelectorAll('#chat-messages li.msg-assistant').length > n", arg=before
    )


def wait_finished(page) -> str:
    page.wait_for_function(
        "() => { const a = [...document.querySelectorAll('#chat-messages li.msg-assistant')].pop();"
        " return a && a.dataset.status && a.dataset.status !== 'streaming'; }",
        timeout=30_000,
    )
    return assistant(page).get_attribute("data-status")


def body_lengths_while_streaming(page, timeout: float = 30) -> list[int]:
    """Poll the last answer's visible text length until it is finished."""
    lengths: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = page.evaluate(
            "() => { const a = [...document.querySelectorAll('#chat-messages li.msg-assistant')].pop();"
            " return [a.dataset.status, a.querySelector('[data-body]').innerText.length]; }"
        )
        lengths.append(state[1])
        if state[0] != "streaming":
            return lengths
        time.sleep(0.03)
    raise AssertionError("the answer did not finish")


def no_script_ran(page) -> None:
    assert page.evaluate("() => typeof window.__xss") == "undefined"
    messages = page.locator("#chat-messages")
    assert messages.locator("img, script, iframe, svg").count() == 0
    assert messages.locator("[onerror], [onload], [onclick], [onmouseover]").count() == 0
    hrefs = messages.locator("a[href]").evaluate_all("links => links.map(a => a.getAttribute('href'))")
    assert all(href.split(":", 1)[0].lower() in {"http", "https", "mailto"} for href in hrefs), hrefs


XSS_ECHOES = [
    ("/echo <img src=x onerror=window.__xss=1>", "<img src=x onerror=window.__xss=1>"),
    ("/echo <script>window.__xss=2</script>", "<script>window.__xss=2</script>"),
    ("/echo [click me](javascript:window.__xss=3)", "[click me](javascript:window.__xss=3)"),
    ('/echo <a href="javascript:window.__xss=4">x</a> ![i](x" onerror="window.__xss=5)', None),
]


# --- the tests -----------------------------------------------------------------------------------


def test_chat_streams_stops_and_keeps_history(browser_page):
    page = browser_page
    screens = Screens()
    sign_up(page)
    open_new_chat(page)
    assert page.locator("#chat-empty").is_visible()

    # 1. An answer grows in steps, with a visible generating state, and its usage shows at the end.
    send(page, "Hello there, demo model")
    page.wait_for_selector("#chat-messages li.msg-assistant.status-streaming .msg-state:has-text('generating')")
    assert page.locator("#chat-stop").is_visible()
    lengths = body_lengths_while_streaming(page)
    growing = sorted({n for n in lengths if n > 0})
    assert len(growing) >= 3, f"the answer should appear in several steps, saw lengths {lengths}"
    assert wait_finished(page) == "complete"
    conversation_url = page.url
    assert "/chat/new/" not in conversation_url and page.evaluate("() => window.parleyChat.conversation") in conversation_url
    page.wait_for_function(
        "() => /\\d+ in · \\d+ out · \\$/.test([...document.querySelectorAll('[data-usage]')].pop().textContent)"
    )
    first_answer = assistant(page).locator("[data-body]").inner_text()
    assert "demo model" in first_answer

    # 2. Stop a long answer halfway: the partial answer is kept, marked stopped.
    send(page, "/long")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#chat-messages li.msg-assistant')].pop()"
        ".querySelector('[data-body]').innerText.length > 80"
    )
    screens.shot(page, "chat-streaming")
    page.click("#chat-stop")
    assert wait_finished(page) == "cancelled"
    page.wait_for_selector("#chat-messages li.msg-assistant.status-cancelled .msg-state:has-text('stopped')")
    partial = assistant(page).locator("[data-body]").inner_text()
    assert 0 < len(partial) < 1500 and partial.startswith("Here is a longer answer")
    assert not page.locator("#chat-stop").is_visible()
    assert page.evaluate("() => window.parleyChat.stats") == {"finished": 2, "mismatched": 0}

    # 3. Code blocks get a copy button (and the server's highlighting once finished).
    send(page, "/echo Some code:\n\n```python\ndef answer():\n    return 42\n```")
    wait_finished(page)
    page.wait_for_selector("#chat-messages li.msg-assistant:last-child .codeblock .codeblock-copy")
    page.wait_for_selector("#chat-messages li.msg-assistant:last-child code.language-python span.k")
    screens.shot(page, "chat-finished")
    copy = page.locator("#chat-messages li.msg-assistant:last-child .codeblock-copy")
    copy.click()
    page.wait_for_function("() => document.querySelector('#chat-messages li.msg-assistant:last-child .codeblock-copy').textContent === 'Copied'")
    assert page.evaluate("() => navigator.clipboard.readText()").strip() == "def answer():\n    return 42"

    # 4. After a reload the history is all there, rendered by the server.
    page.reload()
    page.wait_for_selector("#chat-conn[data-conn=online]")
    answers = page.locator("#chat-messages li.msg-assistant")
    assert answers.count() == 3
    assert answers.nth(0).locator("[data-body]").inner_text() == first_answer
    assert answers.nth(1).get_attribute("data-status") == "cancelled"
    assert answers.nth(1).locator("[data-body]").inner_text() == partial
    assert page.locator("#chat-messages li.msg-user").nth(1).locator("[data-body]").inner_text() == "/long"
    assert answers.nth(2).locator(".codeblock .codeblock-copy").count() == 1
    screens.shot(page, "chat-reloaded")

    # 5. The list shows the conversation.
    page.goto("/chat/")
    assert page.locator(".chatlist-item").count() == 1


def test_model_output_never_runs_script(browser_page):
    page = browser_page
    sign_up(page)
    open_new_chat(page)
    for prompt, shown in XSS_ECHOES:
        send(page, prompt)
        # Check repeatedly while it streams, not only at the end.
        while assistant(page).get_attribute("data-status") == "streaming":
            no_script_ran(page)
            time.sleep(0.02)
        assert wait_finished(page) == "complete"
        no_script_ran(page)
        if shown:
            assert shown in assistant(page).locator("[data-body]").inner_text()
    # A user message with HTML is shown as typed.
    assert page.locator("#chat-messages li.msg-user").first.locator("[data-body]").inner_text() == XSS_ECHOES[0][0]
    page.reload()
    page.wait_for_selector("#chat-conn[data-conn=online]")
    assert page.locator("#chat-messages li.msg-assistant").count() == len(XSS_ECHOES)
    no_script_ran(page)
    assert XSS_ECHOES[0][1] in assistant(page, 0).locator("[data-body]").inner_text()
    # Clicking the would-be javascript: link does nothing either.
    assistant(page, 2).locator("[data-body]").click()
    no_script_ran(page)


def test_regenerate_edit_and_resume_after_a_dropped_socket(browser_page):
    from conversations.models import Conversation, Message

    page = browser_page
    sign_up(page)
    # The new user owns their personal organization, so they manage its personas.
    page.goto("/chat/personas/")
    page.fill("input[name=name]", "Pirate")
    page.fill("textarea[name=system_prompt]", "Talk like a pirate.")
    page.click("form.persona-form button[type=submit]")
    page.wait_for_selector(".persona-item:has-text('Pirate')")
    open_new_chat(page)
    page.select_option("#chat-persona", label="Pirate")
    send(page, "/echo first answer")
    wait_finished(page)
    conversation_id = page.evaluate("() => window.parleyChat.conversation")
    assert page.url.endswith(f"/chat/{conversation_id}/")
    conversation = in_thread(lambda: Conversation.objects.select_related("persona").get(id=conversation_id))
    assert conversation.persona.name == "Pirate" and conversation.system_prompt == "Talk like a pirate."

    # Regenerate: the last answer is replaced by a new one (the old one is superseded).
    old_id = assistant(page).get_attribute("data-id")
    assistant(page).hover()
    assistant(page).locator("button[data-action=regenerate]").click()
    page.wait_for_function(
        "old => { const a = [...document.querySelectorAll('#chat-messages li.msg-assistant')].pop();"
        " return a.dataset.id && a.dataset.id !== old; }",
        arg=old_id,
    )
    assert wait_finished(page) == "complete"
    assert page.locator("#chat-messages li.msg-assistant").count() == 1
    assert assistant(page).locator("[data-body]").inner_text() == "first answer"
    assert in_thread(lambda: Message.objects.get(id=old_id).superseded)

    # Edit and resend the last user message.
    user = page.locator("#chat-messages li.msg-user").last
    user.hover()
    user.locator("button[data-action=edit]").click()
    user.locator(".msg-edit textarea").fill("/echo edited answer")
    user.locator("button[data-action=edit-send]").click()
    page.wait_for_function(
        "() => [...document.querySelectorAll('#chat-messages li.msg-user')].pop()"
        ".querySelector('[data-body]').textContent === '/echo edited answer'"
    )
    assert wait_finished(page) == "complete"
    assert page.locator("#chat-messages li.msg-user").count() == 1
    assert page.locator("#chat-messages li.msg-assistant").count() == 1
    assert assistant(page).locator("[data-body]").inner_text() == "edited answer"

    # Drop the socket in the middle of a long answer: the page reconnects, resumes from a
    # snapshot, and the text ends exactly as the server saved it (no duplicate, nothing lost).
    send(page, "/long")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#chat-messages li.msg-assistant')].pop()"
        ".querySelector('[data-body]').innerText.length > 40"
    )
    page.evaluate("() => window.parleyChat.dropConnection()")
    page.wait_for_selector("#chat-conn[data-conn=offline]")
    page.wait_for_selector("#chat-conn[data-conn=online]", timeout=15_000)
    assert wait_finished(page) == "complete"
    answer_id = assistant(page).get_attribute("data-id")
    saved = in_thread(lambda: Message.objects.get(id=answer_id).content)
    assert saved.startswith("Here is a longer answer") and len(saved) > 1000
    stats = page.evaluate("() => window.parleyChat.stats")
    assert stats["mismatched"] == 0, stats
    assert page.locator("#chat-messages li.msg-assistant").count() == 2
    text = assistant(page).locator("[data-body]").inner_text()
    assert text.count("Here is a longer answer") == 1
    page.reload()
    assert assistant(page).locator("[data-body]").inner_text() == text

    # Lose a few deltas on the way: the page sees the gap in seq, resubscribes, and the snapshot
    # makes the text whole again.
    subscribes: list[str] = []
    page.on(
        "websocket",
        lambda ws: ws.on("framesent", lambda payload: subscribes.append(payload) if "conversation.subscribe" in str(payload) else None),
    )
    page.reload()
    page.wait_for_selector("#chat-conn[data-conn=online]")
    send(page, "/long")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#chat-messages li.msg-assistant')].pop()"
        ".querySelector('[data-body]').innerText.length > 40"
    )
    page.evaluate("() => { window.parleyChat.loseDeltas = 3; }")
    assert wait_finished(page) == "complete"
    assert page.evaluate("() => window.parleyChat.loseDeltas") == 0
    assert page.evaluate("() => window.parleyChat.stats") == {"finished": 1, "mismatched": 0}
    assert any('"after_seq"' in str(frame) for frame in subscribes), subscribes
    answer_id = assistant(page).get_attribute("data-id")
    saved = in_thread(lambda: Message.objects.get(id=answer_id).content)
    assert len(saved) > 1000 and assistant(page).locator("[data-body]").inner_text().count("Here is a longer answer") == 1

    # Reload in the middle of an answer: the page shows what was saved, follows the stream from
    # a snapshot, and ends with exactly the saved text.
    send(page, "/long")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#chat-messages li.msg-assistant')].pop()"
        ".querySelector('[data-body]').innerText.length > 40"
    )
    page.reload()
    page.wait_for_selector("#chat-conn[data-conn=online]")
    assert assistant(page).get_attribute("data-status") == "streaming"
    assert page.locator("#chat-stop").is_visible()
    lengths = body_lengths_while_streaming(page)
    assert len({n for n in lengths if n > 0}) >= 3, lengths
    assert wait_finished(page) == "complete"
    answer_id = assistant(page).get_attribute("data-id")
    saved = in_thread(lambda: Message.objects.get(id=answer_id).content)
    page.wait_for_function("() => window.parleyChat.stats.finished === 1")
    assert page.evaluate("() => window.parleyChat.stats") == {"finished": 1, "mismatched": 0}
    assert assistant(page).locator("[data-body]").inner_text().startswith("Here is a longer answer")
    assert len(saved) > 1000


def test_error_frames_are_shown(browser_page):
    page = browser_page
    sign_up(page)
    open_new_chat(page)
    # Too long for the plan: refused in the page before anything is sent.
    limit = page.evaluate("() => JSON.parse(document.getElementById('chat-config').textContent).maxChars")
    page.fill("#chat-input", "x" * (limit + 1))
    assert page.locator("#chat-send").is_disabled()
    assert page.locator("#chat-count.over").is_visible()
    # The server's refusal (sent by hand, bypassing the page's check) is shown with its message.
    page.fill("#chat-input", "")
    page.evaluate(
        "n => window.parleyChat.socket.send(JSON.stringify({type: 'message.send', conversation: null,"
        " content: 'y'.repeat(n), client_id: crypto.randomUUID()}))",
        limit + 1,
    )
    page.wait_for_selector("#chat-alert[data-code=message_too_long]:not([hidden])")
    # A failing provider ends the answer as failed, with the partial text and a clear error.
    send(page, "/fail")
    assert wait_finished(page) == "failed"
    assert assistant(page).locator("[data-error]").is_visible()
    assert assistant(page).locator("button[data-action=regenerate]").is_visible()
    # The free tier allows a few requests per minute: the refusal says when to try again, the
    # message goes back into the composer, and Send waits for the retry time.
    for _ in range(15):
        before = page.locator("#chat-messages li.msg-assistant").count()
        page.fill("#chat-input", "/echo quick")
        page.press("#chat-input", "Enter")
        page.wait_for_function(
            "n => { const answers = document.querySelectorAll('#chat-messages li.msg-assistant');"
            " return !document.getElementById('chat-alert').hidden ||"
            " (answers.length > n && answers[answers.length - 1].dataset.status === 'complete'); }",
            arg=before,
        )
        if page.locator("#chat-alert").is_visible():
            break
    alert = page.locator("#chat-alert")
    assert alert.get_attribute("data-code") == "rate_limited", alert.inner_text()
    assert "Try again in" in alert.inner_text()
    assert page.input_value("#chat-input") == "/echo quick"
    assert page.locator("#chat-send").is_disabled()
