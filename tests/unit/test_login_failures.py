"""Login failures as audit rows: the first of an address's window at once, the rest as
one count when the window ends, and a bound on addresses and rows whatever the flood."""

from __future__ import annotations

from distasks.access.login_failures import LoginFailures


def counting(max_addresses: int = 10) -> tuple[LoginFailures, list[float]]:
    now = [1000.0]
    return LoginFailures(window_s=60, max_addresses=max_addresses, clock=lambda: now[0],
                         wall_clock=lambda: 1_700_000_000.0), now


def rows(failures: LoginFailures) -> list[tuple[str, str | None, dict]]:
    return [(e.action, e.actor.address, e.detail) for e in failures.take_due()]


def test_the_first_failure_is_due_at_once_and_the_rest_as_one_count_after_the_window():
    failures, now = counting()
    failures.note("203.0.113.9", reason="unknown")
    assert rows(failures) == [("login_failed", "203.0.113.9",
                               {"reason": "unknown", "window_s": 60})]
    for _ in range(500):
        failures.note("203.0.113.9", reason="unknown")
    # A tenant's key opens that tenant's own window: it cannot draw the flood of
    # unknown keys from its address into its tenant's log, away from the operator's.
    failures.note("203.0.113.9", reason="revoked", key_id="k1", tenant="acme")
    [(action, address, detail)] = rows(failures)
    assert (action, detail["key_id"]) == ("login_failed", "k1")
    now[0] += 59
    assert rows(failures) == []
    assert failures.next_due_in() == 1
    now[0] += 1
    [summary] = failures.take_due()
    assert (summary.action, summary.actor.tenant, summary.detail) == (
        "login_failures", "default", {"count": 500, "reasons": ["unknown"]})
    # The window closed: the next failure is recorded at once again.
    failures.note("203.0.113.9", reason="expired", key_id="k2", tenant="acme")
    [event] = failures.take_due()
    assert (event.action, event.actor.id, event.actor.tenant, event.detail["key_id"]) == (
        "login_failed", "system", "acme", "k2")


def test_a_window_with_one_failure_writes_no_summary():
    failures, now = counting()
    failures.note("198.51.100.1", reason="unknown")
    assert len(rows(failures)) == 1
    now[0] += 61
    assert rows(failures) == []


def test_addresses_beyond_the_bound_are_counted_together_without_a_row_each():
    failures, now = counting(max_addresses=3)
    for i in range(1000):
        failures.note(f"2001:db8::{i}", reason="unknown")
    assert [a for _, a, _ in rows(failures)] == ["2001:db8::0", "2001:db8::1", "2001:db8::2"]
    now[0] += 60
    assert rows(failures) == [("login_failures", None, {"count": 997, "reasons": ["unknown"]})]


def test_rows_not_written_are_kept_for_the_next_try():
    failures, _ = counting()
    failures.note("192.0.2.1", reason="unknown")
    due = failures.take_due()
    failures.requeue(due)
    assert failures.take_due() == due


def test_closing_closes_every_window():
    failures, _ = counting()
    failures.note("192.0.2.1", reason="unknown")
    failures.note("192.0.2.1", reason="unknown")
    failures.take_due()
    assert rows_closing(failures) == [("login_failures", "192.0.2.1",
                                       {"count": 1, "reasons": ["unknown"]})]


def rows_closing(failures: LoginFailures) -> list[tuple[str, str | None, dict]]:
    return [(e.action, e.actor.address, e.detail) for e in failures.take_due(closing=True)]
