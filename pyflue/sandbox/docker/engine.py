"""The Docker engine connection and the translation of docker-py errors into pyflue's.

No ``docker.errors`` exception leaves :mod:`pyflue.sandbox.docker`: every SDK call goes
through :func:`translated`, which maps them onto :mod:`pyflue.errors` with a next step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import docker
import docker.errors
import requests.exceptions

from pyflue.errors import (
    EngineUnavailable,
    ImageNotFound,
    SandboxError,
    SandboxGone,
    SandboxStartError,
)


def engine_label(base_url: str | None) -> str:
    return base_url or "DOCKER_HOST or unix:///var/run/docker.sock"


def connect(base_url: str | None, *, timeout: int = 120) -> Any:
    """A docker-py client (not yet contacted). ``base_url`` None means the environment's."""
    try:
        if base_url:
            return docker.DockerClient(base_url=base_url, timeout=timeout)
        return docker.from_env(timeout=timeout)
    except docker.errors.DockerException as exc:
        raise unreachable(base_url, exc) from exc


def unreachable(base_url: str | None, exc: BaseException) -> EngineUnavailable:
    return EngineUnavailable(
        f"Docker engine not reachable at {engine_label(base_url)}: is dockerd running? "
        f"({_first_line(exc)})", hint="try `pyflue doctor`")


def is_gvisor(runtime: str | None) -> bool:
    """Whether a Docker runtime name is gVisor's (``runsc``, or a variant such as runsc-kvm)."""
    return runtime is not None and runtime.startswith("runsc")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or exc.__class__.__name__
    return text.splitlines()[0][:300]


@contextlib.contextmanager
def translated(
    what: str, *, image: str | None = None, container: str | None = None
) -> Iterator[None]:
    """Maps docker-py and transport errors raised inside the block onto pyflue errors."""
    try:
        yield
    except docker.errors.ImageNotFound as exc:
        name = image or "the image"
        raise ImageNotFound(
            f"image {name} not found on the Docker engine",
            hint="build it with `pyflue images build` or pass another one with --image",
        ) from exc
    except docker.errors.NotFound as exc:
        if image is not None and "image" in str(exc).lower():
            raise ImageNotFound(
                f"image {image} not found on the Docker engine",
                hint="build it with `pyflue images build` or pass another one with --image",
            ) from exc
        if container is not None and "container" in str(exc).lower():
            raise SandboxGone(
                f"{what}: the run's container {container[:12]} no longer exists "
                "(removed or reaped while the run used it)"
            ) from exc
        raise SandboxError(f"{what}: {_explain(exc)}") from exc
    except docker.errors.APIError as exc:
        if container is not None and exc.status_code == 409 and "not running" in str(exc):
            raise SandboxGone(
                f"{what}: the run's container {container[:12]} is no longer running"
            ) from exc
        raise SandboxError(f"{what}: {_explain(exc)}") from exc
    except (requests.exceptions.ConnectionError, ConnectionError, FileNotFoundError) as exc:
        raise unreachable(None, exc) from exc
    except requests.exceptions.RequestException as exc:  # timeouts, a daemon restarting
        raise SandboxError(
            f"{what}: the Docker engine did not answer properly ({_first_line(exc)})",
            hint="check it with `pyflue doctor`",
        ) from exc
    except docker.errors.DockerException as exc:
        raise SandboxError(f"{what}: {_first_line(exc)}") from exc


def _explain(exc: Any) -> str:
    explanation = getattr(exc, "explanation", None)
    status = getattr(exc, "status_code", None)
    text = str(explanation or exc).strip()
    return f"{text} (HTTP {status})" if status else text


def api_url(api: Any, template: str, *parts: str) -> str:
    """An Engine API URL for a request docker-py has no method for, from the client's public
    ``base_url`` and ``api_version``; ``parts`` (ids, names) are quoted into ``template``'s
    ``{}`` places."""
    return f"{api.base_url}/v{api.api_version}" + template.format(
        *(quote(part, safe="") for part in parts)
    )


def raise_for_status(response: Any) -> None:
    """Raises docker-py's own error for an error answer to such a request (``NotFound`` for
    a 404, else ``APIError``), so that :func:`translated` maps it like any SDK call's."""
    try:
        response.raise_for_status()
    except requests.exceptions.HTTPError as exc:
        try:
            docker.errors.create_api_error_from_http_exception(exc)  # always raises
        finally:
            response.close()


def start_error(what: str, exc: SandboxError) -> SandboxStartError:
    return SandboxStartError(f"{what}: {exc.message}", details=exc.details)
