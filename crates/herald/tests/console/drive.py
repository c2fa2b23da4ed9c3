"""Drives Herald's console in headless Chromium as an operator would.

Run by crates/herald/tests/console.rs, which starts Herald and the receivers
and passes, as JSON on stdin: the base URL, the token, the secret value that
must never be shown, the ids of a failed notification (and of a second one
for the bulk re-send), the body the receiver got for the first one, and the
webhooks to use. Answers JSON on stdout: {"ok": true, "checks": [...]}.
Any failed expectation raises (exit 1) after a screenshot of the page.

Scenarios, one per area of the console:
  0. a wrong token is refused and shows no data; the right one logs in;
  1. history: filter by webhook and status, see the counts, find the
     failed notification;
  2. its page: the raw body is byte-identical to what the receiver got, the
     secret header is masked; re-send, and the manual attempt appears;
  3. bulk re-send: the dry-run count, the confirmation, the queued re-send,
     and its attempt on the other notification's page;
  4. circuits: the open circuit, force-closed;
  5. template preview: an error at its line and column, then a render;
  6. live counters: the chart and this process's totals;
  and accessibility basics (labels, the skip link, a narrow screen), no
  script errors or policy violations, and logging out.
"""

import json
import re
import sys
import time
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

cfg = json.load(sys.stdin)
base = cfg["base"]
shots = Path(cfg["artifacts"])
checks = []
problems = []


def check(name):
    checks.append(name)


def shot(page, name):
    page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
    # Outside stored bodies and excerpts, no placeholder leaked into the page.
    text = page.evaluate(
        """() => { const v = document.getElementById('view').cloneNode(true);
                   v.querySelectorAll('pre').forEach(p => p.remove());
                   return v.innerText; }"""
    )
    leaked = re.findall(r"null|undefined|\bNaN\b|\[object", text)
    assert not leaked, f"{name}: the page shows {leaked}: {text[:400]!r}"


def no_secret(page, where):
    content = page.content()
    assert cfg["secret"] not in content, f"the secret value is shown on {where}"
    assert cfg["token"] not in content, f"the API token is shown on {where}"


def unlabelled(page):
    return page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea')]
              .filter(e => !e.hidden && e.type !== 'hidden' && e.labels.length === 0)
              .map(e => e.id || e.name || e.outerHTML.slice(0, 60))"""
    )


def go(page, hash_):
    page.goto(f"{base}/console{hash_}")


def run(page):
    # The browser logs the refused login's 401 as an error: that one is
    # expected (and checked below); anything else is a problem.
    page.on("console", lambda m: m.type == "error" and "status of 401" not in m.text
            and problems.append(f"console: {m.text}"))
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))

    # 0. Log in: a wrong token gets no data.
    go(page, "")
    expect(page.locator("#login")).to_be_visible()
    # The skip link comes first in the tab order, shows when focused, and
    # takes the keyboard to the content.
    first = page.evaluate(
        """() => [...document.querySelectorAll('a[href], button, input, select, textarea')]
              .find(e => e.offsetParent !== null || e.classList.contains('skip')).textContent"""
    )
    assert first == "Skip to content", f"the first focusable element is {first!r}"
    page.focus(".skip")
    box = page.locator(".skip").bounding_box()
    assert box and box["x"] >= 0, f"the focused skip link is off screen: {box}"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    page.fill("#token", "wrong-" + cfg["token"])
    page.click("#login-form button[type=submit]")
    expect(page.locator("#login-error")).to_have_text("This token was refused.")
    expect(page.locator("#view")).to_be_hidden()
    expect(page.locator("table")).to_have_count(0)
    assert page.evaluate("sessionStorage.getItem('herald.token')") is None
    shot(page, "0-login-refused")
    check("a wrong token is refused and shows no data")
    page.fill("#token", cfg["token"])
    page.click("#login-form button[type=submit]")
    expect(page.locator("#view h1")).to_have_text("Communication history")
    check("the right token logs in")

    # 1. History: filter, counts, find the failed notification.
    webhook = cfg["failed_webhook"]
    page.select_option("#f-webhook", webhook)
    page.select_option("#f-status", "failed")
    page.click("form.filters button[type=submit]")
    expect(page.locator("#counts a[data-status=failed]")).to_have_text("failed 2")
    expect(page.locator("#f-status option[value=failed]")).to_have_text("failed (2)")
    expect(page.locator("table#history tbody tr")).to_have_count(2)
    link = page.locator(f'a[href="#/n/{cfg["failed_id"]}"]')
    expect(link).to_be_visible()
    missing = unlabelled(page)
    assert missing == [], f"controls without a label: {missing}"
    width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], f"the page scrolls sideways at 1280 px: {width}"
    shot(page, "1-history")
    check("history filters by webhook and status, with counts")

    # 2. The notification: stored bytes, masked secret, re-send.
    link.click()
    expect(page.locator("#webhook-id")).to_have_text(cfg["failed_id"])
    expect(page.locator("#body-pretty")).to_be_visible()
    page.click("#show-raw")
    expect(page.locator("#body-raw")).to_be_visible()
    raw = page.locator("#body-raw").text_content()
    assert raw == cfg["received_body"], f"shown {raw!r}, received {cfg['received_body']!r}"
    expect(page.locator("#headers")).to_contain_text("Bearer •••••• (secret crm_token)")
    expect(page.locator("#attempts li")).to_have_count(2)
    no_secret(page, "the notification page")
    shot(page, "2-notification")
    check("the raw body shown is byte-identical to what the receiver got")
    page.click("#resend")
    manual = page.locator("#attempts li[data-trigger=manual]")
    expect(manual).to_have_count(1, timeout=30_000)
    expect(manual).to_have_attribute("data-outcome", "success")
    expect(page.locator("#state")).to_have_text("delivered")
    shot(page, "2-notification-resent")
    check("a re-send's manual attempt appears")

    # 3. Bulk re-send with a dry-run count and a confirmation.
    go(page, f"#/history?webhook={webhook}&status=failed")
    expect(page.locator("#counts a[data-status=failed]")).to_have_text("failed 1")
    page.click("#bulk-start")
    expect(page.locator("#bulk-count")).to_contain_text(f"1 failed notifications of {webhook} match")
    shot(page, "3-bulk-confirm")
    page.click("#bulk-confirm")
    expect(page.locator("#bulk-queued")).to_contain_text("Queued 1 re-sends")
    check("bulk re-send counts, asks, then queues")
    go(page, f"#/n/{cfg['bulk_id']}")
    deadline = time.monotonic() + 30
    while page.locator("#attempts li[data-trigger=manual]").count() == 0:
        assert time.monotonic() < deadline, "the bulk re-send's attempt did not appear"
        page.wait_for_timeout(300)
        page.get_by_role("button", name="Refresh").click()
        expect(page.locator("#view h1")).to_have_text("Notification")
    shot(page, "3-bulk-attempt")
    check("the bulk re-send's attempt appears on refresh")

    # 4. Circuits: the open one, force-closed.
    page.click("nav >> text=Circuits")
    row = page.locator(f'tr[data-webhook={cfg["circuit_webhook"]}]')
    expect(row.locator(".badge")).to_have_text("open")
    shot(page, "4-circuits-open")
    row.get_by_role("button").click()
    expect(page.locator("#circuit-result")).to_contain_text(f'{cfg["circuit_webhook"]} is closed')
    expect(page.locator(f'tr[data-webhook={cfg["circuit_webhook"]}] .badge')).to_have_text("closed")
    shot(page, "4-circuits-closed")
    check("a circuit is force-closed")

    # 5. Template preview: an error at its position, then a render.
    page.click("nav >> text=Template preview")
    page.select_option("#p-webhook", cfg["delivered_webhook"])
    event = {"specversion": "1.0", "id": "preview-1", "source": "/core",
             "type": "bank.loan.disbursed", "subject": "L-9", "data": {}}
    page.fill("#p-event", json.dumps(event, indent=2))
    page.click("#p-render")
    expect(page.locator("#error-position")).to_have_text("Template body, line 1, column 38")
    expect(page.locator("#render-error")).to_contain_text("missing field `data.amount`")
    missing = unlabelled(page)
    assert missing == [], f"controls without a label: {missing}"
    shot(page, "5-preview-error")
    event["data"] = {"amount": 990}
    page.fill("#p-event", json.dumps(event))
    page.click("#p-render")
    expect(page.locator("#request-line")).to_contain_text("POST http://127.0.0.1")
    expect(page.locator("#body-raw")).to_have_text('{"loan": "L-9", "amount": 990}')
    shot(page, "5-preview")
    check("a template error is shown at its line and column")

    # 6. Live counters from this process's metrics.
    page.click("nav >> text=Live")
    loans = page.locator(f'figure[data-webhook={cfg["delivered_webhook"]}]')
    expect(loans.locator("li[data-series=delivered]")).to_contain_text("1 total")
    clients = page.locator(f"figure[data-webhook={webhook}]")
    expect(clients.locator("li[data-series=failed]")).to_contain_text("4 total")
    expect(clients.locator("li[data-series=delivered]")).to_contain_text("2 total")
    expect(clients.locator("svg[role=img]")).to_have_count(1)
    shot(page, "6-live")
    check("the live chart shows this process's totals")

    # A narrow screen: nothing scrolls sideways but the tables.
    page.set_viewport_size({"width": 390, "height": 844})
    go(page, f"#/n/{cfg['failed_id']}")
    expect(page.locator("#webhook-id")).to_be_visible()
    width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], f"the page scrolls sideways at 390 px: {width}"
    shot(page, "7-narrow-notification")
    check("usable on a narrow screen")

    page.click("#logout")
    expect(page.locator("#login")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('herald.token')") is None
    check("logging out forgets the token")
    assert problems == [], f"script errors or policy violations: {problems}"


with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=cfg["chromium"], args=["--no-sandbox"])
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.set_default_timeout(15_000)
    try:
        run(page)
    except BaseException:
        try:
            shot(page, "failure")
        except Exception:
            pass
        raise
    finally:
        browser.close()

print(json.dumps({"ok": True, "checks": checks}))
