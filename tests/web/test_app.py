from starlette.testclient import TestClient

from orchestrator.settings import Settings
from web.app import create_app


def test_healthz_reports_the_installed_version() -> None:
    from importlib.metadata import version

    settings = Settings.from_env({}, env_file=None)
    with TestClient(create_app(settings)) as client:
        response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"ok": True, "version": version("live-orchestrator")}


def test_unknown_path_is_404() -> None:
    with TestClient(create_app(Settings.from_env({}, env_file=None))) as client:
        assert client.get("/nope").status_code == 404
