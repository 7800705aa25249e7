"""Building the images in ``images/``: from a registry base where one is reachable, otherwise
from a Debian base bootstrapped out of Debian's packages (``debootstrap`` + ``docker import``).

This is set-up work run from the CLI, so it is synchronous and reports progress through a
callback. It is idempotent: an existing base is reused and ``docker build`` reuses its cache.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyflue.errors import ConfigError, SandboxError
from pyflue.sandbox.docker.engine import connect, translated

REGISTRY_BASE = "debian:bookworm-slim"
BOOTSTRAP_BASE = "pyflue/bookworm-base:latest"
DEFAULT_MIRROR = "http://deb.debian.org/debian"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ImageSpec:
    name: str
    context: Path

    @property
    def tag(self) -> str:
        return f"pyflue/{self.name}:latest"


def images_dir(project_dir: Path) -> Path:
    """The project's ``images/``, else the copy shipped with pyflue."""
    package = Path(__file__).parents[2]  # pyflue/
    for candidate in (
        project_dir / "images",
        package / "_images",  # in a wheel (see pyproject.toml)
        package.parent / "images",  # in a source checkout
    ):
        if candidate.is_dir() and any(candidate.glob("*/Dockerfile")):
            return candidate
    raise ConfigError(
        f"no images/ folder with Dockerfiles under {project_dir} or in the pyflue package"
    )


def discover(project_dir: Path) -> list[ImageSpec]:
    root = images_dir(project_dir)
    return [ImageSpec(d.parent.name, d.parent) for d in sorted(root.glob("*/Dockerfile"))]


@dataclass(frozen=True)
class ImageState:
    """An image pyflue builds, and whether the engine has it."""

    tag: str
    present: bool
    context: Path


def image_states(project_dir: Path, docker_host: str | None) -> list[ImageState]:
    """Each image of the project (see :func:`discover`) and whether it exists on the engine."""
    builder = ImageBuilder(docker_host, lambda _line: None)
    return [ImageState(image.tag, builder.exists(image.tag), image.context)
            for image in discover(project_dir)]


def apt_mirror(sources: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this machine's apt uses (deb822 ``URIs:`` or a ``deb`` line)."""
    for path in sorted((sources / "sources.list.d").glob("*.sources")):
        match = re.search(r"^URIs:\s*(\S+)", path.read_text(), re.M)
        if match and "security" not in match.group(1):
            return match.group(1)
    listing = sources / "sources.list"
    if listing.exists():
        match = re.search(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+bookworm", listing.read_text(), re.M)
        if match:
            return match.group(1)
    return DEFAULT_MIRROR


class ImageBuilder:
    def __init__(self, docker_host: str | None, progress: Progress) -> None:
        self.client: Any = connect(docker_host, timeout=600)
        self.progress = progress

    def exists(self, ref: str) -> bool:
        try:
            with translated("looking up an image", image=ref):
                self.client.images.get(ref)
        except SandboxError:
            return False
        return True

    def base_image(self, requested: str | None) -> str:
        """A usable base: the requested one, the registry's, or a bootstrapped one."""
        if requested:
            if not self.exists(requested) and not self._pull(requested):
                raise SandboxError(
                    f"base image {requested} is neither local nor pullable; omit --base to "
                    "bootstrap one from Debian's packages"
                )
            return requested
        if self.exists(REGISTRY_BASE) or self._pull(REGISTRY_BASE):
            return REGISTRY_BASE
        if self.exists(BOOTSTRAP_BASE):
            self.progress(f"base: reusing {BOOTSTRAP_BASE}")
            return BOOTSTRAP_BASE
        self.bootstrap(BOOTSTRAP_BASE)
        return BOOTSTRAP_BASE

    def _pull(self, ref: str) -> bool:
        self.progress(f"base: pulling {ref} ...")
        repo, _, tag = ref.partition(":")
        try:
            with translated(f"pulling {ref}", image=ref):
                self.client.images.pull(repo, tag=tag or "latest")
        except SandboxError as exc:
            self.progress(f"base: cannot pull {ref} ({exc.message.splitlines()[0][:160]})")
            return False
        return True

    def bootstrap(self, tag: str) -> None:
        """debootstrap a minimal bookworm and import it as ``tag``."""
        if shutil.which("debootstrap") is None:
            raise SandboxError(
                "no registry is reachable and debootstrap is not installed: "
                "`apt-get install -y debootstrap`, then run `pyflue images build` again"
            )
        mirror = apt_mirror()
        with tempfile.TemporaryDirectory(prefix="pyflue-rootfs-") as tmp:
            rootfs = Path(tmp) / "rootfs"
            self.progress(f"base: bootstrapping Debian bookworm from {mirror} (about 30 s) ...")
            self._stream(["debootstrap", "--variant=minbase", "bookworm", str(rootfs), mirror])
            self.progress(f"base: importing the root filesystem as {tag} ...")
            tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
            try:
                with translated("importing the bootstrapped base"):
                    repo, _, version = tag.partition(":")
                    self.client.api.import_image(src=tar.stdout, repository=repo, tag=version)
            except BaseException:
                tar.kill()  # nobody reads its pipe any more: do not wait on a full pipe
                raise
            finally:
                assert tar.stdout is not None
                tar.stdout.close()
                tar.wait()
            if tar.returncode != 0:
                raise SandboxError(f"tar of the bootstrapped root failed ({tar.returncode})")

    def _stream(self, argv: list[str]) -> None:
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(("I: Retrieving", "I: Validating")):
                continue  # one line per package: too chatty for progress
            self.progress("  " + line.rstrip())
        if proc.wait() != 0:
            raise SandboxError(f"{argv[0]} failed with exit code {proc.returncode}")

    def build(self, image: ImageSpec, base: str, *, no_cache: bool = False) -> str:
        self.progress(f"{image.tag}: building from {base} ...")
        with translated(f"building {image.tag}"):
            for chunk in self.client.api.build(
                path=str(image.context),
                tag=image.tag,
                buildargs={"BASE": base},
                rm=True,
                forcerm=True,
                nocache=no_cache,
                decode=True,
            ):
                if "error" in chunk:
                    raise SandboxError(f"building {image.tag} failed: {chunk['error'].strip()}")
                text = str(chunk.get("stream", "")).rstrip()
                if text.startswith("Step ") or "Successfully" in text:
                    self.progress("  " + text)
        self.progress(f"{image.tag}: ready")
        return image.tag


def build_all(
    project_dir: Path,
    *,
    docker_host: str | None,
    progress: Progress,
    base: str | None = None,
    no_cache: bool = False,
    only: list[str] | None = None,
) -> list[str]:
    images = discover(project_dir)
    if only:
        unknown = sorted(set(only) - {i.name for i in images})
        if unknown:
            raise ConfigError(
                f"unknown image {', '.join(unknown)}; available: "
                f"{', '.join(i.name for i in images)}"
            )
        images = [i for i in images if i.name in only]
    builder = ImageBuilder(docker_host, progress)
    base_ref = builder.base_image(base)
    return [builder.build(image, base_ref, no_cache=no_cache) for image in images]
