"""herald-bench console: loads the console's history page in headless
Chromium and reads the times the page records itself (performance.now(),
from navigation start): when the first page of the table rendered and when
the status counts did, and how many API calls the view made. After one warm-up load
of each, not counted, each load is in a fresh browser context (no cache, a new tab's sessionStorage), runs
alternate between the webhooks. Input and output are JSON."""

import json
import sys

from playwright.sync_api import sync_playwright

cfg = json.load(sys.stdin)
out = {w: [] for w in cfg["webhooks"]}
with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=cfg["chromium"], args=["--no-sandbox"])
    # One warm-up load of each (the browser's first start), not counted.
    for run in range(cfg["runs"] + 1):
        for webhook in cfg["webhooks"]:
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            # As after logging in: the token is in this tab's sessionStorage.
            context.add_init_script(f"sessionStorage.setItem('herald.token', {json.dumps(cfg['token'])})")
            page = context.new_page()
            page.goto(f"{cfg['base']}/console#/history?webhook={webhook}")
            page.wait_for_selector("body[data-counted-ms]", timeout=120_000)
            d = page.evaluate("({...document.body.dataset})")
            rows = page.locator("table#history tbody tr").count()
            if run > 0:
                out[webhook].append({"rendered_ms": float(d["renderedMs"]),
                                     "counted_ms": float(d["countedMs"]),
                                     "api_calls": int(d["apiCalls"]), "rows": rows})
            context.close()
    browser.close()
print(json.dumps(out))
