"""The console in a real browser: sign-in, roles, every page, the changes it makes, tenant
isolation and a hostile task name under the Content-Security-Policy (issue 20)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from playwright.sync_api import Dialog, Page, expect
from playwright.sync_api import Error as PlaywrightError

from tests.browser.conftest import ACTION_TIMEOUT_MS, new_key

pytestmark = pytest.mark.browser

# What a wait on the daemon (a task to fail, a schedule to fire) may take.
WAIT_S = 30.0
HOSTILE = "<script>alert(1)</script>"


def api(url: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=10)


def wait_for(check: Callable[[], Any], what: str) -> Any:
    """Poll `check` until it returns something true (the daemon's work has no event a
    test outside it can wait on); fail after WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while not (found := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return found


def open_console(page: Page, url: str, attempts: int = 3) -> None:
    """Go to the console's front door. Chromium, on a loaded box, has aborted that first
    navigation (`net::ERR_ABORTED`) before any response of the daemon's reached it (seen
    in a clean-clone run of 363442f); only that error is retried, and only here."""
    for attempt in range(1, attempts + 1):
        try:
            page.goto(f"{url}/console/")
            return
        except PlaywrightError as e:
            if "net::ERR_ABORTED" not in str(e) or attempt == attempts:
                raise


def sign_in(page: Page, url: str, token: str) -> None:
    page.set_default_timeout(ACTION_TIMEOUT_MS)
    open_console(page, url)
    expect(page).to_have_url(re.compile(r"/console/sign-in$"))
    page.fill("#credential", token)
    page.click("#sign-in")
    expect(page.locator("#sign-out")).to_be_visible()


def shot(page: Page, screenshots: Path, name: str) -> None:
    page.screenshot(path=str(screenshots / f"{name}.png"), full_page=True)


def test_an_operator_signs_in_sees_a_task_on_every_page_and_signs_out(
        page: Page, console_env, start_daemon, screenshots: Path) -> None:
    operator = new_key(console_env, "all")
    with start_daemon(console_env) as url, api(url, operator) as c:
        r = c.post("/api/v1/tasks", json={"name": "nightly-report", "queue_name": "reports",
                                          "payload": {"user": "ada", "token": "hunter2"},
                                          "secret_fields": ["token"]})
        assert r.status_code == 201, r.text
        task_id = r.json()["task_id"]
        wait_for(lambda: c.get(f"/api/v1/tasks/{task_id}").json()["task"]["status"]
                 == "completed", "the task to complete")

        page.set_default_timeout(ACTION_TIMEOUT_MS)
        page.goto(f"{url}/console/tasks")
        expect(page).to_have_url(re.compile(r"/console/sign-in$"))
        page.fill("#credential", "dtk_not-a-key-this-server-made")
        page.click("#sign-in")
        expect(page.locator("#problem")).to_contain_text("unknown")
        shot(page, screenshots, "sign-in")
        page.fill("#credential", operator)
        page.click("#sign-in")
        expect(page.locator("#queues")).to_contain_text("reports")
        cookie = next(x for x in page.context.cookies() if x["name"] == "distasks_console")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/console"
        assert operator not in cookie["value"]
        expect(page.locator("#chart-finished rect.completed")).to_have_count(1)
        expect(page.locator("#chart-latency rect.latency")).to_have_count(1)
        shot(page, screenshots, "overview")

        page.click("nav >> text=Tasks")
        expect(page.locator("#tasks")).to_contain_text("nightly-report")
        expect(page.locator("#task-count")).to_contain_text("1 task match")
        page.fill("input[name=name]", "no-such-name")
        page.click("#task-filters button")
        expect(page.locator("#tasks")).to_contain_text("No task matches")
        page.goto(f"{url}/console/tasks?status=completed&queue=reports&handler=demo")
        expect(page.locator("#tasks")).to_contain_text("nightly-report")
        shot(page, screenshots, "tasks")
        page.goto(f"{url}/console/tasks")
        page.fill("#payload-search", '{"user": "ada"}')
        page.click("#task-filters button")
        expect(page.locator("#tasks")).to_contain_text("nightly-report")
        expect(page.locator("#search-window")).to_contain_text("newest 25,000 tasks")
        page.fill("#payload-search", '{"user": "bob"}')
        page.click("#task-filters button")
        expect(page.locator("#tasks")).to_contain_text("No task matches")
        response = page.goto(f"{url}/console/tasks?payload=%5B1%5D")
        assert response is not None and response.status == 422

        page.goto(f"{url}/console/tasks")
        page.click(f"text={task_id}")
        expect(page.locator("#task-status")).to_have_text("completed")
        expect(page.locator("#runs")).to_contain_text("Attempt 1")
        expect(page.locator("#runs")).to_contain_text("succeeded")
        page.click("#show-payload")
        expect(page.locator("#payload")).to_contain_text('"user": "ada"')
        expect(page.locator("#payload")).to_contain_text("[secret]")
        assert "hunter2" not in page.content()
        shot(page, screenshots, "task")

        page.click("nav >> text=Queues")
        expect(page.locator("tr[data-queue=reports]")).to_contain_text("running")
        shot(page, screenshots, "queues")
        page.click("nav >> text=DLQ")
        expect(page.locator("#dead")).to_be_visible()
        shot(page, screenshots, "dlq")
        page.click("nav >> text=Schedules")
        expect(page.locator("#schedules")).to_be_visible()
        shot(page, screenshots, "schedules")
        page.click("nav >> text=Workers")
        expect(page.locator("#workers")).to_contain_text("yes")
        shot(page, screenshots, "workers")
        page.click("nav >> text=Audit")
        expect(page.locator("#audit")).to_contain_text("console.sign_in")
        shot(page, screenshots, "audit")

        page.click("#sign-out")
        expect(page).to_have_url(re.compile(r"/console/sign-in$"))
        page.goto(f"{url}/console/tasks")
        expect(page).to_have_url(re.compile(r"/console/sign-in$"))
        actions = [e["action"] for e in c.get("/api/v1/audit").json()["entries"]]
        assert {"console.sign_in", "console.sign_out"} <= set(actions)


def test_a_read_only_key_sees_no_buttons_and_its_forged_post_is_refused(
        page: Page, console_env, start_daemon, screenshots: Path) -> None:
    operator = new_key(console_env, "all")
    reader = new_key(console_env, "tasks:read", "queues:read")
    with start_daemon(console_env) as url, api(url, operator) as c:
        r = c.post("/api/v1/tasks", json={"name": "read-me", "type": "delayed",
                                          "delay_seconds": 3600})
        task_id = r.json()["task_id"]
        sign_in(page, url, reader)
        nav = page.locator("nav")
        expect(nav).to_contain_text("Tasks")
        expect(nav).not_to_contain_text("Audit")
        expect(nav).not_to_contain_text("Schedules")
        page.goto(f"{url}/console/queues")
        expect(page.locator("tr[data-queue=default]")).to_be_visible()
        expect(page.locator("button.pause")).to_have_count(0)
        shot(page, screenshots, "queues-read-only")
        page.goto(f"{url}/console/tasks/{task_id}")
        expect(page.locator("#task-status")).to_have_text("queued")
        expect(page.locator("#cancel")).to_have_count(0)

        # The page hides the buttons; the server is what refuses. A POST with this
        # session's own cookie and CSRF token, as a hand-made form would send it:
        csrf = page.locator("input[name=csrf]").first.get_attribute("value")
        for path in ("/console/queues/default/pause", f"/console/tasks/{task_id}/cancel",
                     "/console/dlq/default/bulk"):
            refused = page.request.post(f"{url}{path}", form={"csrf": csrf or ""},
                                        max_redirects=0)
            assert refused.status == 403, (path, refused.status)
        page.goto(f"{url}/console/audit")
        expect(page.locator("h1")).to_contain_text("Refused")
        assert c.get(f"/api/v1/tasks/{task_id}").json()["task"]["status"] == "queued"
        queues = {q["name"]: q for q in c.get("/api/v1/queues").json()["queues"]}
        assert not queues["default"]["paused"]


def test_cancel_from_the_task_page_is_audited_with_the_person(
        page: Page, console_env, start_daemon) -> None:
    operator = new_key(console_env, "all")
    with start_daemon(console_env) as url, api(url, operator) as c:
        task_id = c.post("/api/v1/tasks", json={"name": "later", "type": "delayed",
                                                "delay_seconds": 3600}).json()["task_id"]
        sign_in(page, url, operator)
        page.goto(f"{url}/console/tasks/{task_id}")
        page.click("#cancel")
        expect(page.locator("#task-status")).to_have_text("cancelled")
        assert c.get(f"/api/v1/tasks/{task_id}").json()["task"]["status"] == "cancelled"
        key_id = c.get("/api/v1/keys").json()["keys"][0]["id"]
        cancels = c.get("/api/v1/audit", params={"action": "cancel"}).json()["entries"]
        assert [e["actor"] for e in cancels] == [f"key:{key_id}"]


def test_pause_and_resume_a_queue(page: Page, console_env, start_daemon) -> None:
    operator = new_key(console_env, "all")
    with start_daemon(console_env) as url, api(url, operator) as c:
        sign_in(page, url, operator)
        page.goto(f"{url}/console/queues")
        row = page.locator("tr[data-queue=default]")
        row.locator("button.pause").click()
        expect(row.locator(".queue-state")).to_contain_text("paused")
        assert {q["name"]: q["paused"] for q in c.get("/api/v1/queues").json()["queues"]}[
            "default"]
        row.locator("button.resume").click()
        expect(row.locator(".queue-state")).to_have_text("running")
        assert not {q["name"]: q["paused"] for q in c.get("/api/v1/queues").json()["queues"]}[
            "default"]
        actions = [e["action"] for e in c.get("/api/v1/audit").json()["entries"]]
        assert actions[:2] == ["resume", "pause"]

        # An empty queue can be deleted; one holding work offers no button.
        assert c.post("/api/v1/queues/spare/pause").status_code == 200
        c.post("/api/v1/tasks", json={"name": "waiting", "type": "delayed",
                                      "delay_seconds": 3600})
        page.goto(f"{url}/console/queues")
        expect(page.locator("tr[data-queue=default] button.delete")).to_have_count(0)
        page.locator("tr[data-queue=spare] button.delete").click()
        expect(page.locator("tr[data-queue=spare]")).to_have_count(0)
        assert "spare" not in {q["name"] for q in c.get("/api/v1/queues").json()["queues"]}


def test_dlq_replay_by_filter_shows_a_dry_run_count_first(
        page: Page, console_env, start_daemon, screenshots: Path) -> None:
    operator = new_key(console_env, "all")
    with start_daemon(console_env) as url, api(url, operator) as c:
        # demo fails its first attempt when the priority is odd: no retries, so the DLQ.
        ids = [c.post("/api/v1/tasks", json={"name": f"doomed-{i}", "priority": 1,
                                             "max_retries": 0}).json()["task_id"]
               for i in range(3)]
        wait_for(lambda: all(c.get(f"/api/v1/tasks/{t}").json()["task"]["status"] == "failed"
                             for t in ids), "three tasks in the DLQ")
        sign_in(page, url, operator)
        page.goto(f"{url}/console/dlq?queue=default")
        expect(page.locator("#dead tbody tr")).to_have_count(3)
        page.fill("input[name=error]", "no error says this")
        page.click("text=Show")
        page.click("#dry-run-button")
        expect(page.locator("#matched")).to_have_text("0")
        page.goto(f"{url}/console/dlq?queue=default")
        page.click("#dry-run-button")
        expect(page.locator("#matched")).to_have_text("3")
        shot(page, screenshots, "dlq-dry-run")
        assert all(c.get(f"/api/v1/tasks/{t}").json()["task"]["status"] == "failed"
                   for t in ids), "a dry run changed something"
        page.click("#replay")
        expect(page.locator("#replayed")).to_contain_text("Replayed 3")
        wait_for(lambda: all(c.get(f"/api/v1/tasks/{t}").json()["task"]["status"]
                             == "completed" for t in ids), "the replayed tasks to complete")
        replays = c.get("/api/v1/audit", params={"action": "dlq_replay"}).json()["entries"]
        assert replays and all(e["actor"].startswith("key:") for e in replays)


def test_a_schedule_shows_its_history_and_can_be_disabled(
        page: Page, console_env, start_daemon, screenshots: Path) -> None:
    operator = new_key(console_env, "all")
    with start_daemon(console_env) as url, api(url, operator) as c:
        r = c.post("/api/v1/schedules", json={"name": "every-second", "cron": "* * * * * *",
                                              "task": {"handler": "noop"}})
        assert r.status_code == 201, r.text
        wait_for(lambda: c.get("/api/v1/schedules/every-second").json()["fires"],
                 "a fire")
        sign_in(page, url, operator)
        page.goto(f"{url}/console/schedules")
        page.click("text=every-second")
        expect(page.locator("#fires tbody tr").first).to_contain_text("created")
        expect(page.locator("#upcoming li")).to_have_count(5)
        page.locator("#fires a").first.click()
        expect(page.locator("#task-name")).to_have_text("every-second")
        page.go_back()
        shot(page, screenshots, "schedule")
        page.click("#toggle")
        expect(page.locator("#enabled")).to_have_text("no")
        assert c.get("/api/v1/schedules/every-second").json()["schedule"]["enabled"] is False
        page.click("#fire-now")
        expect(page.locator("#task-name")).to_have_text("every-second")
        fired = c.get("/api/v1/audit", params={"action": "schedule_fire_now"}).json()
        assert fired["entries"][0]["detail"]["schedule"] == "every-second"


def test_a_tenant_sees_only_its_own(page: Page, console_env, start_daemon) -> None:
    operator = new_key(console_env, "all")
    acme = new_key(console_env, "all", tenant="acme")
    with start_daemon(console_env) as url, api(url, operator) as c, api(url, acme) as a:
        theirs = c.post("/api/v1/tasks", json={"name": "operators-task",
                                               "queue_name": "private"}).json()["task_id"]
        mine = a.post("/api/v1/tasks", json={"name": "acme-task"}).json()["task_id"]
        sign_in(page, url, acme)
        page.goto(f"{url}/console/tasks")
        expect(page.locator("#tasks")).to_contain_text("acme-task")
        expect(page.locator("#tasks")).not_to_contain_text("operators-task")
        page.goto(f"{url}/console/queues")
        expect(page.locator("#queues")).not_to_contain_text("private")
        response = page.goto(f"{url}/console/tasks/{theirs}")
        assert response is not None and response.status == 404
        response = page.goto(f"{url}/console/tasks/{mine}")
        assert response is not None and response.status == 200
        page.goto(f"{url}/console/audit")
        expect(page.locator("#audit")).not_to_contain_text("operators-task")
        assert "key:" in (page.locator("#audit").text_content() or "")


def test_a_hostile_task_name_is_inert_text(
        page: Page, console_env, start_daemon, screenshots: Path) -> None:
    operator = new_key(console_env, "all")
    dialogs: list[str] = []
    violations: list[str] = []

    def on_dialog(d: Dialog) -> None:
        dialogs.append(d.message)
        d.dismiss()

    page.on("dialog", on_dialog)
    page.on("console", lambda m: violations.append(m.text)
            if "Content Security Policy" in m.text else None)
    with start_daemon(console_env) as url, api(url, operator) as c:
        task_id = c.post("/api/v1/tasks", json={"name": HOSTILE, "payload": {"html": HOSTILE}}
                         ).json()["task_id"]
        sign_in(page, url, operator)
        page.goto(f"{url}/console/tasks")
        expect(page.locator("#tasks")).to_contain_text(HOSTILE)
        page.goto(f"{url}/console/tasks/{task_id}?payload=1")
        expect(page.locator("#task-name")).to_have_text(HOSTILE)
        expect(page.locator("#payload")).to_contain_text(HOSTILE)
        shot(page, screenshots, "hostile-name")
        wid = c.post("/api/v1/workflows", json={"name": HOSTILE, "tasks": [
            {"key": "a", "name": HOSTILE, "handler": "demo"}]}).json()["workflow_id"]
        page.goto(f"{url}/console/workflows")
        expect(page.locator("#workflows")).to_contain_text(HOSTILE)
        page.goto(f"{url}/console/workflows/{wid}")
        expect(page.locator("#workflow-name")).to_have_text(HOSTILE)
        expect(page.locator("#workflow-graph a.node")).to_have_count(1)
        page.goto(f"{url}/console/audit")
        csp = page.request.get(f"{url}/console/tasks").headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp
        assert page.locator("main script").count() == 0
    assert dialogs == []
    assert violations == []


def test_revoking_the_key_ends_its_console_session(page: Page, console_env,
                                                   start_daemon) -> None:
    operator = new_key(console_env, "all")
    person = new_key(console_env, "tasks:read", "queues:read")
    with start_daemon(console_env) as url, api(url, operator) as c:
        sign_in(page, url, person)
        page.goto(f"{url}/console/tasks")
        expect(page.locator("#tasks")).to_be_visible()
        key_id = next(k["id"] for k in c.get("/api/v1/keys").json()["keys"]
                      if k["name"] == "tasks:read-queues:read")
        assert c.post(f"/api/v1/keys/{key_id}/revoke").status_code == 200

        def signed_out() -> bool:
            page.goto(f"{url}/console/tasks")
            return page.url.endswith("/console/sign-in")

        # Within the key cache's lifetime (access.principals.CACHE_TTL_S, 5 s).
        wait_for(signed_out, "the revoked key's session to end")


def test_loopback_opens_without_sign_in_where_anonymous_is_allowed(
        page: Page, console_env, start_daemon) -> None:
    env = {**console_env, "DISTASKS_AUTH_ANONYMOUS": "loopback"}
    with start_daemon(env) as url:
        page.set_default_timeout(ACTION_TIMEOUT_MS)
        page.goto(f"{url}/console/queues")
        expect(page.locator("nav")).to_contain_text("Audit")
        expect(page.locator("#sign-out")).to_have_count(0)
        page.locator("tr[data-queue=default] button.pause").click()
        expect(page.locator("tr[data-queue=default] .queue-state")).to_contain_text("paused")
        entries = httpx.get(f"{url}/api/v1/audit").json()["entries"]
        assert [(e["action"], e["actor"]) for e in entries] == [
            ("pause", "anonymous@127.0.0.1")]


def test_dlq_delete_by_filter_shows_a_dry_run_count_first(
        page: Page, console_env, start_daemon) -> None:
    operator = new_key(console_env, "all")
    with start_daemon(console_env) as url, api(url, operator) as c:
        ids = [c.post("/api/v1/tasks", json={"name": f"doomed-{i}", "priority": 1,
                                             "max_retries": 0}).json()["task_id"]
               for i in range(3)]
        wait_for(lambda: all(c.get(f"/api/v1/tasks/{t}").json()["task"]["status"] == "failed"
                             for t in ids), "three tasks in the DLQ")
        sign_in(page, url, operator)
        # One replayed from its own page: a new attempt (demo fails only the first).
        page.goto(f"{url}/console/tasks/{ids.pop()}")
        page.click("#replay-task")
        expect(page.locator("#runs")).to_contain_text("Attempt 2")
        expect(page.locator("#replay-task")).to_have_count(0)
        page.goto(f"{url}/console/dlq?queue=default&error=odd+priority")
        page.click("#dry-run-delete")
        expect(page.locator("#matched")).to_have_text("2")
        assert len(c.get("/api/v1/queues/default/dlq").json()["tasks"]) == 2
        page.click("#delete")
        expect(page.locator("#deleted")).to_contain_text("Took 2 tasks")
        expect(page.locator("#dead")).to_contain_text("Nothing dead-lettered here")
        assert c.get("/api/v1/queues/default/dlq").json()["tasks"] == []
        assert all(c.get(f"/api/v1/tasks/{t}").json()["task"]["status"] == "failed"
                   for t in ids)


def test_a_jwt_signs_in_as_the_api_accepts_it_and_its_session_ends_at_exp(
        page: Page, console_env, start_daemon, tmp_path: Path) -> None:
    idp_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = {**jwt.algorithms.RSAAlgorithm.to_jwk(idp_key.public_key(), as_dict=True),
           "kid": "k1"}
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    env = {**console_env, "DISTASKS_AUTH_JWT_ENABLED": "true",
           "DISTASKS_AUTH_JWT_ISSUER": "https://idp.example",
           "DISTASKS_AUTH_JWT_AUDIENCE": "distasks-console",
           "DISTASKS_AUTH_JWT_DEFAULT_TENANT": "default",
           "DISTASKS_AUTH_JWT_JWKS_FILE": str(tmp_path / "jwks.json"),
           "DISTASKS_AUTH_JWT_LEEWAY_S": "0"}

    def mint(lifetime_s: float) -> str:
        return jwt.encode({"iss": "https://idp.example", "aud": "distasks-console",
                           "sub": "alice", "scope": "tasks:read queues:read",
                           "exp": int(time.time() + lifetime_s)}, idp_key,
                          algorithm="RS256", headers={"kid": "k1"})

    with start_daemon(env) as url:
        page.set_default_timeout(ACTION_TIMEOUT_MS)
        page.goto(f"{url}/console/sign-in")
        page.fill("#credential", mint(-60))
        page.click("#sign-in")
        expect(page.locator("#problem")).to_contain_text("refused")
        sign_in(page, url, mint(4))
        expect(page.locator(".who")).to_contain_text("alice")
        page.goto(f"{url}/console/tasks")
        expect(page.locator("#tasks")).to_be_visible()

        def signed_out() -> bool:
            page.goto(f"{url}/console/tasks")
            return page.url.endswith("/console/sign-in")

        wait_for(signed_out, "the JWT's session to end at its exp")


def test_the_overview_names_a_schedule_that_does_not_fire(
        page: Page, console_env, start_daemon) -> None:
    env = {**console_env, "DISTASKS_SCHEDULER_ENABLED": "false",
           "DISTASKS_AUTH_ANONYMOUS": "loopback"}
    with start_daemon(env) as url:
        r = httpx.post(f"{url}/api/v1/schedules", json={
            "name": "stuck", "cron": "* * * * *", "task": {"handler": "noop"}})
        assert r.status_code == 201, r.text
        # No scheduler runs here: make its slot ten minutes old, as if none had for that long.
        with psycopg.connect(env["DATABASE_URL"], autocommit=True) as conn:
            conn.execute("UPDATE schedules SET next_fire_at = now() - interval '10 minutes'")
        page.set_default_timeout(ACTION_TIMEOUT_MS)
        page.goto(f"{url}/console/")
        expect(page.locator(".attention")).to_contain_text("schedule stuck has not fired")


def workflow_of(c: httpx.Client, body: dict[str, Any]) -> str:
    r = c.post("/api/v1/workflows", json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["workflow_id"])


def node_states(c: httpx.Client, workflow_id: str) -> dict[str, str]:
    wf = c.get(f"/api/v1/workflows/{workflow_id}").json()
    return {n["key"]: n["status"] for n in wf["nodes"]}


# A diamond that cannot finish: "album" also waits for "later", delayed by an hour.
DIAMOND = {"name": "album", "tasks": [
    {"key": "fetch", "name": "fetch", "handler": "demo"},
    {"key": "small", "name": "resize", "handler": "demo", "depends_on": ["fetch"]},
    {"key": "large", "name": "resize", "handler": "demo", "depends_on": ["fetch"]},
    {"key": "later", "name": "later", "handler": "demo", "type": "delayed",
     "delay_seconds": 3600},
    {"key": "album", "name": "album", "handler": "demo",
     "depends_on": ["small", "large", "later"]}]}


def test_a_workflow_is_listed_its_graph_drawn_by_state_and_it_is_cancelled(
        page: Page, console_env, start_daemon, screenshots: Path) -> None:
    operator = new_key(console_env, "all")
    with start_daemon(console_env) as url, api(url, operator) as c:
        wid = workflow_of(c, DIAMOND)
        wait_for(lambda: node_states(c, wid)["large"] == "completed"
                 and node_states(c, wid)["small"] == "completed", "the resizes to complete")
        sign_in(page, url, operator)
        page.click("nav >> text=Workflows")
        row = page.locator(f"tr[data-workflow='{wid}']")
        expect(row).to_contain_text("album")
        expect(row).to_contain_text("running")
        page.goto(f"{url}/console/workflows?state=succeeded")
        expect(page.locator(f"tr[data-workflow='{wid}']")).to_have_count(0)
        page.goto(f"{url}/console/workflows?state=running&name=album")
        shot(page, screenshots, "workflows")
        page.click(f"text={wid}")

        expect(page.locator("#workflow-state")).to_have_text("running")
        graph = page.locator("#workflow-graph")
        expect(graph.locator("a.node")).to_have_count(5)
        expect(graph.locator("path.edge")).to_have_count(5)
        for key, status in {"fetch": "completed", "small": "completed", "large": "completed",
                            "later": "queued", "album": "pending"}.items():
            node = graph.locator(f"a.node[data-key={key}]")
            expect(node).to_have_attribute("data-status", status)
            expect(node).to_have_class(re.compile(rf"\bnode {status}\b"))
        # Columns by depth: fetch and later are roots, album is past both resizes.
        x = {k: float(graph.locator(f"a.node[data-key={k}] rect").get_attribute("x") or -1)
             for k in ("fetch", "later", "small", "large", "album")}
        assert x["fetch"] == x["later"] < x["small"] == x["large"] < x["album"]
        expect(page.locator("#nodes tr[data-key=fetch]")).to_contain_text("1")
        expect(page.locator("#per-depth tbody tr")).to_have_count(3)
        shot(page, screenshots, "workflow")
        graph.locator("a.node[data-key=small]").click()
        expect(page.locator("#task-name")).to_have_text("resize")
        expect(page.locator("#task-workflow")).to_have_text(wid)
        page.go_back()

        page.click("#cancel-workflow")
        expect(page.locator("#workflow-state")).to_have_text("cancelled")
        expect(page.locator("#workflow-graph a.node[data-key=album]")).to_have_attribute(
            "data-status", "cancelled")
        expect(page.locator("#cancel-workflow")).to_have_count(0)
        assert c.get(f"/api/v1/workflows/{wid}").json()["state"] == "cancelled"
        key_id = c.get("/api/v1/keys").json()["keys"][0]["id"]
        cancels = c.get("/api/v1/audit", params={"action": "workflow_cancel"}).json()["entries"]
        assert [(e["actor"], e["detail"]["workflow_id"]) for e in cancels] == [
            (f"key:{key_id}", wid)]


def test_a_failed_workflow_is_resumed_from_its_page(
        page: Page, console_env, start_daemon, screenshots: Path) -> None:
    operator = new_key(console_env, "all")
    with start_daemon(console_env) as url, api(url, operator) as c:
        # demo fails an odd priority's first attempt; no retries: the workflow fails.
        wid = workflow_of(c, {"name": "nightly", "tasks": [
            {"key": "extract", "name": "extract", "handler": "demo", "priority": 1,
             "max_retries": 0},
            {"key": "load", "name": "load", "handler": "demo", "depends_on": ["extract"]}]})
        wait_for(lambda: c.get(f"/api/v1/workflows/{wid}").json()["state"] == "failed",
                 "the workflow to fail")
        sign_in(page, url, operator)
        page.goto(f"{url}/console/workflows/{wid}")
        expect(page.locator("#workflow-state")).to_have_text("failed")
        graph = page.locator("#workflow-graph")
        expect(graph.locator("a.node[data-key=extract]")).to_have_attribute("data-status",
                                                                            "failed")
        expect(graph.locator("a.node[data-key=load]")).to_have_attribute("data-status",
                                                                         "cancelled")
        expect(page.locator("#nodes tr[data-key=extract]")).to_contain_text("odd priority")
        shot(page, screenshots, "workflow-failed")
        page.click("#resume-workflow")
        wait_for(lambda: c.get(f"/api/v1/workflows/{wid}").json()["state"] == "succeeded",
                 "the resumed workflow to succeed")
        page.reload()
        expect(page.locator("#workflow-state")).to_have_text("succeeded")
        expect(graph.locator("a.node.completed")).to_have_count(2)
        expect(page.locator("#nodes tr[data-key=extract] td").nth(4)).to_have_text("2")
        expect(page.locator("#resume-workflow")).to_have_count(0)
        resumes = c.get("/api/v1/audit", params={"action": "workflow_resume"}).json()["entries"]
        assert len(resumes) == 1 and resumes[0]["actor"].startswith("key:")


def test_a_workflow_reader_sees_no_buttons_and_its_forged_posts_are_refused(
        page: Page, console_env, start_daemon) -> None:
    operator = new_key(console_env, "all")
    reader = new_key(console_env, "workflows:read")
    with start_daemon(console_env) as url, api(url, operator) as c:
        wid = workflow_of(c, DIAMOND)
        sign_in(page, url, reader)
        expect(page.locator("nav")).to_contain_text("Workflows")
        page.goto(f"{url}/console/workflows/{wid}")
        expect(page.locator("#workflow-state")).to_have_text("running")
        expect(page.locator("#workflow-graph a.node")).to_have_count(5)
        expect(page.locator("#cancel-workflow")).to_have_count(0)
        csrf = page.locator("input[name=csrf]").first.get_attribute("value")
        for action in ("cancel", "resume"):
            refused = page.request.post(f"{url}/console/workflows/{wid}/{action}",
                                        form={"csrf": csrf or ""}, max_redirects=0)
            assert refused.status == 403, (action, refused.status)
        assert c.get(f"/api/v1/workflows/{wid}").json()["state"] == "running"

    no_workflows = new_key(console_env, "tasks:read")
    page.context.clear_cookies()
    with start_daemon(console_env) as url:
        sign_in(page, url, no_workflows)
        expect(page.locator("nav")).not_to_contain_text("Workflows")
        response = page.goto(f"{url}/console/workflows")
        assert response is not None and response.status == 403


def test_another_tenants_workflow_is_not_found(page: Page, console_env,
                                               start_daemon) -> None:
    operator = new_key(console_env, "all")
    acme = new_key(console_env, "all", tenant="acme")
    with start_daemon(console_env) as url, api(url, operator) as c, api(url, acme) as a:
        theirs = workflow_of(c, {"name": "operators-flow", "tasks": [
            {"key": "a", "name": "a", "handler": "demo"}]})
        mine = workflow_of(a, {"name": "acme-flow", "tasks": [
            {"key": "a", "name": "a", "handler": "demo"}]})
        sign_in(page, url, acme)
        page.goto(f"{url}/console/workflows")
        expect(page.locator("#workflows")).to_contain_text("acme-flow")
        expect(page.locator("#workflows")).not_to_contain_text("operators-flow")
        response = page.goto(f"{url}/console/workflows/{theirs}")
        assert response is not None and response.status == 404
        csrf = page.locator("input[name=csrf]").first.get_attribute("value")
        refused = page.request.post(f"{url}/console/workflows/{theirs}/cancel",
                                    form={"csrf": csrf or ""}, max_redirects=0)
        assert refused.status == 404
        response = page.goto(f"{url}/console/workflows/{mine}")
        assert response is not None and response.status == 200
        assert c.get(f"/api/v1/workflows/{theirs}").json()["state"] != "cancelled"


def test_a_large_workflow_is_counted_per_depth_not_drawn(
        page: Page, console_env, start_daemon, screenshots: Path) -> None:
    operator = new_key(console_env, "all")
    parts = 350
    with start_daemon(console_env) as url, api(url, operator) as c:
        # Delayed by an hour: nothing runs, the page reads a graph that holds still.
        wid = workflow_of(c, {"name": "fan", "tasks": [
            {"key": "root", "name": "root", "handler": "demo", "type": "delayed",
             "delay_seconds": 3600},
            *({"key": f"part-{i:03}", "name": "part", "handler": "demo",
               "depends_on": ["root"]} for i in range(parts)),
            {"key": "zz-last", "name": "last", "handler": "demo",
             "depends_on": [f"part-{i:03}" for i in range(parts)]}]})
        sign_in(page, url, operator)
        page.goto(f"{url}/console/workflows/{wid}")
        expect(page.locator("#graph-not-drawn")).to_contain_text("352 nodes")
        expect(page.locator("#workflow-graph")).to_have_count(0)
        depth_rows = page.locator("#per-depth tbody tr")
        expect(depth_rows).to_have_count(3)
        expect(depth_rows.nth(1)).to_contain_text(f"{parts} pending")
        expect(page.locator("#nodes tbody tr")).to_have_count(100)
        expect(page.locator("#node-range")).to_contain_text("Nodes 1 to 100 of 352")
        shot(page, screenshots, "workflow-large")
        for _ in range(3):
            page.click("#next-nodes")
        expect(page.locator("#node-range")).to_contain_text("Nodes 301 to 352 of 352")
        expect(page.locator("#nodes tr[data-key=zz-last]")).to_contain_text("pending")
        expect(page.locator("#next-nodes")).to_have_count(0)
