"""Tenants: whose a queue, a task or a key is (architecture §8).

A tenant's queue is known inside distasks by its *qualified* name, `<tenant>/<queue>`,
everywhere a queue is named: PostgreSQL rows, Redis keys (the hash tag carries it, so two
tenants' `default` queues never share a key), the workers' config. The implicit tenant
`default` keeps plain names, so a single-tenant deployment sees none of this. Queue
names cannot hold "/", so the split is never ambiguous. The API qualifies what a
principal names with the principal's tenant and shows names unqualified.
"""

from __future__ import annotations

import re

DEFAULT_TENANT = "default"
# "(?!\n)": Python's "$" also matches before a final newline (config.QUEUE_NAME_PATTERN).
TENANT_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,31}$(?!\n)"
TENANT_RE = re.compile(TENANT_PATTERN)
SEPARATOR = "/"


def check_tenant(tenant: str) -> str:
    """`tenant` if it is a valid name; ValueError saying what a name may hold otherwise."""
    if not TENANT_RE.fullmatch(tenant):
        raise ValueError(f"tenant {tenant!r} must be 1-32 of a-z, 0-9, '_' and '-', "
                         "starting with a letter or digit")
    return tenant


def qualify(tenant: str, queue: str) -> str:
    """The name distasks keeps for `tenant`'s queue `queue`."""
    return queue if tenant == DEFAULT_TENANT else f"{tenant}{SEPARATOR}{queue}"


def split(qualified: str) -> tuple[str, str]:
    """(tenant, queue) of a qualified queue name."""
    tenant, sep, queue = qualified.partition(SEPARATOR)
    return (tenant, queue) if sep else (DEFAULT_TENANT, qualified)


def shown(qualified: str) -> str:
    """A qualified queue name as its tenant sees it."""
    return qualified.rpartition(SEPARATOR)[2]


def tenant_of(qualified: str) -> str:
    return split(qualified)[0]
