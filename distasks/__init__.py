"""distasks: a distributed task platform, one Trio daemon over PostgreSQL and Redis."""

# The bridge must be imported before psycopg, which binds asyncio.get_running_loop at
# import time (architecture §1); importing it here makes every entry point get the order right.
from distasks import aio as _aio  # noqa: F401  (imported for its side effect)
from distasks.handlers import TaskContext, handler

__all__ = ["TaskContext", "handler"]
__version__ = "0.1.0"
