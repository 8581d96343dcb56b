"""Real programs from Debian source packages, built once and cached between runs.

``apt-get source NAME`` fetches and unpacks a package's source (with Debian's
patches applied); the program's own build system then builds it under
``bear``, which records every compiler call in ``compile_commands.json`` so
relive finds the original flags of an edited file itself.

The built tree is kept in ``$RELIVE_REALWORLD_CACHE`` (default
``$XDG_CACHE_HOME/relive/realworld``, else ``~/.cache/relive/realworld``: each
user builds in a folder of their own, never in one another user could write),
one folder per package, version and recipe (its commands and the compiler's
version), so a later run reuses it as long as neither changed.  A lock file per
package serialises builds and the tests' in-place edits between concurrent runs.
Tests edit sources in the cached tree (that is the tree the program's DWARF and
compile_commands.json name) through ``SourceTree.edit``, which keeps a pristine
copy and restores it afterwards, also after a crash (on the next run).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path


def _default_cache() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "relive" / "realworld"


CACHE = Path(os.environ.get("RELIVE_REALWORLD_CACHE") or _default_cache())
PREPARE = "tests/prepare.sh"
STAMP = "relive-built.json"
PRISTINE = ".relive-pristine"
# A package's build on this 2-core machine takes up to ~4 minutes; a wait for
# another run's build or tests gets more than that.
LOCK_TIMEOUT = 1200.0


class BuildFailed(RuntimeError):
    """Getting or building a package failed; the message says which step and why."""


class FetchFailed(BuildFailed):
    """``apt-get source`` could not fetch a version (another may be fetchable)."""


def cache_problem() -> str | None:
    """Why ``CACHE`` cannot hold this user's builds, or None when it can (created if needed).

    The tests run what they build there, so the folder must be this user's own and
    writable by no one else (as a shared folder under /var/tmp would not be).
    """
    try:
        if not CACHE.is_dir():
            CACHE.mkdir(parents=True)
            CACHE.chmod(0o755)  # whatever the umask: writable by this user alone
        info = CACHE.stat()
    except OSError as e:
        return f"cannot create the build cache {CACHE}: {e.strerror}"
    if info.st_uid != os.geteuid():
        return f"the build cache {CACHE} belongs to uid {info.st_uid}, not to this user"
    if info.st_mode & 0o022:
        return f"the build cache {CACHE} is writable by other users"
    if not os.access(CACHE, os.W_OK | os.X_OK):
        return f"the build cache {CACHE} is not writable"
    return None


@dataclass(frozen=True)
class Recipe:
    """How to build one source package with its own build system.

    ``commands`` run in the unpacked tree, in order; ``{jobs}`` becomes the
    number of CPUs.  Commands whose first word is ``make`` run under ``bear`` so
    that the compile commands are recorded.  ``prepare`` runs before them (for a
    step Debian's rules do before the build proper).  ``outputs`` are paths
    relative to the tree that must exist afterwards.
    """

    package: str
    commands: tuple[tuple[str, ...], ...]
    outputs: tuple[str, ...]
    prepare: Callable[[Path], None] | None = field(default=None, compare=False)
    prepare_text: str = ""  # what ``prepare`` does, part of the cache key

    def key(self) -> str:
        """A short hash of the recipe and the compiler, for the cache folder's name."""
        compiler = _run(["gcc", "--version"], Path("/")).stdout.splitlines()[0]
        text = json.dumps([self.commands, self.prepare_text, compiler])
        return hashlib.sha256(text.encode()).hexdigest()[:10]


@dataclass
class SourceTree:
    """An unpacked, built source package; ``path`` is the top of the tree."""

    package: str
    version: str
    path: Path
    build_seconds: float
    cached: bool
    _edited: list[Path] = field(default_factory=list)

    def edit(self, relative: str, old: str, new: str) -> Path:
        """Replace ``old`` (which must occur exactly once) with ``new`` in a source file.

        The first edit of a file saves it under ``.relive-pristine``; ``restore``
        puts it back.  Returns the file's path.
        """
        path = self.path / relative
        text = path.read_text()
        count = text.count(old)
        assert count == 1, f"{old!r} occurs {count} times in {path}, expected once"
        backup = self.path / PRISTINE / relative
        if not backup.exists():
            backup.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, backup)
            self._edited.append(path)
        path.write_text(text.replace(old, new))
        return path

    def restore(self) -> None:
        """Put back every file edited through ``edit`` (or left edited by a crashed run)."""
        restore_pristine(self.path)
        self._edited.clear()


def restore_pristine(tree: Path) -> None:
    """Copy each saved pristine file back over its edited version, then drop the copies."""
    saved = tree / PRISTINE
    if not saved.is_dir():
        return
    for backup in saved.rglob("*"):
        if backup.is_file():
            shutil.copy2(backup, tree / backup.relative_to(saved))
    shutil.rmtree(saved)


@contextlib.contextmanager
def locked(package: str, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Hold the package's lock: one run at a time builds or edits its tree."""
    with open(CACHE / f"{package}.lock", "w") as lock:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise BuildFailed(
                        f"{CACHE / package}.lock is held by another run for over {timeout:g} s"
                    ) from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def source_versions(package: str) -> list[str]:
    """The versions of the source package apt can fetch, newest first (epoch included).

    Empty when apt cannot tell (no deb-src line, indexes not fetched).
    """
    proc = _run(["apt-cache", "showsrc", "--only-source", package], Path("/"))
    if proc.returncode != 0:
        return []
    found = set(re.findall(r"^Version: (\S+)$", proc.stdout, re.MULTILINE))
    return sorted(found, key=functools.cmp_to_key(_compare_versions), reverse=True)


def _compare_versions(a: str, b: str) -> int:
    if a == b:
        return 0
    newer = _run(["dpkg", "--compare-versions", a, "gt", b], Path("/")).returncode == 0
    return 1 if newer else -1


def _file_version(version: str) -> str:
    """The version as in the package's file names (no epoch)."""
    return version.split(":", 1)[1] if ":" in version else version


def built_tree(recipe: Recipe) -> SourceTree:
    """The package's built tree from the cache, building it first if needed.

    Call with the package's lock held (``locked``).  The newest source version
    apt knows is used; if it cannot be fetched (a mirror that lacks a security
    update's files answers 404), the next older one.  Without a usable deb-src
    line, an already built tree of the package for this recipe is reused.
    """
    key = recipe.key()
    versions = source_versions(recipe.package)
    if not versions:
        folders = sorted(
            CACHE.glob(f"{recipe.package}_*_{key}/{STAMP}"), key=lambda p: p.stat().st_mtime
        )
        if not folders:
            raise BuildFailed(
                f"apt-get source {recipe.package} cannot tell a version (no deb-src line?) "
                f"and {CACHE} holds no build of it; run `sudo bash {PREPARE}`"
            )
        tree = _cached(recipe, folders[-1].parent)
        if tree is None:
            raise BuildFailed(f"the cached build in {folders[-1].parent} is incomplete")
        return tree
    failures = []
    for version in versions:
        folder = CACHE / f"{recipe.package}_{_file_version(version)}_{key}"
        tree = _cached(recipe, folder)
        if tree is not None:
            return tree
        try:
            return _build(recipe, version, folder, pin=version != versions[0])
        except FetchFailed as e:
            failures.append(str(e))
    raise BuildFailed("; ".join(failures))


def _cached(recipe: Recipe, folder: Path) -> SourceTree | None:
    """The complete build in ``folder``, or None."""
    stamp = folder / STAMP
    if not stamp.is_file():
        return None
    _reclaim(folder)
    info = json.loads(stamp.read_text())
    tree = Path(info["tree"])
    if not (tree.is_dir() and all((tree / out).exists() for out in recipe.outputs)):
        return None
    restore_pristine(tree)
    return SourceTree(recipe.package, info["version"], tree, info["build_seconds"], cached=True)


def _build(recipe: Recipe, version: str, folder: Path, *, pin: bool) -> SourceTree:
    """Fetch ``version`` of the package (``pin``: ask apt for it by version) and build it."""
    start = time.monotonic()
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    # _apt drops privileges to download; a folder it can write avoids apt's warning.
    with contextlib.suppress(KeyError, PermissionError):
        shutil.chown(folder, user="_apt")
    wanted = f"{recipe.package}={version}" if pin else recipe.package
    fetched = _run(["apt-get", "source", wanted], folder)
    _reclaim(folder)
    if fetched.returncode != 0:
        last = (fetched.stdout + fetched.stderr).strip().splitlines()[-1:]
        shutil.rmtree(folder, ignore_errors=True)
        raise FetchFailed(f"apt-get source {wanted} failed: {' '.join(last)}")
    version = _file_version(version)
    if not (folder / f"{recipe.package}_{version}.dsc").is_file():
        raise BuildFailed(f"apt-get source {recipe.package} fetched another version than {version}")
    trees = [p for p in folder.iterdir() if p.is_dir()]
    if len(trees) != 1:
        raise BuildFailed(f"apt-get source {recipe.package} unpacked {len(trees)} folders")
    tree = trees[0]
    if recipe.prepare is not None:
        recipe.prepare(tree)
    jobs = str(os.cpu_count() or 1)
    for command in recipe.commands:
        argv = [word.replace("{jobs}", jobs) for word in command]
        if argv[0] == "make":
            argv = ["bear", "--append", "--output", "compile_commands.json", "--", *argv]
        _check(_run(argv, tree, log=folder / "build.log"), " ".join(command))
    missing = [out for out in recipe.outputs if not (tree / out).exists()]
    if missing:
        raise BuildFailed(f"building {recipe.package} made no {', '.join(missing)}")
    if not (tree / "compile_commands.json").is_file():
        raise BuildFailed(f"bear recorded no compile_commands.json for {recipe.package}")
    seconds = time.monotonic() - start
    info = {"package": recipe.package, "version": version, "tree": str(tree)}
    (folder / STAMP).write_text(json.dumps({**info, "build_seconds": round(seconds, 1)}))
    return SourceTree(recipe.package, version, tree, seconds, cached=False)


def _reclaim(folder: Path) -> None:
    """Make ``folder`` ours again after apt's download user had it (root only).

    relive refuses a build whose folders another user owns (that user would
    choose what it compiles), and so would every reload of these trees.
    """
    if os.geteuid() == 0 and folder.stat().st_uid != 0:
        os.chown(folder, 0, 0)


def _run(
    argv: Sequence[str], cwd: Path, log: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, LC_ALL="C", DEBIAN_FRONTEND="noninteractive")
    try:
        proc = subprocess.run(
            list(argv),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            check=False,
        )
    except FileNotFoundError as e:
        raise BuildFailed(f"{argv[0]} is not installed; run `sudo bash {PREPARE}`") from e
    if log is not None:
        with log.open("a") as f:
            f.write(f"$ {' '.join(argv)}\n{proc.stdout}{proc.stderr}\n")
    return proc


def _check(proc: subprocess.CompletedProcess[str], what: str) -> None:
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        raise BuildFailed(f"{what} failed with exit status {proc.returncode}:\n{tail}")
