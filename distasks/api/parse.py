"""Reading requests: bodies and query strings into the schemas' models, path parameters,
and a create body into a task (the rules themselves live in distasks.daemon.creation). Every
refusal is an InvalidInput naming the field; api/errors.py renders it."""

from __future__ import annotations

import re
import uuid
from typing import Any, TypeVar
from urllib.parse import unquote

import pydantic
from quart import request

from distasks.api import schemas
from distasks.api.errors import from_validation_error
from distasks.api.services import Services
from distasks.daemon import creation
from distasks.domain import times
from distasks.domain.errors import InvalidInput
from distasks.domain.fields import QUEUE_NAME_RE, QUEUE_NAME_RULE
from distasks.domain.model import NewTask

M = TypeVar("M", bound=pydantic.BaseModel)


async def read_body() -> bytes:
    data = await request.get_data(as_text=False, parse_form_data=False)
    return data if isinstance(data, bytes) else data.encode()


def parse_body(model: type[M], body: bytes) -> M:
    try:
        parsed = model.model_validate_json(body or b"null")
    except pydantic.ValidationError as e:
        raise from_validation_error(e) from None
    # JSON can carry a NUL only as the escape \u0000: walk the values only then.
    if b"\\u0000" in body:
        refuse_nul(parsed.model_dump(mode="python"))
    return parsed


def parse_query(model: type[M]) -> M:
    args = request.args.to_dict()
    refuse_nul(args)
    try:
        return model.model_validate(args)
    except pydantic.ValidationError as e:
        raise from_validation_error(e) from None


def refuse_nul(value: Any, path: str = "") -> None:
    """PostgreSQL text and jsonb cannot hold NUL characters: refuse them up front,
    naming where, instead of failing in the database."""
    if isinstance(value, str):
        if "\x00" in value:
            raise InvalidInput(f"{path or 'value'} contains a NUL character", field=path or None)
    elif isinstance(value, dict):
        for key, item in value.items():
            refuse_nul(key, path)
            refuse_nul(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            refuse_nul(item, f"{path}.{i}" if path else str(i))


def queue_name(name: str) -> str:
    """A queue name from a URL, or a 422 naming `queue`."""
    if not QUEUE_NAME_RE.fullmatch(name):
        raise InvalidInput(f"queue name {name!r}: must be {QUEUE_NAME_RULE}",
                           field="queue")
    return name


def schedule_name(name: str) -> str:
    """A schedule name from a URL, or a 422 naming `name`."""
    if not QUEUE_NAME_RE.fullmatch(name):
        raise InvalidInput(f"schedule name {name!r}: must be {QUEUE_NAME_RULE}",
                           field="name")
    return name


def task_id(value: str) -> uuid.UUID:
    """A task id from a URL, or a 422 naming `task_id`."""
    return _uuid(value, "task_id")


def workflow_id(value: str) -> uuid.UUID:
    return _uuid(value, "workflow_id")


def key_id(value: str) -> uuid.UUID:
    """A key id from a URL, or a 422 naming `key_id`."""
    return _uuid(value, "key_id")


def _uuid(value: str, field: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        what = field.replace("_", " ")
        raise InvalidInput(f"{what} {value!r} is not a UUID", field=field) from None


# Readers of each kind of path parameter, by name (as the routes spell them).
PATH_PARAMETERS = {"queue": queue_name, "task_id": task_id, "key_id": key_id,
                   "name": schedule_name, "workflow_id": workflow_id}


def path_parameter_problem(path_templates: list[str], raw_path: str) -> InvalidInput | None:
    """For a path no route matched: if it has the shape of one of `path_templates`
    (`/api/v1/queues/{queue}/dlq`) with a parameter that does not read (a queue name
    with a slash in it, a task id that is no UUID), the error naming that parameter."""
    segments = raw_path.split("/")
    for template in path_templates:
        parts = template.split("/")
        if len(parts) != len(segments):
            continue
        named = {}
        for part, segment in zip(parts, segments, strict=True):
            if m := re.fullmatch(r"{([a-z_]+)}", part):
                named[m.group(1)] = unquote(segment)
            elif part != segment:
                break
        else:
            for name, value in named.items():
                try:
                    PATH_PARAMETERS[name](value)
                except InvalidInput as e:
                    return e
    return None


def parse_create(body: bytes | str, s: Services, tenant: str) -> NewTask:
    """Validate a create body into `tenant`'s NewTask; raises InvalidInput naming the field."""
    req = parse_body(schemas.CreateTask, body if isinstance(body, bytes) else body.encode())
    return new_task(req, s, tenant)


def new_task(req: schemas.CreateTask, s: Services, tenant: str) -> NewTask:
    """The task a validated create body asks for, under this daemon's rules."""
    return creation.new_task(task_request(req, tenant), s.creation_rules(tenant),
                             now=times.utc(s.clock()))


def task_request(req: schemas.CreateTask, tenant: str) -> creation.TaskRequest:
    return creation.task_request(req, tenant)
