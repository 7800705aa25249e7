"""The errors pyflue raises.

Every error a user can see derives from :class:`PyflueError` and says what went wrong and what
to do next. Third-party errors (``docker.errors.*``, SQLAlchemy, the model SDKs) are translated
into this tree at the adapter edge and never escape it.

::

    PyflueError
    ├── ConfigError              bad settings, agent config, CLI input, or a value the store refuses
    │   ├── InvalidSettings      PYFLUE_* variables refused at start (one line per problem)
    │   ├── InvalidPayload       a payload that is not a JSON object
    │   ├── NotSupported         a PyFlue 0.2 name or option pyflue lacks (names the replacement)
    │   ├── RunIdUnknown         no run matches a run id or prefix the user gave
    │   ├── UploadRefused        an uploaded archive that is unsafe, too large or unreadable
    │   └── RunIdAmbiguous       several runs match a prefix the user gave
    ├── WorkflowError            a workflow module cannot be used
    │   ├── WorkflowNotFound     no workflow of that name (lists the available ones)
    │   └── WorkflowLoadError    import failure, missing run(), duplicate name
    ├── RunNotFound              no run with that id in the store
    ├── RunStateConflict         the run is not in the status the operation needs
    ├── QueueFull                a tenant's queue is at PYFLUE_TENANT_MAX_QUEUED
    ├── StoreError               the run store cannot be opened or written
    ├── ArtifactError            an artifact cannot be saved or read
    │   ├── ArtifactNotFound     no artifact (or folder of them) of that name in the run
    │   ├── ArtifactTooLarge     over the per-artifact, per-run size or count cap
    │   └── ArtifactUnavailable  listed, but its content is not in this worker's artifact store
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

    ``type`` is the stable, snake_case name used in error bodies and run records. ``hint`` is a
    next step for whoever runs this machine (a ``pyflue`` command, a path on it): ``message``
    ends with it, ``public_message`` (and ``str(exc)``, so a traceback or a message that quotes
    the error) leaves it out; HTTP error bodies and stored run errors keep it apart (shown to
    API clients only when the server runs with ``PYFLUE_DEBUG=1``). ``public`` replaces
    ``public_message`` where the message itself names something of the server's (a file's
    absolute path).
    """

    type: str = "pyflue_error"

    def __init__(self, message: str, *, details: str | None = None,
                 hint: str | None = None, public: str | None = None) -> None:
        full = f"{message}; {hint}" if hint else message
        super().__init__(message)
        self.message = full
        self.public_message = message if public is None else public
        self.hint = hint
        self.details = details

    def to_dict(self) -> dict[str, str | None]:
        return {"type": self.type, "message": self.message, "details": self.details}


class ConfigError(PyflueError):
    type = "config_error"


class InvalidSettings(ConfigError):
    """``PYFLUE_*`` variables that cannot be used; ``problems`` has one line for each, naming
    the variable and a valid example."""

    type = "invalid_settings"

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems
class NotSupported(ConfigError, AttributeError):
    """A PyFlue 0.2 attribute, method or option that pyflue does not have; the message names
    what to use instead. An AttributeError too, so ``hasattr``/``getattr(x, name, default)``
    treat the name as absent."""

    type = "not_supported"


class InvalidPayload(ConfigError):
    type = "invalid_payload"


class RunIdUnknown(ConfigError):
    type = "not_found"


class UploadRefused(ConfigError):
    """An uploaded archive (``--upload``, a multipart part) that is not unpacked: which part,
    which member and why; nothing of it is written and no run is created."""

    type = "upload_refused"


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


class QueueFull(PyflueError):
    """The caller's tenant has as many runs queued as PYFLUE_TENANT_MAX_QUEUED allows;
    ``retry_after``: seconds to wait before trying again."""

    type = "queue_full"

    def __init__(self, message: str, *, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StoreError(PyflueError):
    type = "store_error"


class ArtifactError(PyflueError):
    type = "artifact_error"


class ArtifactNotFound(ArtifactError):
    type = "not_found"


class ArtifactTooLarge(ArtifactError):
    type = "artifact_too_large"


class ArtifactUnavailable(ArtifactError):
    type = "artifact_unavailable"


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


# The error types that are the machine's fault, not the workflow's or the caller's: the CLI
# exits 3 for them (docs/cli.md, exit codes). ``server_unreachable`` is pyflue.client's.
INFRASTRUCTURE_TYPES = frozenset({
    EngineUnavailable.type, ImageNotFound.type, SandboxStartError.type, StoreError.type,
    ModelUnavailable.type, ArtifactUnavailable.type, "server_unreachable",
})


__all__ = [
    "INFRASTRUCTURE_TYPES",
    "ArtifactError",
    "ArtifactNotFound",
    "ArtifactTooLarge",
    "ArtifactUnavailable",
    "ConfigError",
    "EngineUnavailable",
    "FileNotFoundInSandbox",
    "ImageNotFound",
    "InvalidPayload",
    "InvalidSettings",
    "ModelAuthError",
    "ModelError",
    "ModelNotFound",
    "ModelUnavailable",
    "PyflueError",
    "QueueFull",
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
