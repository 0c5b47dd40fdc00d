"""The analytics page's charts in a real browser (Debian's Chromium, headless, Playwright).

``tests/test_analytics_web.py`` checks the page's HTML and its JSON data block; this checks that
the charts are really drawn under the admin Content-Security-Policy (``script-src 'self';
style-src 'self'``): Chart.js (vendored, same origin) and ``static/analytics.js`` run, each canvas
gets a chart holding the seeded daily counts and has ink on it, and the page raises no CSP
violation, no console error, no uncaught exception and no failed request. Data: the hand-built
dataset of ``tests/test_analytics.py`` (8 conversations over 2024-03-01..03, two bots).
"""
from __future__ import annotations


import pytest

from test_analytics import dataset
from test_web_browser import browser, require_browser, serving  # noqa: F401 - the same server and browser setup
from web_fixtures import ScriptedGenerator

pytestmark = pytest.mark.browser

PASSWORD = "correct horse battery"
CHARTS = ("chart-conversations", "chart-rates", "chart-feedback")
# Registered before any page script runs, so a violation by Chart.js or analytics.js is caught.
WATCH_CSP = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__csp.push(e.violatedDirective + " " + (e.blockedURI || "inline") + " " + (e.sourceFile || ""));
});
"""
# Per canvas: the chart's type and datasets (label, data) and how many pixels are not transparent.
READ_CHARTS = """(ids) => ids.map((id) => {
  const canvas = document.getElementById(id);
  const chart = window.Chart && window.Chart.getChart(canvas);
  const px = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let ink = 0;
  for (let i = 3; i < px.length; i += 4) if (px[i] !== 0) ink++;
  return {
    id, ink, width: canvas.width, height: canvas.height,
    type: chart ? chart.config.type : null,
    labels: chart ? chart.data.labels : null,
    datasets: chart ? chart.data.datasets.map((d) => [d.label, d.data]) : null,
  };
})"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    require_browser()
    with serving(tmp_path_factory.mktemp("analytics"), ScriptedGenerator(words=4)) as info:
        from web.auth import create_user

        create_user(info["components"].db, "alice", PASSWORD)
        dataset(info["components"].db)
        yield info


@pytest.fixture
def admin_page(server, browser):
    """A logged-in page that records console errors, page errors and failed requests."""
    ctx = browser.new_context(viewport={"width": 1200, "height": 900})
    ctx.add_init_script(WATCH_CSP)
    page = ctx.new_page()
    problems: list[str] = []

    def console(m):
        where = (m.location or {}).get("url", "")
        if m.type in ("error", "warning") and not where.endswith("/favicon.ico"):  # the browser's own ask
            problems.append(f"console {m.type}: {m.text} ({where})")

    page.on("console", console)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url} {r.failure}"))
    page.on("response", lambda r: r.status >= 400 and problems.append(f"HTTP {r.status}: {r.url}"))
    page.goto(server["url"] + "/admin/login?next=/admin/analytics")
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/admin/analytics")
    page.problems = problems
    yield page
    ctx.close()


def open_analytics(page, url: str, query: str) -> list[dict]:
    response = page.goto(f"{url}/admin/analytics?{query}")
    assert response.status == 200
    assert "script-src 'self'" in response.headers["content-security-policy"]
    page.wait_for_selector("html[data-charts=drawn]", timeout=10000)
    page.wait_for_timeout(100)  # a violation report is dispatched after the task that caused it
    assert page.evaluate("window.__csp") == [], "a Content-Security-Policy violation"
    assert page.problems == [], "console errors, page errors or failed requests"
    return page.evaluate(READ_CHARTS, list(CHARTS))


def test_charts_are_drawn_with_the_seeded_counts_under_the_csp(server, admin_page):
    charts = {c["id"]: c for c in open_analytics(admin_page, server["url"],
                                                  "start=2024-03-01&end=2024-03-03&bot=*")}
    assert admin_page.locator("#fig-conversations").inner_text() == "8"
    days = ["2024-03-01", "2024-03-02", "2024-03-03"]
    for c in charts.values():
        assert c["type"] is not None, f"{c['id']}: no chart on the canvas"
        assert c["labels"] == days
        assert c["width"] > 100 and c["height"] > 100, f"{c['id']}: the canvas was not sized"
        # Axes, labels, legend and bars or lines: thousands of pixels, not a blank canvas.
        assert c["ink"] > 2000, f"{c['id']}: only {c['ink']} pixels drawn"
    # The hand-worked figures of test_analytics.dataset, for all bots, per day.
    assert charts["chart-conversations"]["type"] == "bar"
    assert charts["chart-conversations"]["datasets"] == [
        ["Resolved by the bot", [2, 2, 1]], ["Handed off", [1, 0, 1]], ["Other", [0, 1, 0]]]
    assert charts["chart-rates"]["type"] == "line"
    assert charts["chart-rates"]["datasets"] == [
        ["Resolution rate (%)", [66.7, 66.7, 50]], ["Hand-off rate (%)", [33.3, 0, 50]]]
    assert charts["chart-feedback"]["datasets"] == [["Thumbs up", [1, 1, 0]], ["Thumbs down", [1, 1, 0]]]


def test_one_bot_and_an_empty_range_draw_without_errors(server, admin_page):
    charts = {c["id"]: c for c in open_analytics(admin_page, server["url"],
                                                  "start=2024-03-02&end=2024-03-03&bot=shop")}
    assert charts["chart-conversations"]["datasets"][0] == ["Resolved by the bot", [1, 1]]
    assert charts["chart-feedback"]["datasets"] == [["Thumbs up", [1, 0]], ["Thumbs down", [1, 0]]]
    # No conversations at all: the rates are gaps (null), the axes are still drawn.
    charts = {c["id"]: c for c in open_analytics(admin_page, server["url"],
                                                  "start=2023-01-01&end=2023-01-07&bot=*")}
    assert len(charts["chart-rates"]["labels"]) == 7
    assert charts["chart-rates"]["datasets"][0] == ["Resolution rate (%)", [None] * 7]
    assert charts["chart-conversations"]["datasets"][0] == ["Resolved by the bot", [0] * 7]
    assert all(c["ink"] > 500 for c in charts.values()), "the axes and legends are drawn"
