"""The web page of `alignkit serve`, end to end: a real server process (two variants of the tiny model, an API key)
driven by headless Chromium: the key prompt after a 401, a streamed chat of two turns, a thumbs-up, a side-by-side
comparison and its vote, then the rows in the store.

ALIGNKIT_UPDATE_SCREENSHOT=1 also writes docs/img/serve_page.png (the chat with its answers);
ALIGNKIT_SERVE_PAGE_MODEL=SOURCE serves another model than the tiny one (e.g. smollm2-135m-instruct, for a
screenshot with real answers) and ALIGNKIT_SERVE_PAGE_MAX_TOKENS=N longer answers (default 16).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import headless_chromium

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT / "docs" / "img" / "serve_page.png"
KEY = "page-test-key"
PROMPT = "What do the <b> and <script> tags do in HTML?\nOne sentence each, please & thanks."
WAIT_S = 60


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, headers: dict | None = None) -> tuple[int, str, dict]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, r.read().decode(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), dict(e.headers)


class Served:
    def __init__(self, url: str, db: Path, log: Path, max_tokens: int):
        self.url, self.db, self.log_path, self.max_tokens = url, db, log, max_tokens

    def log(self, tail: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:] if self.log_path.exists() else ""


@contextmanager
def _serve(tmp: Path, source: str, max_tokens: int, keys: list[str]):
    """`python -m alignkit serve` on a free loopback port with variants base and new (50/50) and ``keys`` options."""
    port, db, log = _free_port(), tmp / "s.sqlite", tmp / "server.log"
    cmd = [sys.executable, "-m", "alignkit", "serve", "--variant", f"base={source}", "--variant", f"new={source}",
           "--weights", "base=0.5,new=0.5", "--port", str(port), "--db", str(db), "--max-tokens", str(max_tokens),
           *keys, "--device", "cpu"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not (k.startswith("ALIGNKIT_") and k.endswith("_KEYS"))}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp)
    served = Served(f"http://127.0.0.1:{port}", db, log, max_tokens)
    try:
        deadline = time.monotonic() + WAIT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"alignkit serve exited with {proc.returncode}:\n{served.log()}")
            try:
                if _get(served.url + "/health")[0] == 200:
                    break
            except OSError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                pytest.fail(f"alignkit serve not healthy after {WAIT_S}s:\n{served.log()}")
            time.sleep(0.25)
        yield served
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        print(f"--- server log (exit {proc.returncode}) ---\n{served.log()}")


@pytest.fixture(scope="module")
def served(tiny_model_dir, tmp_path_factory):
    """The page's server with one admin key."""
    source = os.environ.get("ALIGNKIT_SERVE_PAGE_MODEL") or tiny_model_dir
    max_tokens = int(os.environ.get("ALIGNKIT_SERVE_PAGE_MAX_TOKENS") or 16)
    with _serve(tmp_path_factory.mktemp("serve-page"), source, max_tokens, ["--admin-key", KEY]) as served:
        yield served


def _until(wait, served: Served, what: str, condition):
    """``condition()``'s first truthy value within the wait, or an AssertionError with the server log."""
    try:
        return wait.until(lambda d: condition())
    except Exception as e:
        raise AssertionError(f"timed out waiting for {what}\nserver log:\n{served.log()}") from e


def _browser(tmp_path: Path):
    return headless_chromium(tmp_path, "1100,820", allow_loopback=True)


def test_page_is_one_self_contained_file(served):
    status, page, headers = _get(served.url + "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert "http://" not in page and "https://" not in page  # no CDN: the page works offline
    assert re.findall(r"""(?:href|src)=["']?([^"'\s>]*)""", page) == ["data:,"] and "@import" not in page
    assert "innerHTML" not in page and "insertAdjacentHTML" not in page and "document.write" not in page


def test_chat_feedback_compare_vote_in_chromium(served, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from alignkit.serve.ab import user_hash
    from alignkit.serve.store import Store

    t0 = time.perf_counter()
    driver = _browser(tmp_path)
    wait = WebDriverWait(driver, WAIT_S)

    def one(testid: str, root=None):
        return (root or driver).find_element(By.CSS_SELECTOR, f'[data-testid="{testid}"]')

    def all_(testid: str, root=None):
        return (root or driver).find_elements(By.CSS_SELECTOR, f'[data-testid="{testid}"]')

    def state(testid: str, root=None) -> str | None:
        return one(testid, root).get_attribute("data-state")

    def text(element) -> str:  # exactly what the page holds, not selenium's normalized rendering
        return driver.execute_script("return arguments[0].textContent", element)

    def until(what: str, condition):
        return _until(wait, served, what, condition)

    try:
        driver.get(served.url + f"/?max_tokens={served.max_tokens}")
        assert driver.title.startswith("alignkit")
        assert not one("key-panel").is_displayed()
        user_id = driver.execute_script("return localStorage.getItem('alignkit.user')")
        assert user_id and user_id.startswith("u-")

        # Shift+Enter is a new line; the first send answers 401 and the page asks for the key
        box = one("chat-input")
        first, _, second = PROMPT.partition("\n")
        box.send_keys(first)
        box.send_keys(Keys.SHIFT, Keys.ENTER)
        box.send_keys(Keys.NULL, second)
        assert box.get_attribute("value") == PROMPT and not all_("user-message")
        one("chat-send").click()
        until("the key panel", lambda: one("key-panel").is_displayed())
        assert "API key" in one("key-reason").text
        one("key-input").send_keys("wrong-key", Keys.ENTER)  # refused: asked again
        until("the refused-key message", lambda: "refused" in one("key-reason").text)
        assert one("key-panel").is_displayed()
        one("key-input").clear()
        one("key-input").send_keys(KEY)
        one("key-save").click()

        def answered(count: int):
            msgs = all_("assistant-message")
            states = [m.get_attribute("data-state") for m in msgs]
            assert "error" not in states, [text(m) for m in msgs]
            return len(msgs) == count and all(s == "done" for s in states) and msgs

        answers = until("the first answer", lambda: answered(1))
        assert driver.execute_script("return localStorage.getItem('alignkit.apiKey')") == KEY
        (shown_prompt,) = all_("user-message")
        assert text(shown_prompt) == "You" + PROMPT  # model and user text go in as text, never as markup
        assert not driver.find_elements(By.CSS_SELECTOR, "#conversation b, #conversation script")

        # the second turn, sent with Enter, carries the whole conversation
        one("chat-input").send_keys("Can you give an example?", Keys.ENTER)
        answers = until("the second answer", lambda: answered(2))
        rids = [a.get_attribute("data-response-id") for a in answers]
        variants = [a.get_attribute("data-variant") for a in answers]
        assert all(r and r.startswith("chatcmpl-") for r in rids) and rids[0] != rids[1]
        assert variants[0] in ("base", "new") and variants[1] == variants[0]  # sticky by user id
        assert all(a.get_attribute("data-finish-reason") in ("stop", "length") for a in answers)

        # thumbs-up on the first answer: stored, highlighted, both buttons disabled
        up, down = one("thumb-up", answers[0]), one("thumb-down", answers[0])
        feedback_id = up.get_attribute("data-feedback-id")
        up.click()
        until("the stored thumbs-up", lambda: state("feedback-status", answers[0]) == "stored")
        assert up.get_attribute("aria-pressed") == "true" and down.get_attribute("aria-pressed") == "false"
        assert not up.is_enabled() and not down.is_enabled()
        assert "recorded" in one("feedback-status", answers[0]).text
        if os.environ.get("ALIGNKIT_UPDATE_SCREENSHOT") == "1":
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            driver.set_window_size(1100, 1000)
            driver.execute_script("document.getElementById('conversation').scrollTop = 0")
            driver.save_screenshot(str(SCREENSHOT))

        # compare: A left, B right, anonymous; vote "A is better"
        one("tab-compare").click()
        assert one("panel-compare").is_displayed() and not one("panel-chat").is_displayed()
        one("compare-input").send_keys("Name three primary colors.")
        one("compare-send").click()
        result = until("the comparison", lambda: all_("compare-result") and one("compare-result"))
        cid = result.get_attribute("data-comparison-id")
        assert cid and cid.startswith("cmp-")
        a_box, b_box = one("answer-a", result), one("answer-b", result)
        assert a_box.location["x"] < b_box.location["x"]  # A is on the left
        assert [text(h) for h in result.find_elements(By.TAG_NAME, "h3")] == ["A", "B"]
        assert "data-variant" not in result.get_attribute("outerHTML")
        shown = {"left": text(a_box.find_element(By.CLASS_NAME, "text")),
                 "right": text(b_box.find_element(By.CLASS_NAME, "text"))}  # fmt: skip
        vote = one("vote-left", result)
        vote_id = vote.get_attribute("data-vote-id")
        vote.click()
        until("the recorded vote", lambda: state("vote-status", result) == "stored")
        assert "A is better" in one("vote-status", result).text and vote.get_attribute("aria-pressed") == "true"

        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE" and "of 401" not in e["message"]]
        assert not severe, severe

        # a refused request is shown, and the message goes back into the box to be sent again
        driver.get(served.url + f"/?max_tokens={served.max_tokens + 1}")
        assert not one("key-panel").is_displayed()  # the key was kept
        one("chat-input").send_keys("Too long an answer, please", Keys.ENTER)
        error = until("the refusal", lambda: all_("chat-error") and one("chat-error"))
        assert f"allows at most {served.max_tokens}" in error.text, error.text
        assert one("chat-input").get_attribute("value") == "Too long an answer, please"
        assert one("assistant-message").get_attribute("data-state") == "error" and not all_("thumb-up")
    finally:
        driver.quit()

    store = Store(str(served.db))
    try:
        (fb,) = [f for f in store.feedback() if f["response_id"] == rids[0]]
        assert fb["value"] == "up" and fb["id"] == feedback_id and fb["user_hash"] == user_hash(user_id)
        assert fb["snapshot"]["variant"] == variants[0] and fb["snapshot"]["messages"][0]["content"] == PROMPT
        second_turn = store.get_response(rids[1])
        assert [m["role"] for m in second_turn["messages"]] == ["user", "assistant", "user"]
        assert second_turn["messages"][0]["content"] == PROMPT
        assert second_turn["messages"][1]["content"] == store.get_response(rids[0])["content"]

        c = store.get_comparison(cid)
        assert c["vote"] == ("a" if c["a_shown"] == "left" else "b"), c
        assert c["vote_id"] == vote_id and c["user_hash"] == user_hash(user_id)
        a_side, b_side = ("left", "right") if c["a_shown"] == "left" else ("right", "left")
        assert store.get_response(c["response_a"])["content"] == shown[a_side]
        assert store.get_response(c["response_b"])["content"] == shown[b_side]
        assert {c["variant_a"], c["variant_b"]} == {"base", "new"}
        counts = store.counts()
    finally:
        store.close()
    print(f"browser check: {time.perf_counter() - t0:.1f}s; store {json.dumps(counts)}")


def test_split_chat_and_feedback_keys_in_chromium(tiny_model_dir, tmp_path):
    """A chat key and a separate feedback key: the page asks for each when the server wants it (401 for the chat,
    403 insufficient_scope for the thumb), keeps both, and the thumb is stored."""
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from alignkit.serve.store import Store

    keys = ["--chat-key", "chat-only-key", "--feedback-key", "feedback-only-key"]
    with _serve(tmp_path, tiny_model_dir, 8, keys) as served:
        driver = _browser(tmp_path)
        wait = WebDriverWait(driver, WAIT_S)

        def one(testid: str, root=None):
            return (root or driver).find_element("css selector", f'[data-testid="{testid}"]')

        def until(what: str, condition):
            return _until(wait, served, what, condition)

        try:
            driver.get(served.url + "/?max_tokens=8")
            one("chat-input").send_keys("Hello there", Keys.ENTER)
            until("the key panel", lambda: one("key-panel").is_displayed())
            one("key-input").send_keys("chat-only-key", Keys.ENTER)
            answer = until("the answer", lambda: one("assistant-message").get_attribute("data-state") == "done"
                           and one("assistant-message"))  # fmt: skip
            rid = answer.get_attribute("data-response-id")
            one("thumb-up", answer).click()  # the chat key lacks the feedback scope: 403 -> asked for a key
            until("the feedback key panel", lambda: one("key-panel").is_displayed())
            assert "'feedback' scope" in one("key-reason").text
            one("key-input").clear()
            one("key-input").send_keys("feedback-only-key", Keys.ENTER)
            until("the stored thumb", lambda: one("feedback-status", answer).get_attribute("data-state") == "stored")
            stored = driver.execute_script(
                "return ['chat', 'feedback'].map((s) => localStorage.getItem('alignkit.apiKey.' + s))"
            )
            assert stored == ["chat-only-key", "feedback-only-key"]
            one("chat-input").send_keys("And again", Keys.ENTER)  # the chat key is still the one used for chat
            until("the second answer", lambda: len(driver.find_elements("css selector", '[data-state="done"]')) >= 2)
            assert not one("key-panel").is_displayed()
        finally:
            driver.quit()
        store = Store(str(served.db))
        try:
            (fb,) = [f for f in store.feedback() if f["response_id"] == rid]
        finally:
            store.close()
        assert fb["value"] == "up"
