"""distasks.daemon.health: which component loops are alive, judged on a fake clock."""

from __future__ import annotations

from distasks.daemon.health import Health


class FakeClock:
    """Seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def health_with_clock() -> tuple[Health, FakeClock]:
    clock = FakeClock()
    return Health(clock=clock), clock


def test_nothing_expected_is_all_alive():
    health, _ = health_with_clock()

    assert health.status() == {}
    assert health.all_alive()


def test_an_expected_component_is_down_until_its_first_beat():
    health, _ = health_with_clock()
    health.expect("mover", allowance_s=30)

    assert health.status() == {"mover": False}
    assert not health.all_alive()

    health.beat("mover")

    assert health.status() == {"mover": True}
    assert health.all_alive()


def test_alive_up_to_the_allowance_and_down_after_it():
    health, clock = health_with_clock()
    health.expect("reaper", allowance_s=30)
    health.beat("reaper")

    clock.now += 30
    assert health.status() == {"reaper": True}

    clock.now += 0.001
    assert health.status() == {"reaper": False}

    health.beat("reaper")
    assert health.status() == {"reaper": True}


def test_each_component_is_judged_on_its_own_allowance():
    health, clock = health_with_clock()
    health.expect("heartbeat", allowance_s=15)
    health.expect("reconciler", allowance_s=120)
    health.beat("heartbeat")
    health.beat("reconciler")

    clock.now += 60

    assert health.status() == {"heartbeat": False, "reconciler": True}
    assert not health.all_alive()


def test_a_beat_from_an_unexpected_component_registers_nothing():
    health, _ = health_with_clock()

    health.beat("fetch:ghost")

    assert health.status() == {}


def test_a_forgotten_component_is_no_longer_reported_even_if_it_beats_again():
    health, clock = health_with_clock()
    health.expect("fetch:old", allowance_s=30)
    health.expect("fetch:default", allowance_s=30)
    health.beat("fetch:default")
    assert not health.all_alive()  # fetch:old never beat

    health.forget("fetch:old")
    health.beat("fetch:old")  # a fetcher still winding down
    health.forget("fetch:never-expected")

    assert health.status() == {"fetch:default": True}
    assert health.all_alive()
    clock.now += 31
    assert health.status() == {"fetch:default": False}


def test_expecting_again_changes_the_allowance_and_keeps_the_last_beat():
    health, clock = health_with_clock()
    health.expect("control", allowance_s=10)
    health.beat("control")
    clock.now += 20
    assert health.status() == {"control": False}

    health.expect("control", allowance_s=60)

    assert health.status() == {"control": True}


def test_a_forgotten_then_expected_again_component_starts_down():
    health, _ = health_with_clock()
    health.expect("fetch:extra", allowance_s=30)
    health.beat("fetch:extra")
    health.forget("fetch:extra")

    health.expect("fetch:extra", allowance_s=30)

    assert health.status() == {"fetch:extra": False}


def test_status_is_sorted_by_name():
    health, _ = health_with_clock()
    for name in ("reaper", "completer", "fetch:b", "fetch:a", "mover"):
        health.expect(name, allowance_s=30)
        health.beat(name)

    assert list(health.status()) == ["completer", "fetch:a", "fetch:b", "mover", "reaper"]
