"""What the app's views share: the components and the web-layer services, built once per app."""
from __future__ import annotations

from dataclasses import dataclass
from flask import current_app

from bot.components import Components
from bot.core.settings import Settings
from web.answers import Answers
from web.health import Readiness
from web.keys import ApiKeys, SiteKeys
from web.security import VisitorTokens


@dataclass
class WebContext:
    settings: Settings
    components: Components
    site_keys: SiteKeys
    api_keys: ApiKeys
    tokens: VisitorTokens
    answers: Answers
    readiness: Readiness
    demo_site_key: str | None = None


def web() -> WebContext:
    """The current app's ``WebContext`` (inside a request or app context)."""
    return current_app.extensions["supportbot"]
