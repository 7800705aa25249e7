"""``pyflue doctor``: is this machine ready to run workflows? One check per line, with a fix."""

from __future__ import annotations

import re
import uuid
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from pyflue.errors import PyflueError, WorkflowError
from pyflue.models import Run, RunStatus, utcnow
from pyflue.settings import Settings, masked_url
from pyflue.store.base import RunUpdate
from pyflue.wiring import docker_provider, engine_address, open_store
from pyflue.workflows import WorkflowRegistry

if TYPE_CHECKING:
    from pyflue.sandbox.docker import DockerProvider


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str | None = None
    optional: bool = False


def checks_document(checks: list[Check]) -> dict[str, Any]:
    """The checks as ``pyflue doctor --json`` prints them: ``ok`` is false when a required
    check failed; each check ``{"name", "ok", "optional", "detail", "fix"}``."""
    ok = all(check.ok or check.optional for check in checks)
    return {"ok": ok, "checks": [asdict(check) for check in checks]}


async def run_checks(settings: Settings) -> list[Check]:
    checks: list[Check] = []
    provider = docker_provider(settings)
    where = engine_address(settings)
    try:
        info = await provider.info()
    except PyflueError as exc:
        why = str(exc.__cause__ or exc.public_message).strip().splitlines()[0][:300]
        checks.append(Check(
            "docker engine", False, f"DOWN: nothing answers at {where} ({why})",
            "start it (`dockerd &`, or `systemctl start docker`; install it with `apt-get install "
            "-y docker.io`), or point DOCKER_HOST at one that runs; until it answers, "
            "`pyflue serve` starts no run (runs stay queued, /health answers 503)"))
        info = None
    if info is not None:
        checks.append(Check("docker engine", True,
                            f"reachable at {where}, version {info.get('ServerVersion')}"))
        runtimes = sorted((info.get("Runtimes") or {}).keys())
        checks.append(Check("runtime runc", "runc" in runtimes, f"runtimes: {', '.join(runtimes)}",
                            "reinstall the engine (docker.io ships runc)"))
        checks.append(runc_check(info))
        has_runsc = "runsc" in runtimes
        checks.append(Check(
            "runtime runsc", has_runsc,
            "gVisor available (opt in with runtime: runsc)" if has_runsc else "not registered",
            "optional: `apt-get install -y runsc`, add to /etc/docker/daemon.json "
            '{"runtimes": {"runsc": {"path": "/usr/bin/runsc", "runtimeArgs": '
            '["--platform=ptrace", "--network=none"]}}} and restart dockerd',
            optional=True,
        ))
        image = settings.sandbox.image
        present = await provider.image_exists(image)
        checks.append(Check("sandbox image", present,
                            f"{image} {'present' if present else 'missing'}",
                            "build it: `pyflue images build` (or set PYFLUE_SANDBOX_IMAGE)"))
        checks.append(await _pool_check(settings, provider))
    await provider.close()
    checks.append(await _store_check(settings))
    checks.extend(_workflows_checks(settings))
    return checks


# runc 1.1.12 fixed "Leaky Vessels" (CVE-2024-21626): a working folder resolved through a file
# descriptor runc leaked gave a container the host's filesystem. Distributions patched older
# versions: their builds that carry the fix, by version pattern.
RUNC_FIXED = (1, 1, 12)
RUNC_PATCHED_BUILDS = (
    re.compile(r"^1\.1\.5\+ds1-1\+deb12u([1-9]\d*)$"),  # Debian 12 (DSA-5615-1)
    re.compile(r"^1\.0\.0~rc93\+ds1-5\+deb11u([3-9]|\d{2,})$"),  # Debian 11 (DSA-5615-1)
)


def runc_check(info: dict[str, Any]) -> Check:
    """Whether the engine's runc carries the fix of CVE-2024-21626 (runc >= 1.1.12, or a
    distribution build known to be patched). An older runc fails the check; an unknown
    version is a warning."""
    version = str((info.get("RuncCommit") or {}).get("ID") or "").strip()
    fix = ("upgrade runc to 1.1.12 or later (`apt-get install --only-upgrade runc`, or your "
           "distribution's fixed build); pyflue never hands runc a sandbox-controlled folder, "
           "but the engine's other users are exposed (docs/security.md)")
    if any(p.match(version) for p in RUNC_PATCHED_BUILDS):
        return Check("runc version", True, f"{version} (a distribution build with the fix of "
                     "CVE-2024-21626)")
    found = re.match(r"^v?(\d+)\.(\d+)\.(\d+)", version)
    if found is None:
        return Check("runc version", False, f"unknown ({version or 'the engine does not say'}): "
                     "cannot tell whether it has the fix of CVE-2024-21626 (runc 1.1.12)", fix,
                     optional=True)
    numbers = tuple(int(n) for n in found.groups())
    if numbers >= RUNC_FIXED:
        return Check("runc version", True, f"{version} (1.1.12 or later: CVE-2024-21626 fixed)")
    return Check("runc version", False, f"{version} is older than 1.1.12 and not a build known "
                 "to be patched: vulnerable to CVE-2024-21626 (Leaky Vessels)", fix)


async def _pool_check(settings: Settings, provider: DockerProvider) -> Check:
    """The warm pool `pyflue serve` keeps: its sizes, and the pooled containers of this store
    the engine has now (ready or claimed by a run)."""
    sizes = settings.pool.sizes(settings.sandbox.image)
    # Egress runs' pool (PYFLUE_POOL_EGRESS_SIZE): the default image, counted with it.
    egress = settings.pool.egress_size if settings.sandbox.max_egress else 0
    if egress:
        sizes = {settings.sandbox.image: 0, **sizes}
    if not sizes:
        return Check("warm pool", True, "off (PYFLUE_POOL_SIZE=0): every run starts cold",
                     optional=True)
    running = await provider.pooled_running()
    missing = [image for image in sizes if not await provider.image_exists(image)]

    def wanted(image: str, size: int) -> str:
        if egress and image == settings.sandbox.image:
            return f"{size + egress} ({size} + {egress} for egress runs)"
        return str(size)

    detail = ", ".join(f"{image}: {running.get(image, 0)} running of {wanted(image, size)}"
                       for image, size in sizes.items())
    return Check("warm pool", not missing,
                 f"the server keeps {detail} (pooled containers of this store, ready or in use)",
                 f"build or pull {', '.join(missing)}, or change PYFLUE_POOL_IMAGES"
                 if missing else None, optional=True)


async def _store_check(settings: Settings) -> Check:
    url = masked_url(settings.resolved_store_url())
    try:
        async with open_store(settings) as store:
            probe = f"doctor:probe:{uuid.uuid4().hex}"
            await store.create_run(Run(run_id=probe, workflow="doctor",
                                       status=RunStatus.completed, created_at=utcnow()))
            await store.update_run(probe, RunUpdate(reason="doctor probe"))
            await store.delete_run(probe)
    except PyflueError as exc:
        fix = ("start the database or correct the host, user and PYFLUE_STORE_PASSWORD in "
               "PYFLUE_STORE_URL" if url.startswith("postgresql") else
               "make the folder writable or set PYFLUE_STORE_URL")
        return Check("run store", False, exc.message, fix)
    return Check("run store", True, f"writable at {url}")


def _workflows_checks(settings: Settings) -> list[Check]:
    """One line for the workflows found, and one for each that fails to import."""
    registry = WorkflowRegistry(settings.project_dir)
    try:
        names = registry.names()
    except PyflueError as exc:
        return [Check("workflows", False, exc.message, "fix the file it names")]
    if not names:
        return [Check("workflows", False, f"none found under {settings.project_dir}",
                      "add workflows/<name>.py exporting run(ctx), or run from the project "
                      "folder", optional=True)]
    broken: list[Check] = []
    for name, source in sorted(registry.sources().items()):
        try:
            registry.get(name)
        except WorkflowError as exc:
            cause = exc.__cause__
            why = f"{type(cause).__name__}: {cause}" if cause is not None else exc.message
            broken.append(Check(f"workflow {name}", False,
                                f"{source.path}: {(why.splitlines() or [''])[0]}",
                                "fix the import; `pyflue workflows` lists them all"))
    ok = len(names) - len(broken)
    return [Check("workflows", not broken, f"{ok} of {len(names)} import: {', '.join(names)}"),
            *broken]
