"""The analytics page (web/analytics.py): login, filters, figures shown, charts wiring, CSV export."""
from __future__ import annotations

import html
import json
import re

import pytest
from markupsafe import escape

from test_analytics import EMAIL, PRIVATE, dataset
from web_fixtures import *  # noqa: F401,F403 - fixtures

PASSWORD = "correct horse battery"
RANGE = "start=2024-03-01&end=2024-03-03"


@pytest.fixture
def admin(app, components):
    from web.auth import create_user

    create_user(components.db, "alice", PASSWORD)
    client = app.test_client()
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/admin/login").get_data(as_text=True))
    r = client.post("/admin/login", data={"username": "alice", "password": PASSWORD, "csrf_token": token.group(1)})
    assert r.status_code == 302
    return client


@pytest.fixture
def data(components):
    return dataset(components.db)


def chart_data(page: str) -> dict:
    found = re.search(r'<script type="application/json" id="analytics-data">(.*?)</script>', page, re.S)
    assert found, "no chart data on the page"
    return json.loads(found.group(1))


def test_page_and_export_require_login(client, data):
    for path in (f"/admin/analytics?{RANGE}", f"/admin/analytics/export.csv?kind=summary&{RANGE}"):
        r = client.get(path)
        assert r.status_code == 302 and "/admin/login" in r.headers["Location"]
    assert b"Conversations" not in client.get(f"/admin/analytics?{RANGE}&bot=*").data


def test_page_shows_the_figures_of_all_bots(admin, data):
    r = admin.get(f"/admin/analytics?{RANGE}&bot=*")
    assert r.status_code == 200
    page = r.get_data(as_text=True)
    assert re.search(r'id="fig-conversations">8<', page)
    assert re.search(r'id="fig-resolution">62.5%<', page)
    assert re.search(r'id="fig-handoff">25.0%<', page)
    assert re.search(r'id="fig-satisfaction">50.0%<', page)
    assert 'id="fig-up">2<' in page and 'id="fig-down">2<' in page
    assert "p50 300 ms" in page and "p95 480 ms" in page
    assert "and not reopened within 24 hours of being resolved" in " ".join(page.split())  # the definition
    chart = chart_data(page)
    assert chart["days"] == ["2024-03-01", "2024-03-02", "2024-03-03"]
    assert chart["conversations"] == [3, 3, 2] and chart["handed_off"] == [1, 0, 1]
    assert chart["thumbs_down"] == [1, 1, 0]
    # Chart.js and the page's script come from our own origin, under the admin CSP.
    assert 'src="/static/vendor/chartjs/chart.umd.min.js"' in page and 'src="/static/analytics.js"' in page
    assert "script-src 'self'" in r.headers["Content-Security-Policy"]
    assert "<script>" not in page
    # Unanswered groups link to their conversations and to writing the answer.
    assert "Where is my parcel?" in page
    # The fixes page lists the bot's reply (its message id) and fills the form with the question.
    assert f'href="/admin/fixes?message_id={data["parcel_reply"]}&amp;question=Where+is+my+parcel%3F#write"' in page
    assert f'/admin/conversations/{data["c2"]}?bot=shop' in page
    assert f'/admin/conversations/{data["c10"]}?bot=other' in page
    assert str(escape('=HYPERLINK("http://evil.example") refund?')) in page
    assert EMAIL not in page and PRIVATE not in page


def test_bot_and_date_filters(admin, data):
    page = admin.get(f"/admin/analytics?{RANGE}&bot=shop").get_data(as_text=True)
    assert re.search(r'id="fig-conversations">6<', page) and re.search(r'id="fig-resolution">50.0%<', page)
    assert "p50 250 ms" in page and "HYPERLINK" not in page
    page = admin.get("/admin/analytics?start=2024-03-02&end=2024-03-02&bot=shop").get_data(as_text=True)
    assert re.search(r'id="fig-conversations">2<', page)
    assert chart_data(page)["days"] == ["2024-03-02"]
    # The chosen bot stays chosen (the console's header shows it).
    page = admin.get(f"/admin/analytics?{RANGE}").get_data(as_text=True)
    assert re.search(r'id="fig-conversations">6<', page)


@pytest.mark.parametrize("query, status, message", [
    ("start=2024-02-30&end=2024-03-01", 400, "YYYY-MM-DD"),
    ("start=2024-03-05&end=2024-03-01", 400, "after the end date"),
    ("start=2020-01-01&end=2024-03-01", 400, "longer than"),
    ("bot=nobody", 404, "no bot called"),
])
def test_bad_filters_are_clear_4xx(admin, data, query, status, message):
    r = admin.get(f"/admin/analytics?{query}")
    assert r.status_code == status and message in html.unescape(r.get_data(as_text=True))


def test_csv_export(admin, data):
    r = admin.get(f"/admin/analytics/export.csv?kind=daily&{RANGE}&bot=*")
    assert r.status_code == 200 and r.mimetype == "text/csv"
    assert r.headers["Content-Disposition"] == 'attachment; filename="supportbot-daily-all-bots-2024-03-01-2024-03-03.csv"'
    assert r.get_data(as_text=True).splitlines()[1] == "2024-03-01,3,2,0.666667,1,0.333333,1,1,0.5"
    r = admin.get(f"/admin/analytics/export.csv?kind=unanswered&{RANGE}&bot=*")
    text = r.get_data(as_text=True)
    assert "Where is my parcel?" in text and "\"'=HYPERLINK(" in text
    assert EMAIL not in text and PRIVATE not in text
    r = admin.get(f"/admin/analytics/export.csv?kind=summary&{RANGE}&bot=shop")
    assert "conversations,6\r\n" in r.get_data(as_text=True)
    assert admin.get(f"/admin/analytics/export.csv?kind=emails&{RANGE}").status_code == 404


def test_nav_links_to_analytics(admin, data):
    assert 'href="/admin/analytics"' in admin.get("/admin/documents").get_data(as_text=True)


def test_vendored_chartjs_is_served_with_its_license(client):
    r = client.get("/static/vendor/chartjs/chart.umd.min.js")
    assert r.status_code == 200 and b"Chart.js v4" in r.data[:200]
    from pathlib import Path

    import web

    assert "MIT" in (Path(web.__file__).parent / "static/vendor/chartjs/LICENSE.md").read_text()
