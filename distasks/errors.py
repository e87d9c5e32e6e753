"""The exceptions distasks raises; the HTTP mapping lives only in api/errors.py."""

from __future__ import annotations


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
