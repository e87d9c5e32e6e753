"""The exceptions distasks raises; the HTTP mapping lives only in api/errors.py."""

from __future__ import annotations

from distasks.domain.tenancy import shown


class DistasksError(Exception):
    """Base of every error distasks raises on purpose."""


class InvalidInput(DistasksError):
    """A request or message is malformed; `field` names the culprit (dotted path)."""

    def __init__(self, message: str, *, field: str | None = None, code: str = "invalid_input"):
        super().__init__(message)
        self.message = message
        self.field = field
        self.code = code


class UnknownHandler(InvalidInput):
    """The task names a handler that this daemon has not registered."""

    def __init__(self, name: str):
        super().__init__(f"no handler named {name!r} is registered", field="handler",
                         code="unknown_handler")


class PayloadTooLarge(InvalidInput):
    def __init__(self, size: int, limit: int):
        super().__init__(f"payload is {size} bytes, over the limit of {limit}",
                         field="payload", code="payload_too_large")


class NotFound(DistasksError):
    def __init__(self, what: str):
        super().__init__(what)
        self.message = what


class StoreUnavailable(DistasksError):
    """PostgreSQL cannot be reached or failed mid-operation; retry with backoff."""


class StoreRejected(DistasksError):
    """PostgreSQL refused a statement's data (a validation gap, not an outage)."""


class BrokerUnavailable(DistasksError):
    """Redis cannot be reached or failed mid-operation; retry with backoff."""


class ConfigError(DistasksError):
    """Invalid configuration; the message names the key."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"config: {key}: {problem}")
        self.key = key
        self.problem = problem


class CannotListen(DistasksError):
    """The API's address cannot be bound (a port in use, a host not on this machine);
    found before anything is written, so the message names the address and the setting."""

    def __init__(self, address: str, reason: str, key: str):
        super().__init__(f"cannot listen on {address}: {reason} ({key})")


class Refused(DistasksError):
    """A request refused before it is served: no or bad credentials (401), a missing
    scope (403), a cross-site or wrongly typed write (403, 415), an unknown Host (400)."""

    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None, *, field: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        #: the request field (dotted path) the refusal is about, if one is
        self.field = field


class Unauthenticated(Refused):
    def __init__(self, message: str):
        super().__init__(401, "unauthenticated", message,
                         {"WWW-Authenticate": 'Bearer realm="distasks"'})


class Forbidden(Refused):
    def __init__(self, scope: str):
        super().__init__(403, "forbidden", f"this operation needs the scope {scope!r}")
        self.scope = scope


class DedupConflict(Refused):
    """A dedup_key that names a task created from a different request (409)."""

    def __init__(self, dedup_key: str, task_id: str):
        super().__init__(409, "dedup_conflict",
                         f"dedup_key {dedup_key!r} names task {task_id}, created from a "
                         "different request; send the same request again, or another key")
        self.task_id = task_id


class TooManyQueues(Refused):
    """A new queue for a tenant that has limits.max_queues already (409). `index` is the
    position of the task naming it in a batch create."""

    def __init__(self, queue: str, tenant: str, limit: int, *, field: str = "queue",
                 index: int = 0):
        super().__init__(409, "too_many_queues",
                         f"queue {shown(queue)!r} would be new, and tenant {tenant!r} has "
                         f"{limit} queues already, the most limits.max_queues allows; "
                         "delete an unused one (DELETE /api/v1/queues/{name})", field=field)
        self.limit = limit
        self.index = index


class OperatorLimit(Refused):
    """A tenant's change that would loosen a queue limit its operator set in the config
    (`[queues."<tenant>/<queue>"]`): lifted, or raised past it (403)."""

    def __init__(self, field: str, limit: float):
        super().__init__(403, "operator_limit",
                         f"{field} of this queue is set by the operator to {limit:g}; a "
                         "tenant may lower it, not lift it or raise it", field=field)


class QueueNotEmpty(Refused):
    """A queue delete while the queue still holds unfinished or dead-lettered tasks (409)."""

    def __init__(self, queue: str, *, unfinished: int, dead: int):
        super().__init__(409, "queue_not_empty",
                         f"queue {shown(queue)!r} has {unfinished} unfinished and {dead} "
                         "dead-lettered tasks; wait for them, cancel them, or delete or "
                         "replay its DLQ first", field="queue")
