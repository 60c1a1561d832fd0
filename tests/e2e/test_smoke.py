"""The controller starts, answers health, and a session reaches /api/v2/auth."""

from tests.support.controller import ADMIN_EMAIL, Controller


def test_health_and_whoami(controller: Controller) -> None:
    r = controller.http().get("/api/v2/health")
    assert r.status == 200 and r.body["status"] == "ok"
    h = controller.session()
    r = h.get("/api/v2/auth")
    assert r.status == 200
    assert r.body["data"]["user"]["email"] == ADMIN_EMAIL
    assert r.body["data"]["org"]["name"] == "Acme"
