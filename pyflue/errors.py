"""The errors pyflue raises.

Every error a user can see derives from :class:`PyflueError` and says what went wrong and what
to do next. Third-party errors (``docker.errors.*``, SQLAlchemy, the model SDKs) are translated
into this tree at the adapter edge and never escape it.

::

    PyflueError
    ├── ConfigError              bad settings, agent config, CLI input, or a value the store refuses
    │   ├── InvalidPayload       a payload that is not a JSON object
    │   ├── RunIdUnknown         no run matches a run id or prefix the user gave
    │   └── RunIdAmbiguous       several runs match a prefix the user gave
    ├── WorkflowError            a workflow module cannot be used
    │   ├── WorkflowNotFound     no workflow of that name (lists the available ones)
    │   └── WorkflowLoadError    import failure, missing run(), duplicate name
    ├── RunNotFound              no run with that id in the store
    ├── RunStateConflict         the run is not in the status the operation needs
    ├── StoreError               the run store cannot be opened or written
    ├── ModelError               a model call failed (after retries where retrying helps)
    │   ├── ModelAuthError       the API key is missing or refused
    │   ├── ModelNotFound        the model string or model id is unknown
    │   ├── ModelUnavailable     overloaded, rate-limited or unreachable after retries
    │   └── ResultValidationError  structured output did not validate after the retries
    ├── SandboxError             the run's container cannot do what was asked
    │   ├── EngineUnavailable    the Docker engine is not reachable
    │   ├── ImageNotFound        the image does not exist locally
    │   ├── SandboxStartError    the container could not be created or started
    │   ├── SandboxGone          the container disappeared while the run used it
    │   └── WorkspacePathError   a path outside the workspace, or not found
    │       └── FileNotFoundInSandbox
    └── (in pyflue.client) ServerUnreachable, and ApiError (the server's error body) with
        BadRequestError, AuthError, NotFoundError, ConflictError, ServerError by status

Domain errors carry no HTTP status: the API layer maps classes to statuses.
"""

from __future__ import annotations


class PyflueError(Exception):
    """Root of every error pyflue raises on purpose.

    ``type`` is the stable, snake_case name used in error bodies and run records.
    """

    type: str = "pyflue_error"

    def __init__(self, message: str, *, details: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, str | None]:
        return {"type": self.type, "message": self.message, "details": self.details}


class ConfigError(PyflueError):
    type = "config_error"


class InvalidPayload(ConfigError):
    type = "invalid_payload"


class RunIdUnknown(ConfigError):
    type = "not_found"


class RunIdAmbiguous(ConfigError):
    type = "ambiguous_run_id"


class WorkflowError(PyflueError):
    type = "workflow_error"


class WorkflowNotFound(WorkflowError):
    type = "not_found"


class WorkflowLoadError(WorkflowError):
    type = "workflow_load_error"


class RunNotFound(PyflueError):
    type = "not_found"


class RunStateConflict(PyflueError):
    type = "conflict"


class StoreError(PyflueError):
    type = "store_error"


class ModelError(PyflueError):
    type = "model_error"


class ModelAuthError(ModelError):
    type = "model_auth_error"


class ModelNotFound(ModelError):
    type = "model_not_found"


class ModelUnavailable(ModelError):
    type = "model_unavailable"


class ResultValidationError(ModelError):
    type = "result_validation_error"


class SandboxError(PyflueError):
    type = "sandbox_error"


class EngineUnavailable(SandboxError):
    type = "engine_unavailable"


class ImageNotFound(SandboxError):
    type = "image_not_found"


class SandboxStartError(SandboxError):
    type = "sandbox_start_error"


class SandboxGone(SandboxError):
    """The run's container stopped or was removed. ``limits`` names the limit that stopped it
    ("memory") when that is known and not yet reported; ``reason`` says why, in words."""

    type = "sandbox_gone"

    def __init__(self, message: str, *, details: str | None = None,
                 limits: tuple[str, ...] = (), reason: str | None = None) -> None:
        super().__init__(message, details=details)
        self.limits = limits
        self.reason = reason or message


class WorkspacePathError(SandboxError):
    type = "workspace_path_error"


class FileNotFoundInSandbox(WorkspacePathError):
    type = "file_not_found"


__all__ = [
    "ConfigError",
    "EngineUnavailable",
    "FileNotFoundInSandbox",
    "ImageNotFound",
    "InvalidPayload",
    "ModelAuthError",
    "ModelError",
    "ModelNotFound",
    "ModelUnavailable",
    "PyflueError",
    "ResultValidationError",
    "RunNotFound",
    "RunStateConflict",
    "SandboxError",
    "SandboxGone",
    "SandboxStartError",
    "StoreError",
    "WorkflowError",
    "WorkflowLoadError",
    "WorkflowNotFound",
    "WorkspacePathError",
]
