"""Prometheus metrics: one registry per daemon, named as deploy/prometheus/alerts.yml
expects. Components are handed this object and count what they do; the reporter sets
the gauges that need a look at Redis."""

from __future__ import annotations

from collections.abc import Callable, Collection

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from distasks.domain.tenancy import DEFAULT_TENANT

# Seconds; from a no-op handler to a long job.
DURATION_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
# Seconds; enqueue to start is milliseconds when healthy, minutes when backlogged.
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
                     60, 300)


# The label of everything a bounded label does not name: queues this daemon does not
# serve, HTTP methods no route has.
OTHER = "other"
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Metrics:
    """`labelled_queues` bounds the queue label: a client can name any queue (a create, a
    cancel), and a series per name would grow without end; queues outside it are
    counted as "other". None: every queue (tests). `labelled_tenants` does the same for
    the tenant label: the tenants the config names (architecture §8)."""

    #: the label of the schedules beyond the cap (a name cannot hold spaces)
    OTHER_SCHEDULE = "other schedules"

    def __init__(self, labelled_queues: Callable[[], Collection[str]] | None = None, *,
                 labelled_tenants: Collection[str] = (), max_schedule_series: int = 100) -> None:
        self._labelled_queues = labelled_queues
        self._labelled_tenants = frozenset({DEFAULT_TENANT, *labelled_tenants})
        self._max_schedule_series = max_schedule_series
        self._labelled_schedules: set[str] = set()
        r = self.registry = CollectorRegistry(auto_describe=True)
        by_task = ["queue", "handler"]
        self.created = Counter("distasks_tasks_created", "Tasks created", by_task, registry=r)
        self.completed = Counter("distasks_tasks_completed", "Tasks completed", by_task,
                                 registry=r)
        self.failed = Counter("distasks_tasks_failed",
                              "Tasks failed for good (dead-lettered)", by_task, registry=r)
        self.retries = Counter("distasks_task_retries", "Failed attempts that were retried",
                               by_task, registry=r)
        self.cancelled = Counter("distasks_tasks_cancelled", "Tasks cancelled", by_task,
                                 registry=r)
        self.takeovers = Counter("distasks_lease_takeovers",
                                 "Runs taken over after their lease expired", registry=r)
        self.run_duration = Histogram("distasks_run_duration_seconds", "Handler run time",
                                      by_task, buckets=DURATION_BUCKETS_S, registry=r)
        self.enqueue_to_start = Histogram(
            "distasks_enqueue_to_start_seconds",
            "From a run becoming available to its handler starting", ["queue"],
            buckets=LATENCY_BUCKETS_S, registry=r)
        self.queue_depth = Gauge("distasks_queue_depth", "Runs or tasks per queue and state",
                                 ["queue", "state"], registry=r)
        self.oldest_ready_age = Gauge("distasks_queue_oldest_ready_age_seconds",
                                      "How long the oldest ready run has waited", ["queue"],
                                      registry=r)
        self.workers_busy = Gauge("distasks_workers_busy", "Executors running a handler",
                                  registry=r)
        # Not "_total": that suffix is for counters.
        self.workers_total = Gauge("distasks_workers", "Executors of this daemon (concurrency)",
                                   registry=r)
        self.component_up = Gauge("distasks_component_up",
                                  "1 while a component's loop is alive and ticking",
                                  ["component"], registry=r)
        self.last_progress = Gauge("distasks_last_progress_timestamp_seconds",
                                   "Unix time of the last recorded run outcome", registry=r)
        self.http_requests = Counter("distasks_http_requests", "HTTP requests answered",
                                     ["route", "method", "status"], registry=r)
        self.http_connections = Gauge("distasks_http_connections",
                                      "Client connections served now (at most "
                                      "http.max_connections; more wait)", registry=r)
        self.http_duration = Histogram("distasks_http_request_duration_seconds",
                                       "HTTP request handling time", ["route"],
                                       buckets=LATENCY_BUCKETS_S, registry=r)
        # Schedules (architecture §9): one series per schedule, up to the cap
        # (scheduler.metrics_schedules); the others share OTHER_SCHEDULE.
        self.schedule_fires = Counter("distasks_schedule_fires",
                                      "Slots dealt with, by outcome (created, "
                                      "skipped_running, refused)", ["schedule", "outcome"],
                                      registry=r)
        self.schedule_misfires = Counter("distasks_schedule_misfires",
                                         "Due slots not fired (catch-up policy after downtime)",
                                         ["schedule"], registry=r)
        self.schedule_lag = Histogram("distasks_schedule_lag_seconds",
                                      "From a slot's time to its fire", buckets=LATENCY_BUCKETS_S,
                                      registry=r)
        self.schedule_next_fire = Gauge("distasks_schedule_next_fire_timestamp_seconds",
                                        "Unix time of each enabled schedule's next slot",
                                        ["schedule"], registry=r)
        self.schedule_overdue = Gauge("distasks_schedule_overdue_seconds",
                                      "How long an enabled schedule's next slot has been due "
                                      "without firing (0 when on time)", ["schedule"],
                                      registry=r)

        self.tenant_created = Counter("distasks_tenant_tasks_created",
                                      "Tasks created, by tenant", ["tenant"], registry=r)
        self.tenant_refused = Counter("distasks_tenant_requests_refused",
                                      "Requests refused by a tenant's quota or rate limit",
                                      ["tenant", "reason"], registry=r)

        # One series per configured [[outbox]] source (the config bounds the label).
        self.outbox_relayed = Counter("distasks_outbox_relayed",
                                      "Outbox rows whose task exists in distasks (created, or "
                                      "found from an earlier relay) and that were deleted",
                                      ["source"], registry=r)
        self.outbox_rejected = Counter("distasks_outbox_rejected",
                                       "Outbox rows refused and moved to outbox_rejected",
                                       ["source"], registry=r)
        self.outbox_lag = Histogram("distasks_outbox_lag_seconds",
                                    "From an outbox row's insert to its task's creation",
                                    ["source"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.outbox_oldest_age = Gauge("distasks_outbox_oldest_age_seconds",
                                       "Age of the oldest row the relay's last batch took "
                                       "(0: it found none)", ["source"], registry=r)
        self.outbox_up = Gauge("distasks_outbox_source_up",
                               "1 while the relay's last pass reached its source database",
                               ["source"], registry=r)

        # Which daemon a scrape reached: with http.reuse_port any of a host's daemons
        # may answer one scrape (docs/deployment.md).
        self.retention_removed = Counter(
            "distasks_retention_removed",
            "Rows removed by the cleaner past their retention: tasks by state (completed,"
            " cancelled, failed), workflows and their workflow_tasks, runs, audit,"
            " schedule_fires; and day partitions dropped whole (partitions)", ["kind"],
            registry=r)
        self.daemon_info = Gauge("distasks_daemon_info",
                                 "Always 1; the labels name the daemon that answered",
                                 ["worker_id", "version"], registry=r)

        #: Unix time of the last recorded outcome (the gauge's value, readable)
        self.last_outcome_s: float | None = None

    def identify(self, worker_id: str, version: str) -> None:
        """This daemon is `worker_id` (its row in /api/v1/workers), running `version`."""
        self.daemon_info.labels(worker_id, version).set(1)

    def queue_label(self, queue: str) -> str:
        if self._labelled_queues is None or queue in self._labelled_queues():
            return queue
        return OTHER

    def tenant_label(self, tenant: str) -> str:
        return tenant if tenant in self._labelled_tenants else OTHER

    def label_schedules(self, labels: Collection[str]) -> None:
        """The schedules that get a series of their own (at most the cap of them)."""
        self._labelled_schedules = set(sorted(labels)[:self._max_schedule_series])

    def schedule_label(self, tenant: str, name: str) -> str:
        """A schedule's label, `<tenant>/<name>` outside the default tenant; beyond the
        cap, OTHER_SCHEDULE."""
        label = name if tenant == "default" else f"{tenant}/{name}"
        if label in self._labelled_schedules:
            return label
        if len(self._labelled_schedules) < self._max_schedule_series:
            self._labelled_schedules.add(label)
            return label
        return self.OTHER_SCHEDULE

    @staticmethod
    def method_label(method: str) -> str:
        return method if method in HTTP_METHODS else OTHER

    def progressed(self, now_s: float) -> None:
        """An outcome was recorded at `now_s`."""
        self.last_outcome_s = now_s
        self.last_progress.set(now_s)

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)
