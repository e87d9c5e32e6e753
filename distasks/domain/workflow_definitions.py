"""A workflow's definition: what a submission may say, wherever it comes from (the API's
`POST /api/v1/workflows` body, a row of kind 'workflow' in an application's outbox,
architecture §10 and §11). api/schemas.py publishes it; daemon/creation.py applies the
deployment's rules to it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from distasks.domain.fields import NO_NUL_TEXT, Strict, text
from distasks.domain.task_definitions import CreateTask

OnParentFailureName = Literal["cancel", "continue", "skip"]
# A node's key within its workflow: what depends_on and ctx.parents name it by.
NODE_KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"


class Dependency(Strict):
    key: str = Field(pattern=NODE_KEY_PATTERN, description="The parent's key")
    on_parent_failure: OnParentFailureName = Field(
        "cancel", description="When the parent ends failed or cancelled: cancel this task "
        "and everything below it, run it anyway (continue), or skip it")


class WorkflowTask(CreateTask):
    key: str = Field(pattern=NODE_KEY_PATTERN, description="Unique within the workflow")
    depends_on: list[str | Dependency] = Field(
        default_factory=list, max_length=10_000,
        description="Keys of the parents (or {key, on_parent_failure}); the task is "
                    "pending until every one is final")


class OnFailureTask(CreateTask):
    key: str = Field("on_failure", pattern=NODE_KEY_PATTERN)


class CreateWorkflow(Strict):
    name: str = Field(min_length=1, max_length=256, json_schema_extra=NO_NUL_TEXT)
    dedup_key: str | None = text(1, 256, "The same key returns the same workflow")
    tasks: list[WorkflowTask] = Field(min_length=1, description=(
        "At most limits.max_workflow_tasks; each task's dedup_key is not taken (the "
        "workflow's is)"))
    on_failure: OnFailureTask | None = Field(None, description="Runs once if the workflow fails")
