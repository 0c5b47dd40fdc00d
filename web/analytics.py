"""The analytics page of the admin console (``/admin/analytics``, login required) and its CSV export.

The figures come from ``bot.analytics`` (the dialogue tier); this module only reads the filters,
renders and exports. The charts are drawn by Chart.js, vendored under ``static/vendor/chartjs``
and served from our own origin, so the admin Content-Security-Policy (``script-src 'self'``) holds:
the page's data travels in a ``<script type="application/json">`` block (never executed) that
``static/analytics.js`` reads.

Filters (query string): ``start`` and ``end`` (``YYYY-MM-DD``, UTC, both included; the last 30 days
by default), ``bot`` (a bot's name, ``*`` for every bot; the bot chosen in the console by default).
"""
from __future__ import annotations

import re

from flask import Blueprint, Response, current_app, g, render_template, request, session

from bot.analytics import CLUSTER_DISTANCE, UNANSWERED_LIMIT, Analytics, Filters
from bot.core.errors import NotFound
from web.auth import login_required
from web.context import web

bp = Blueprint("analytics", __name__, url_prefix="/admin/analytics")
ALL_BOTS = "*"
EXPORTS = ("summary", "daily", "unanswered")


def analytics() -> Analytics:
    """The app's one ``Analytics`` (it caches the unanswered questions' embeddings)."""
    found = current_app.extensions.get("supportbot_analytics")
    if found is None:
        comps = web().components
        found = current_app.extensions.setdefault("supportbot_analytics", Analytics(comps.db, comps.embedder))
    return found


def _filters() -> tuple[Filters, str]:
    """The filters of this request and the bot chosen (a name or ``*``)."""
    db = web().components.db
    g.bot = session.get("bot") or web().settings.default_bot  # the console's header shows it
    chosen = (request.args.get("bot") or g.bot).strip()
    if chosen == ALL_BOTS:
        bot_id = None
    else:
        bot_id = db.bot_id(chosen[:64], create=False)  # NotFound (404) for an unknown name
        g.bot = session["bot"] = chosen
    return Filters.parse(request.args.get("start"), request.args.get("end"), bot_id), chosen


@bp.get("")
@login_required
def page():
    filters, chosen = _filters()
    report = analytics().report(filters)
    return render_template(
        "admin/analytics.html", report=report, summary=report.summary(), chart=report.chart_data(),
        chosen=chosen, all_bots=ALL_BOTS, exports=EXPORTS, unanswered_limit=UNANSWERED_LIMIT,
        distance=CLUSTER_DISTANCE,
        query={"start": filters.start.isoformat(), "end": filters.end.isoformat(), "bot": chosen},
    )


@bp.get("/export.csv")
@login_required
def export():
    kind = request.args.get("kind", "summary")
    if kind not in EXPORTS:
        raise NotFound(f"no export {kind[:40]!r}; choose one of {', '.join(EXPORTS)}")
    filters, chosen = _filters()
    report = analytics().report(filters)
    label = "all-bots" if chosen == ALL_BOTS else re.sub(r"[^A-Za-z0-9_.-]", "_", chosen)
    name = f"supportbot-{kind}-{label}-{filters.start}-{filters.end}.csv"
    return Response(
        analytics().csv(report, kind), mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )
