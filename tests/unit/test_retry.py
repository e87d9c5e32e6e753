"""distasks.domain.retry: exponential backoff with a cap and jitter, as a pure function."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from distasks.config import load
from distasks.domain.retry import RetryPolicy

SHIPPED_CONFIG = Path(__file__).resolve().parents[2] / "config" / "distasks.toml"


def test_delay_doubles_with_each_failure_without_jitter():
    policy = RetryPolicy(base_s=2.0, cap_s=1000.0, jitter=0.0)

    assert [policy.delay_s(n) for n in range(1, 6)] == [2.0, 4.0, 8.0, 16.0, 32.0]


def test_failures_below_one_get_the_base_delay():
    policy = RetryPolicy(base_s=2.0, cap_s=1000.0, jitter=0.0)

    assert policy.delay_s(0) == 2.0
    assert policy.delay_s(-3) == 2.0


def test_delay_stops_growing_at_the_cap():
    policy = RetryPolicy(base_s=2.0, cap_s=300.0, jitter=0.0)

    assert policy.delay_s(8) == 256.0
    assert policy.delay_s(9) == 300.0
    assert policy.delay_s(50) == 300.0


def test_delay_stays_at_the_cap_for_any_number_of_failures():
    policy = RetryPolicy(base_s=2.0, cap_s=300.0, jitter=0.0)

    assert policy.delay_s(5000) == 300.0


@pytest.mark.parametrize("failures", [1, 3, 9, 20])
def test_jitter_keeps_the_delay_within_plus_or_minus_its_fraction(failures):
    policy = RetryPolicy(base_s=2.0, cap_s=300.0, jitter=0.25)
    nominal = RetryPolicy(base_s=2.0, cap_s=300.0, jitter=0.0).delay_s(failures)
    rng = random.Random(1234)

    delays = [policy.delay_s(failures, rng) for _ in range(2000)]

    assert all(nominal * 0.75 <= d <= nominal * 1.25 for d in delays)
    # It really spreads: both sides of the nominal delay are used, over most of the band.
    assert min(delays) < nominal * 0.8
    assert max(delays) > nominal * 1.2


def test_jitter_is_reproducible_with_a_seeded_rng():
    policy = RetryPolicy(base_s=2.0, cap_s=300.0, jitter=0.2)

    first = [policy.delay_s(3, random.Random(7)) for _ in range(3)]

    assert first[0] == first[1] == first[2]
    assert first[0] != 8.0


def test_zero_jitter_does_not_consume_randomness():
    policy = RetryPolicy(base_s=2.0, cap_s=300.0, jitter=0.0)
    rng = random.Random(42)
    state = rng.getstate()

    policy.delay_s(3, rng)

    assert rng.getstate() == state


def test_next_retry_at_ms_adds_the_delay_in_whole_milliseconds_to_now():
    policy = RetryPolicy(base_s=0.25, cap_s=10.0, jitter=0.0)
    now_ms = 1_700_000_000_123

    assert policy.next_retry_at_ms(1, now_ms) == now_ms + 250
    assert policy.next_retry_at_ms(3, now_ms) == now_ms + 1000
    assert isinstance(policy.next_retry_at_ms(1, now_ms), int)


def test_next_retry_at_ms_uses_the_same_jittered_delay_as_delay_s():
    policy = RetryPolicy(base_s=2.0, cap_s=300.0, jitter=0.2)
    now_ms = 5_000

    due_ms = policy.next_retry_at_ms(2, now_ms, random.Random(99))

    assert due_ms == now_ms + round(policy.delay_s(2, random.Random(99)) * 1000)


def test_shipped_defaults_put_the_first_retry_between_1_6_and_2_4_seconds():
    retry = load(SHIPPED_CONFIG, env={}).retry
    assert (retry.base_s, retry.jitter) == (2.0, 0.2)
    policy = RetryPolicy(base_s=retry.base_s, cap_s=retry.cap_s, jitter=retry.jitter)
    rng = random.Random(2024)

    delays = [policy.delay_s(1, rng) for _ in range(1000)]

    assert all(1.6 <= d <= 2.4 for d in delays)
