"""`[scheduler]` and `[[schedules]]` in the config file: checked at load, naming the key."""

from __future__ import annotations

import pytest

from distasks.config import load
from distasks.domain.errors import ConfigError

GOOD = """
[[schedules]]
name = "nightly"
cron = "30 2 * * *"
timezone = "Europe/Berlin"
start_at = 2030-01-01T00:00:00Z
[schedules.task]
handler = "demo"
payload = { a = 1 }

[[schedules]]
tenant = "acme"
name = "nightly"
cron = "*/10 * * * * *"
catch_up = "all"
catch_up_max = 5
jitter_seconds = 3
"""


def load_text(tmp_path, text: str):
    path = tmp_path / "distasks.toml"
    path.write_text(text)
    return load(path, env={})


def test_schedules_are_read_with_their_tenant(tmp_path):
    config = load_text(tmp_path, GOOD)
    [nightly, acme] = config.schedules
    assert (nightly.tenant, nightly.definition.timezone) == ("default", "Europe/Berlin")
    assert nightly.definition.task.payload == {"a": 1}
    assert nightly.definition.start_at is not None
    assert (acme.tenant, acme.definition.catch_up, acme.definition.catch_up_max) == (
        "acme", "all", 5)


@pytest.mark.parametrize(("table", "key"), [
    ('name = "x"\ncron = "61 * * * *"', "schedules[0].cron"),
    ('name = "x"\ncron = "0 0 30 2 *"', "schedules[0].cron"),
    ('name = "x"\ncron = "* * * * *"\ntimezone = "Nowhere/At_All"', "schedules[0].timezone"),
    ('name = "x"\ncron = "* * * * *"\ncatch_up = "sometimes"', "schedules[0].catch_up"),
    ('name = "x"\ncron = "* * * * *"\nevery = 5', "schedules[0].every"),
    ('cron = "* * * * *"', "schedules[0].name"),
    ('name = "x"\ncron = "* * * * *"\ntenant = "Not A Tenant"', "schedules[0].tenant"),
    ('name = "x"\ncron = "* * * * *"\ntimezone = "localtime"', "schedules[0].timezone"),
    ('name = "x"\ncron = "* * * * *"\nstart_at = 2030-01-02T00:00:00Z\n'
     'end_at = 2030-01-01T00:00:00Z', "schedules[0].end_at"),
])
def test_a_bad_schedule_stops_the_load_naming_its_key(tmp_path, table, key):
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, f"[[schedules]]\n{table}\n")
    assert caught.value.key == key


def test_a_name_given_twice_in_one_tenant_is_refused(tmp_path):
    twice = '[[schedules]]\nname = "x"\ncron = "* * * * *"\n' * 2
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, twice)
    assert caught.value.key == "schedules[1].name"


def test_scheduler_settings_are_checked(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, "[scheduler]\ninterval_s = 0\n")
    assert caught.value.key == "scheduler.interval_s"
    config = load(None, env={"DISTASKS_SCHEDULER_ENABLED": "false"})
    assert config.scheduler.enabled is False
