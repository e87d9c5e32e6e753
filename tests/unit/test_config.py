"""distasks.config: defaults, the TOML file, environment overrides, validation, summary.

Every `load` call passes `env` explicitly, so the tests never see the real environment.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from distasks import cli
from distasks.config import LEGACY_ENV, Config, load
from distasks.domain.errors import ConfigError

SHIPPED_CONFIG = Path(__file__).resolve().parents[2] / "config" / "distasks.toml"


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "distasks.toml"
    path.write_text(text)
    return path


# --- defaults and the file -------------------------------------------------------------


def test_no_file_and_no_env_gives_the_documented_defaults():
    config = load(None, env={})

    assert config == Config()
    assert config.http.port == 8080
    assert config.worker.queues == ("default",)
    assert config.worker.concurrency == 1
    assert config.worker.default_handler == "demo"
    assert config.retry.max_retries == 3
    assert config.retry.base_s == 2.0
    assert config.retry.jitter == 0.2


def test_shipped_config_file_states_exactly_the_defaults_but_anonymous_loopback_access():
    """The one deliberate difference: the shipped file is for development (`make run`,
    the README's curl examples), so it lets local calls in without a key; the built-in
    default, and the systemd unit, need a key for every call."""
    shipped = load(SHIPPED_CONFIG, env={})
    assert shipped.auth.anonymous == "loopback" and Config().auth.anonymous == "none"
    assert replace(shipped, auth=replace(shipped.auth, anonymous="none")) == Config()


def test_anonymous_access_is_refused_on_an_address_reachable_from_the_network(tmp_path):
    with pytest.raises(ConfigError) as e:
        load(SHIPPED_CONFIG, env={"DISTASKS_HTTP_HOST": "0.0.0.0"})
    assert e.value.key == "auth.anonymous"
    assert load(SHIPPED_CONFIG, env={"DISTASKS_HTTP_HOST": "0.0.0.0",
                                     "DISTASKS_AUTH_ANONYMOUS": "none"}).http.host == "0.0.0.0"


def test_file_values_replace_defaults_and_keep_the_rest(tmp_path):
    path = write_toml(tmp_path, """
        [http]
        port = 9000
        [worker]
        queues = ["emails", "reports"]
        lease_s = 30
        [retry]
        base_s = 1
    """)

    config = load(path, env={})

    assert config.http.port == 9000
    assert config.http.host == "127.0.0.1"
    assert config.worker.queues == ("emails", "reports")
    assert config.worker.lease_s == 30.0
    assert config.retry.base_s == 1.0
    assert isinstance(config.retry.base_s, float)
    assert config.database == Config().database


# --- environment overrides -------------------------------------------------------------


def test_distasks_section_key_variables_override_the_file(tmp_path):
    path = write_toml(tmp_path, "[worker]\nlease_s = 30.0\nqueues = [\"a\"]\n")

    config = load(path, env={
        "DISTASKS_WORKER_LEASE_S": "45.5",
        "DISTASKS_WORKER_QUEUES": "x,y",
        "DISTASKS_HTTP_MAX_PAYLOAD_BYTES": "2048",
        "DISTASKS_REDIS_PREFIX": "tenant-a",
    })

    assert config.worker.lease_s == 45.5
    assert config.worker.queues == ("x", "y")
    assert config.http.max_payload_bytes == 2048
    assert config.redis.prefix == "tenant-a"


def test_legacy_variables_win_over_the_file(tmp_path):
    path = write_toml(tmp_path, """
        [http]
        port = 9000
        [database]
        url = "postgresql://file@db/file"
        [redis]
        url = "redis://file:6379/0"
        [worker]
        queues = ["file"]
        concurrency = 8
    """)

    config = load(path, env={
        "HTTP_PORT": "8181",
        "DATABASE_URL": "postgresql://app@db.example:5432/tasks",
        "REDIS_URL": "redis://cache.example:6379/5",
        "QUEUE_NAMES": "a,b",
        "WORKER_CONCURRENCY": "4",
    })

    assert config.http.port == 8181
    assert config.database.url == "postgresql://app@db.example:5432/tasks"
    assert config.redis.url == "redis://cache.example:6379/5"
    assert config.worker.queues == ("a", "b")
    assert config.worker.concurrency == 4


def test_legacy_variable_wins_over_its_distasks_twin():
    config = load(None, env={"DISTASKS_HTTP_PORT": "9000", "HTTP_PORT": "8181"})

    assert config.http.port == 8181


def test_every_legacy_variable_maps_to_an_existing_key():
    config = Config()
    for section, key in LEGACY_ENV.values():
        assert hasattr(getattr(config, section), key)


@pytest.mark.parametrize("url", [
    "host=127.0.0.1 port=5432 user=postgres dbname=distasks",
    "postgresql://postgres:secret@127.0.0.1:5432/distasks?sslmode=disable",
])
def test_database_url_passes_through_unchanged_in_keyword_and_url_form(url):
    assert load(None, env={"DATABASE_URL": url}).database.url == url


def test_a_redis_cluster_is_named_by_the_flag_or_the_url():
    by_flag = load(None, env={"REDIS_URL": "redis://node:7000",
                              "DISTASKS_REDIS_CLUSTER": "true"}).redis
    by_url = load(None, env={"REDIS_URL": "redis+cluster://node:7000/0"}).redis
    assert by_flag.cluster and by_flag.url == "redis://node:7000"
    assert not by_url.cluster and by_url.url == "redis+cluster://node:7000/0"


def test_redis_url_keeps_its_db_number():
    assert load(None, env={"REDIS_URL": "redis://host:6379/5"}).redis.url == "redis://host:6379/5"


def test_legacy_queue_names_split_on_commas_and_trim_spaces():
    assert load(None, env={"QUEUE_NAMES": "a, b,c"}).worker.queues == ("a", "b", "c")


def test_legacy_queue_names_drop_empty_parts():
    assert load(None, env={"QUEUE_NAMES": " a,,b , "}).worker.queues == ("a", "b")


def test_environment_value_of_the_wrong_type_names_the_variable():
    with pytest.raises(ConfigError, match="HTTP_PORT") as info:
        load(None, env={"HTTP_PORT": "eighty"})

    assert "eighty" in str(info.value)


# --- validation --------------------------------------------------------------------------

# Each override alone makes the config invalid; the error must name this key.
INVALID_OVERRIDES = [
    ({"DISTASKS_HTTP_PORT": "0"}, "http.port"),
    ({"HTTP_PORT": "65536"}, "http.port"),
    ({"DISTASKS_HTTP_INSTANCE_PORT": "-1"}, "http.instance_port"),
    ({"DISTASKS_HTTP_INSTANCE_PORT": "8080"}, "http.instance_port"),
    ({"DISTASKS_HTTP_MAX_PAYLOAD_BYTES": "0"}, "http.max_payload_bytes"),
    ({"DATABASE_URL": ""}, "database.url"),
    ({"DISTASKS_DATABASE_POOL_MIN": "0"}, "database.pool_min"),
    ({"DISTASKS_DATABASE_POOL_MIN": "11"}, "database.pool_min"),
    ({"REDIS_URL": "localhost:6379"}, "redis.url"),
    ({"REDIS_URL": "http://localhost:6379/0"}, "redis.url"),
    ({"REDIS_URL": "redis+cluster://host:6379/5"}, "redis.url"),
    ({"REDIS_URL": "unix:///run/redis.sock", "DISTASKS_REDIS_CLUSTER": "true"}, "redis.url"),
    ({"DISTASKS_REDIS_PREFIX": ""}, "redis.prefix"),
    ({"DISTASKS_REDIS_PREFIX": "a{b}"}, "redis.prefix"),
    ({"DISTASKS_REDIS_PREFIX": "x" * 65}, "redis.prefix"),
    ({"DISTASKS_REDIS_MAX_CONNECTIONS": "3"}, "redis.max_connections"),
    ({"DISTASKS_HTTP_MAX_CONNECTIONS": "0"}, "http.max_connections"),
    ({"DISTASKS_HTTP_KEEP_ALIVE_S": "0"}, "http.keep_alive_s"),
    ({"DISTASKS_HTTP_KEEP_ALIVE_S": "nan"}, "http.keep_alive_s"),
    ({"DISTASKS_HTTP_UNAUTHENTICATED_KEEP_ALIVE_S": "0"}, "http.unauthenticated_keep_alive_s"),
    ({"DISTASKS_HTTP_HEADER_TIMEOUT_S": "-1"}, "http.header_timeout_s"),
    ({"DISTASKS_HTTP_BODY_TIMEOUT_S": "0"}, "http.body_timeout_s"),
    ({"DISTASKS_HTTP_MAX_RESPONSE_BYTES": "1000"}, "http.max_response_bytes"),
    ({"DISTASKS_HTTP_HEAVY_READS": "0"}, "http.heavy_reads"),
    ({"QUEUE_NAMES": ""}, "worker.queues"),
    ({"QUEUE_NAMES": "ok,Bad/name"}, "worker.queues"),
    ({"QUEUE_NAMES": "ok,default/name"}, "worker.queues"),
    ({"QUEUE_NAMES": "ok,a/b/c"}, "worker.queues"),
    ({"QUEUE_NAMES": "q" * 65}, "worker.queues"),
    ({"WORKER_CONCURRENCY": "0"}, "worker.concurrency"),
    ({"DISTASKS_WORKER_DEFAULT_HANDLER": ""}, "worker.default_handler"),
    ({"DISTASKS_WORKER_TASK_TIMEOUT_S": "0"}, "worker.task_timeout_s"),
    ({"DISTASKS_WORKER_GRACE_PERIOD_S": "-1"}, "worker.grace_period_s"),
    ({"DISTASKS_WORKER_LEASE_S": "0.5"}, "worker.lease_s"),
    ({"DISTASKS_WORKER_CLAIM_BATCH": "0"}, "worker.claim_batch"),
    ({"DISTASKS_WORKER_FETCHERS_PER_QUEUE": "0"}, "worker.fetchers_per_queue"),
    ({"DISTASKS_WORKER_SYNC_THREADS": "0"}, "worker.sync_threads"),
    ({"DISTASKS_WORKER_QUEUE_ORDER": "random"}, "worker.queue_order"),
    ({"DISTASKS_WORKER_QUEUE_WEIGHTS": "a=0"}, "worker.queue_weights.a"),
    ({"DISTASKS_WORKER_QUEUE_WEIGHTS": "a"}, "DISTASKS_WORKER_QUEUE_WEIGHTS"),
    ({"DISTASKS_WORKER_QUEUE_WEIGHTS": "a=x"}, "DISTASKS_WORKER_QUEUE_WEIGHTS"),
    ({"DISTASKS_RETRY_MAX_RETRIES": "-1"}, "retry.max_retries"),
    ({"DISTASKS_RETRY_BASE_S": "0"}, "retry.base_s"),
    ({"DISTASKS_RETRY_BASE_S": "nan"}, "retry.base_s"),
    ({"DISTASKS_RETRY_CAP_S": "1"}, "retry.cap_s"),
    ({"DISTASKS_RETRY_JITTER": "1"}, "retry.jitter"),
    ({"DISTASKS_RETRY_JITTER": "-0.1"}, "retry.jitter"),
    ({"DISTASKS_MOVER_INTERVAL_S": "0"}, "mover.interval_s"),
    ({"DISTASKS_MOVER_BATCH": "0"}, "mover.batch"),
    ({"DISTASKS_LOG_LEVEL": "LOUD"}, "log.level"),
    ({"DISTASKS_LOG_FORMAT": "xml"}, "log.format"),
]


@pytest.mark.parametrize(("override", "key"), INVALID_OVERRIDES,
                         ids=[f"{next(iter(o))}={next(iter(o.values()))[:12]!r}"
                              for o, _ in INVALID_OVERRIDES])
def test_invalid_value_raises_config_error_naming_the_key(override, key):
    with pytest.raises(ConfigError) as info:
        load(None, env=override)

    assert info.value.key == key
    assert key in str(info.value)


# A value of the wrong type in the file names the key, as section.key.
WRONG_TYPES_IN_FILE = [
    ('[http]\nport = "8080"', "http.port"),
    ("[http]\nport = 80.5", "http.port"),
    ("[http]\nport = true", "http.port"),
    ('[worker]\nqueues = "default"', "worker.queues"),
    ("[worker]\nqueues = [1, 2]", "worker.queues"),
    ("[worker]\nqueue_weights = [1, 2]", "worker.queue_weights"),
    ("[worker]\nqueue_weights = {a = 1.5}", "worker.queue_weights.a"),
    ("[worker]\nqueue_weights = {a = 1001}", "worker.queue_weights.a"),
    ('[retry]\nbase_s = "2"', "retry.base_s"),
    ("[database]\nurl = 5", "database.url"),
    ("http = 5", "http"),
]


@pytest.mark.parametrize(("toml", "key"), WRONG_TYPES_IN_FILE)
def test_wrong_type_in_file_raises_config_error_naming_the_key(tmp_path, toml, key):
    with pytest.raises(ConfigError) as info:
        load(write_toml(tmp_path, toml), env={})

    assert info.value.key == key


def test_unknown_section_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="bogus") as info:
        load(write_toml(tmp_path, "[bogus]\nx = 1\n"), env={})

    assert info.value.key == "bogus"


def test_unknown_key_in_a_known_section_is_refused(tmp_path):
    with pytest.raises(ConfigError) as info:
        load(write_toml(tmp_path, "[worker]\nmax_retry = 3\n"), env={})

    assert info.value.key == "worker.max_retry"


def test_top_level_key_outside_any_section_is_refused(tmp_path):
    with pytest.raises(ConfigError) as info:
        load(write_toml(tmp_path, "port = 8080\n"), env={})

    assert info.value.key == "port"


def test_malformed_toml_names_the_config_flag(tmp_path):
    with pytest.raises(ConfigError) as info:
        load(write_toml(tmp_path, "[http\nport = 1\n"), env={})

    assert info.value.key == "--config"
    assert "not valid TOML" in str(info.value)


def test_missing_file_names_the_config_flag(tmp_path):
    with pytest.raises(ConfigError) as info:
        load(tmp_path / "absent.toml", env={})

    assert info.value.key == "--config"
    assert "absent.toml" in str(info.value)


def test_config_path_that_is_a_directory_names_the_config_flag(tmp_path):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, env={})

    assert info.value.key == "--config"


def test_config_file_that_is_not_utf8_names_the_config_flag(tmp_path):
    path = tmp_path / "distasks.toml"
    path.write_bytes(b"[http]\nhost = \"\xff\xfe\"\n")

    with pytest.raises(ConfigError) as info:
        load(path, env={})

    assert info.value.key == "--config"


# --- summary -----------------------------------------------------------------------------


def test_summary_lists_the_queues_in_brackets():
    assert "queues=[default]" in Config().summary()
    assert "queues=[a,b]" in load(None, env={"QUEUE_NAMES": "a,b"}).summary()


@pytest.mark.parametrize("url", [
    "postgresql://app:s3cr3t-pw@db.example:5432/tasks",
    "host=db.example user=app password=s3cr3t-pw dbname=tasks",
    "host=db.example user=app password = s3cr3t-pw dbname=tasks",
])
def test_summary_hides_the_database_password(url):
    summary = load(None, env={"DATABASE_URL": url}).summary()

    assert "s3cr3t-pw" not in summary
    assert "db.example" in summary


def test_summary_hides_a_quoted_database_password_with_a_space():
    url = "host=db.example user=app password='open sesame' dbname=tasks"

    summary = load(None, env={"DATABASE_URL": url}).summary()

    assert "open" not in summary
    assert "sesame" not in summary


@pytest.mark.parametrize("url", [
    "redis://:s3cr3t-pw@cache.example:6379/5",
    "rediss://default:s3cr3t-pw@cache.example:6380/0",
])
def test_summary_hides_the_redis_password(url):
    summary = load(None, env={"REDIS_URL": url}).summary()

    assert "s3cr3t-pw" not in summary
    assert "cache.example" in summary


def test_summary_keeps_a_url_without_password_intact():
    summary = Config().summary()

    assert "database=postgresql://postgres@127.0.0.1:5432/distasks" in summary
    assert "redis=redis://127.0.0.1:6379/0" in summary


# --- the check-config command ------------------------------------------------------------


@pytest.fixture
def clean_environ(monkeypatch):
    """cli.main reads os.environ: drop every variable that would override the file."""
    for name in list(os.environ):
        if name.startswith("DISTASKS_") or name in LEGACY_ENV:
            monkeypatch.delenv(name)


def test_check_config_with_an_invalid_file_exits_2_with_one_line_naming_the_key(
        tmp_path, capsys, clean_environ):
    path = write_toml(tmp_path, "[worker]\nconcurrency = 0\n")

    code = cli.main(["--config", str(path), "check-config"])

    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1
    assert "worker.concurrency" in err


def test_check_config_accepts_the_config_flag_after_the_subcommand(
        tmp_path, capsys, clean_environ):
    path = write_toml(tmp_path, "[http]\nport = 0\n")

    assert cli.main(["check-config", "--config", str(path)]) == 2
    assert "http.port" in capsys.readouterr().err


def test_check_config_with_the_shipped_file_exits_0_and_prints_the_summary(
        capsys, clean_environ):
    code = cli.main(["--config", str(SHIPPED_CONFIG), "check-config"])

    out, err = capsys.readouterr()
    assert code == 0
    assert err == ""
    assert "queues=[default]" in out
    assert "demo" in out


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://app:p@ss:w/rd@db.example:5432/x?sslmode=require",
     "postgresql://app:***@db.example:5432/x?sslmode=require"),
    ("redis://:s3cr@t@cache:6379/0", "redis://:***@cache:6379/0"),
    ("postgresql://app@db/x", "postgresql://app@db/x"),
    ("host=db user=app password='a b@c'", "host=db user=app password=***"),
])
def test_a_password_is_hidden_whole_whatever_it_holds(url, shown):
    """A password holding "@" was half shown in check-config and the start-up line."""
    from distasks.config import redact
    assert redact(url) == shown


def test_tenants_have_quotas_and_serve_queues_by_qualified_name(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text('[worker]\nqueues = ["default", "acme/emails"]\n'
                    '[tenants.acme]\ntasks_per_minute = 600\nmax_queued = 10\n')
    c = load(path, env={})
    assert c.worker.queues == ("default", "acme/emails")
    assert c.tenant("acme").tasks_per_minute == 600 and c.tenant("acme").max_queued == 10
    assert c.tenant("other").max_queued == 0
    for bad, key in (('[tenants.Acme]\nmax_queued = 1\n', "tenants.Acme"),
                     ('[tenants.acme]\nmax_queued = -1\n', "tenants.acme.max_queued"),
                     ('[tenants.acme]\nnope = 1\n', "tenants.acme.nope")):
        path.write_text(bad)
        with pytest.raises(ConfigError) as info:
            load(path, env={})
        assert info.value.key == key, bad


def test_a_reload_names_each_tenant_whose_quotas_changed():
    from distasks.config import TenantConfig  # noqa: PLC0415
    from distasks.daemon.supervisor import _differences  # noqa: PLC0415

    old = replace(Config(), tenants={"acme": TenantConfig(max_queued=5)})
    new = replace(Config(), tenants={"acme": TenantConfig(max_queued=6),
                                     "beta": TenantConfig()})
    assert _differences(old, new) == ["tenants.acme", "tenants.beta"]


def test_queue_order_and_weights_from_the_file_and_the_environment(tmp_path):
    path = write_toml(tmp_path, '[worker]\nqueues = ["critical", "default", "acme/low"]\n'
                                'queue_order = "weighted"\n'
                                'queue_weights = {critical = 6, default = 3}\n')
    from_file = load(path, env={}).worker
    from_env = load(path, env={"DISTASKS_WORKER_QUEUE_WEIGHTS": "critical=2, acme/low=5",
                               "DISTASKS_WORKER_QUEUE_ORDER": "strict"}).worker
    assert from_file.queue_order == "weighted"
    assert [from_file.queue_weights.weight(q) for q in from_file.queues] == [6, 3, 1]
    assert from_env.queue_order == "strict"
    assert [from_env.queue_weights.weight(q) for q in from_env.queues] == [2, 1, 5]
    assert hash(from_file) != hash(from_env)  # a config stays hashable


# --- [queues.<name>] ---------------------------------------------------------------------

def test_queue_limits_tables_name_operator_and_tenant_queues(tmp_path):
    path = write_toml(tmp_path, """
[queues.reports]
max_running = 3
max_starts_per_second = 2.5

[queues."acme/partner"]
max_running_per_key = 1
burst = 0
""")
    queues = load(path, env={}).queues
    assert queues["reports"].given() == {"max_running": 3, "max_starts_per_second": 2.5}
    assert queues["acme/partner"].given() == {"max_running_per_key": 1, "burst": None}


@pytest.mark.parametrize(("table", "key"), [
    ("[queues.reports]\nmax_running = 1.5", "queues.reports.max_running"),
    ("[queues.reports]\nmax_running = -1", "queues.reports.max_running"),
    ("[queues.reports]\nmax_running = true", "queues.reports.max_running"),
    ("[queues.reports]\nmax_starts_per_second = \"9\"", "queues.reports.max_starts_per_second"),
    ("[queues.reports]\nrate = 3", "queues.reports.rate"),
    ("[queues.\"bad name\"]\nmax_running = 1", "queues.bad name"),
    ("[queues.\"Acme/x\"]\nmax_running = 1", "queues.Acme/x"),
    ("queues = 3", "queues"),
])
def test_a_bad_queue_limit_is_refused_naming_its_key(tmp_path, table, key):
    with pytest.raises(ConfigError) as e:
        load(write_toml(tmp_path, table), env={})
    assert e.value.key == key


# --- [[outbox]] ------------------------------------------------------------------------


def test_outbox_tables_are_read_with_their_defaults(tmp_path):
    path = write_toml(tmp_path, '[[outbox]]\nname = "orders"\n'
                                'database_url = "postgresql://app@db/orders"\n'
                                '[[outbox]]\nname = "billing"\n'
                                'database_url = "postgresql://app@db/billing"\n'
                                'tenant = "acme"\nbatch = 500\npoll_interval_s = 0.5\n')

    sources = load(path, env={}).outbox

    assert [(s.name, s.tenant, s.batch, s.poll_interval_s) for s in sources] == [
        ("orders", "default", 100, 5.0), ("billing", "acme", 500, 0.5)]


@pytest.mark.parametrize(("text", "key"), [
    ('outbox = "x"\n', "outbox"),
    ('[outbox]\nname = "a"\n', "outbox"),
    ('[[outbox]]\ndatabase_url = "postgresql://h/d"\n', "outbox[0].name"),
    ('[[outbox]]\nname = "a/b"\ndatabase_url = "postgresql://h/d"\n', "outbox[0].name"),
    ('[[outbox]]\nname = "a"\n', "outbox[0].database_url"),
    ('[[outbox]]\nname = "a"\ndatabase_url = "postgresql://h/d"\ntenant = "Bad Tenant"\n',
     "outbox[0].tenant"),
    ('[[outbox]]\nname = "a"\ndatabase_url = "postgresql://h/d"\nbatch = 0\n',
     "outbox[0].batch"),
    ('[[outbox]]\nname = "a"\ndatabase_url = "postgresql://h/d"\npoll_interval_s = 0\n',
     "outbox[0].poll_interval_s"),
    ('[[outbox]]\nname = "a"\ndatabase_url = "postgresql://h/d"\nbatch = "10"\n',
     "outbox[0].batch"),
    ('[[outbox]]\nname = "a"\ndatabase_url = "postgresql://h/d"\nurl = "x"\n',
     "outbox[0].url"),
    ('[[outbox]]\nname = "a"\ndatabase_url = "postgresql://h/d"\n'
     '[[outbox]]\nname = "a"\ndatabase_url = "postgresql://h/e"\n', "outbox[1].name"),
    ('[[outbox]]\nname = "a"\ndatabase_url = "postgresql://h/d"\n'
     '[[outbox]]\nname = "b"\ndatabase_url = "postgresql://h/d"\n', "outbox[1].database_url"),
])
def test_a_wrong_outbox_table_is_refused_naming_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError) as e:
        load(write_toml(tmp_path, text), env={})
    assert e.value.key == key


def test_check_config_lists_the_outbox_sources_without_their_passwords(
        tmp_path, capsys, clean_environ):
    path = write_toml(tmp_path, '[[outbox]]\nname = "orders"\n'
                                'database_url = "postgresql://app:s3cret@db/orders"\n')

    assert cli.main(["--config", str(path), "check-config"]) == 0
    out = capsys.readouterr().out
    assert "outbox orders: postgresql://app:***@db/orders, tenant default" in out
    assert "s3cret" not in out


def test_retention_has_defaults_and_overrides_per_queue_and_tenant(tmp_path):
    from distasks.daemon.cleaner import DAY_S, Settings  # noqa: PLC0415

    c = load(None, env={})
    assert (c.retention.completed_days, c.retention.cancelled_days,
            c.retention.failed_days) == (7.0, 7.0, 30.0)
    path = write_toml(tmp_path, """
[retention]
failed_days = 0
archive_dir = "/var/lib/distasks/archive"

[queues.billing]
max_running = 2
retention_completed_days = 90

[tenants.acme]
retention_failed_days = 1.5
""")
    c = load(path, env={"DISTASKS_RETENTION_AUDIT_DAYS": "10"})
    assert c.retention.failed_days == 0.0 and c.retention.audit_days == 10.0
    # Not a limit: the PATCH the config applies leaves it out.
    assert c.queues["billing"].given() == {"max_running": 2}
    s = Settings.from_config(c)
    by_status = {r.status: r for r in s.tasks}
    assert by_status["completed"].queues == {"billing": 90 * DAY_S}
    assert by_status["failed"].tenants == {"acme": 1.5 * DAY_S}
    assert by_status["failed"].keep_s == 0.0 and by_status["failed"].shortest_s() == 1.5 * DAY_S
    assert s.archive_dir == "/var/lib/distasks/archive"


@pytest.mark.parametrize(("table", "key"), [
    ("[retention]\ncompleted_days = -1", "retention.completed_days"),
    ("[retention]\naudit_days = 99999", "retention.audit_days"),
    ("[retention]\nbatch = 0", "retention.batch"),
    ("[retention]\narchive_dir = \"relative\"", "retention.archive_dir"),
    ("[retention]\nnope = 1", "retention.nope"),
    ("[queues.q]\nretention_failed_days = -2", "queues.q.retention_failed_days"),
    ("[queues.q]\nretention_failed_days = \"7\"", "queues.q.retention_failed_days"),
    ("[tenants.acme]\nretention_completed_days = true", "tenants.acme.retention_completed_days"),
    ("[database]\npooler = \"pgpool\"", "database.pooler"),
])
def test_a_bad_retention_or_pooler_key_is_refused_naming_it(tmp_path, table, key):
    with pytest.raises(ConfigError) as info:
        load(write_toml(tmp_path, table), env={})
    assert info.value.key == key
