"""docker-compose.yml agrees with the settings and the app: services, ports, variables, health checks."""
from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from bot.core.settings import Settings
from web_fixtures import *  # noqa: F401,F403 - fixtures (app, client)

REPO = Path(__file__).resolve().parent.parent
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?([-?])([^}]*))?\}")


def interpolate(value, env: dict[str, str]):
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}`` (``error`` -> a stand-in)."""
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m):
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if env.get(name):
            return env[name]
        if op == "-":
            return arg
        if op == "?":
            return f"required-{name.lower()}"
        return ""

    return _VAR.sub(sub, value)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def settings_field(name: str) -> bool:
    """True when ``SUPPORTBOT_A__B`` names the settings field ``a.b``."""
    parts = name[len("SUPPORTBOT_"):].lower().split("__")
    model = Settings
    for i, part in enumerate(parts):
        fields = model.model_fields
        if part not in fields:
            return False
        annotation = fields[part].annotation
        if i < len(parts) - 1:
            if not (isinstance(annotation, type) and hasattr(annotation, "model_fields")):
                return False
            model = annotation
    return True


def web_env(compose: dict, **host_env) -> dict[str, str]:
    env = compose["services"]["web"]["environment"]
    return {k: str(interpolate(v, host_env)) for k, v in env.items()}


def test_services_profiles_and_volumes(compose):
    services = compose["services"]
    assert set(services) == {"web", "db", "vllm"}
    assert services["vllm"]["profiles"] == ["gpu"]
    assert "profiles" not in services["web"] and "profiles" not in services["db"]
    gpu = services["vllm"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]
    assert services["web"]["depends_on"]["db"]["condition"] == "service_healthy"
    named = set(compose["volumes"])
    for svc in services.values():
        for vol in svc.get("volumes", []):
            assert vol.split(":")[0] in named
    assert any(v.endswith(":/var/lib/postgresql/data") for v in services["db"]["volumes"])
    for name, svc in services.items():
        assert svc.get("healthcheck", {}).get("test"), f"{name} has no health check"


def test_every_supportbot_variable_is_a_settings_field(compose):
    env = web_env(compose)
    names = [k for k in env if k.startswith("SUPPORTBOT_")]
    assert len(names) >= 10
    unknown = [k for k in names if not settings_field(k)]
    assert unknown == [], f"not settings fields: {unknown}"
    assert not settings_field("SUPPORTBOT_WEB__NO_SUCH_FIELD")  # the check itself can fail


def test_variables_load_into_valid_settings(compose, monkeypatch):
    for k, v in web_env(compose, SUPPORTBOT_SECRET_KEY="s3cret").items():
        monkeypatch.setenv(k, v)
    s = Settings()
    assert s.data_dir == Path("/data")
    assert s.web.host == "0.0.0.0" and s.web.secret_key == "s3cret"
    assert s.web.worker_class in ("gthread", "gevent")
    assert s.database_url.startswith("postgresql+psycopg://")


def test_ports_and_addresses_agree(compose):
    services = compose["services"]
    env = web_env(compose)
    port = int(env["SUPPORTBOT_WEB__PORT"])
    published = [interpolate(p, {}) for p in services["web"]["ports"]]
    assert any(p.endswith(f":{port}") for p in published)
    assert f"127.0.0.1:{port}/healthz" in " ".join(services["web"]["healthcheck"]["test"])

    db_url = urlsplit(env["SUPPORTBOT_DATABASE_URL"].replace("postgresql+psycopg", "postgresql"))
    db_env = {k: interpolate(v, {}) for k, v in services["db"]["environment"].items()}
    assert db_url.hostname == "db" and (db_url.port or 5432) == 5432
    assert db_url.username == db_env["POSTGRES_USER"] and db_url.password == db_env["POSTGRES_PASSWORD"]
    assert db_url.path.lstrip("/") == db_env["POSTGRES_DB"]

    base = urlsplit(env["SUPPORTBOT_GENERATOR__BASE_URL"])
    vllm_cmd = interpolate(services["vllm"]["command"], {})
    assert base.hostname == "vllm" and base.path == "/v1"
    assert base.port == int(vllm_cmd[vllm_cmd.index("--port") + 1])
    assert f":{base.port}/health" in " ".join(services["vllm"]["healthcheck"]["test"])
    # The web app asks vLLM for the model by the name vLLM serves it under.
    assert vllm_cmd[vllm_cmd.index("--served-model-name") + 1] == env["SUPPORTBOT_GENERATOR__MODEL"]


def test_health_check_path_is_served(compose, app, client):
    assert "/healthz" in {r.rule for r in app.url_map.iter_rules()}
    assert client.get("/healthz").status_code == 200


def test_secret_key_is_required(compose):
    raw = compose["services"]["web"]["environment"]["SUPPORTBOT_WEB__SECRET_KEY"]
    assert ":?" in raw  # compose refuses to start without it

