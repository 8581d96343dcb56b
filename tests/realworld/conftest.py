"""Fixtures for the real-program tests: built Debian source trees, free ports, relive's CLI.

These tests run only with RELIVE_REALWORLD=1 (``make test-realworld`` and
``make test`` set it); a plain ``pytest`` skips them, since a cold run builds
seven programs from source (minutes).  They also skip, saying why, on a machine
that lacks what tests/prepare.sh installs or when the build cache is not usable.
"""

from __future__ import annotations

import functools
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from realworld.debsrc import (
    CACHE,
    PREPARE,
    BuildFailed,
    Recipe,
    SourceTree,
    built_tree,
    cache_problem,
    locked,
)
from support import cannot_run

HERE = Path(__file__).parent
ENABLED = os.environ.get("RELIVE_REALWORLD") == "1"
# Covers a cold build of the package in the first test that needs it.
BUILD_TIMEOUT = 1800


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give this folder's tests time for a cold build."""
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.timeout(BUILD_TIMEOUT))


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip this folder's tests unless enabled and the machine can build the programs.

    Skipping here rather than in a fixture folds the skips into one line of
    pytest's summary.
    """
    if not ENABLED:
        pytest.skip(
            "real-program tests (tests/realworld): off by default, a cold run builds seven "
            "programs (minutes); to run them: `make test` (or RELIVE_REALWORLD=1 pytest)"
        )
    _require_machine()


# --- recipes: each program's own build system and flags ----------------------

# redis 7.0.15's Makefile builds with -O2 -g -ggdb (this version has no -flto).
# Debian's patches make it call jemalloc without the je_ prefix of the vendored
# copy, so, as debian/rules does, it links Debian's libjemalloc
# (USE_SYSTEM_JEMALLOC=yes).  TLS and systemd support are left out: not needed.
REDIS = Recipe(
    package="redis",
    commands=(("make", "-j{jobs}", "USE_SYSTEM_JEMALLOC=yes", "USE_SYSTEMD=no", "BUILD_TLS=no"),),
    outputs=("src/redis-server", "src/redis-cli"),
)


def _lua_multiarch_header(tree: Path) -> None:
    # What debian/rules' configure step writes before the build: luaconf.h
    # (patched by Debian) includes it.
    arch = subprocess.run(
        ["dpkg-architecture", "-qDEB_HOST_MULTIARCH"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (tree / "src" / "lua5.4-deb-multiarch.h").write_text(
        "#ifndef _LUA_DEB_MULTIARCH_\n#define _LUA_DEB_MULTIARCH_\n"
        f'#define DEB_HOST_MULTIARCH "{arch}"\n#endif\n'
    )


# Debian's lua5.4 Makefile (as patched by Debian: libtool, dpkg-buildflags, so
# -g -O2 -fstack-protector-strong -D_FORTIFY_SOURCE=2 ...), with the target and
# variables debian/rules passes; the system libtool stands in for the one
# debian/rules generates with autoreconf.  src/lua5.4 links liblua statically.
LUA = Recipe(
    package="lua5.4",
    commands=(
        ("make", "-j{jobs}", "linux-readline", "LIBTOOL=libtool --quiet", "CC=gcc -std=gnu99"),
    ),
    outputs=("src/lua5.4",),
    prepare=_lua_multiarch_header,
    prepare_text="src/lua5.4-deb-multiarch.h",
)

# dnsmasq's Makefile compiles with CFLAGS = -Wall -W -O2; -g added (it has none).
DNSMASQ = Recipe(
    package="dnsmasq",
    commands=(("make", "-j{jobs}", "CFLAGS=-Wall -W -O2 -g"),),
    outputs=("src/dnsmasq",),
)

# sqlite3's own autoconf build: the amalgamation (sqlite3.c, ~250k lines, generated
# with tclsh) and the shell, with configure's default -g -O2, no -ffunction-sections.
SQLITE = Recipe(
    package="sqlite3",
    commands=(
        ("sh", "-c", "./configure -q --disable-tcl --disable-readline --disable-editline"),
        ("make", "-j{jobs}", "sqlite3"),
    ),
    outputs=("sqlite3", "sqlite3.c"),
)

# nano as Debian configures it (hardening=+all: -fstack-protector-strong,
# -D_FORTIFY_SOURCE=2, -z relro -z now, PIE), with autotools' make.
NANO_CONFIGURE = (
    "export DEB_BUILD_MAINT_OPTIONS=hardening=+all; "
    './configure -q --bindir=/bin CFLAGS="$(dpkg-buildflags --get CFLAGS)" '
    'CPPFLAGS="$(dpkg-buildflags --get CPPFLAGS)" LDFLAGS="$(dpkg-buildflags --get LDFLAGS)"'
)
NANO = Recipe(
    package="nano",
    commands=(("sh", "-c", NANO_CONFIGURE), ("make", "-j{jobs}")),
    outputs=("src/nano",),
)


# nginx as debian/rules configures it (its cflags: dpkg-buildflags' CFLAGS and
# CPPFLAGS plus -fPIC, hardening=+all), but with nginx's default module set plus
# stub_status (pcre2 and zlib, no SSL, no third-party modules).
NGINX_CONFIGURE = (
    "export DEB_BUILD_MAINT_OPTIONS=hardening=+all; "
    "./configure --with-http_stub_status_module "
    '--with-cc-opt="$(dpkg-buildflags --get CFLAGS) -fPIC $(dpkg-buildflags --get CPPFLAGS)" '
    '--with-ld-opt="$(dpkg-buildflags --get LDFLAGS) -fPIC"'
)
NGINX = Recipe(
    package="nginx",
    commands=(("sh", "-c", NGINX_CONFIGURE), ("make", "-j{jobs}")),
    outputs=("objs/nginx",),
)

# memcached with Debian's flags (hardening=+all) but without SASL and TLS
# (debian/rules adds --enable-sasl --enable-tls): libevent only.
MEMCACHED_CONFIGURE = (
    "export DEB_BUILD_MAINT_OPTIONS=hardening=+all; "
    './configure -q CFLAGS="$(dpkg-buildflags --get CFLAGS)" '
    'CPPFLAGS="$(dpkg-buildflags --get CPPFLAGS)" LDFLAGS="$(dpkg-buildflags --get LDFLAGS)"'
)
MEMCACHED = Recipe(
    package="memcached",
    commands=(("sh", "-c", MEMCACHED_CONFIGURE), ("make", "-j{jobs}", "memcached")),
    outputs=("memcached",),
)


@functools.cache
def _machine_problem() -> tuple[str, str] | None:
    """Why this machine cannot build the programs and what fixes it, or None (checked once)."""
    missing = _missing_packages()
    if missing:
        return missing, f"`sudo bash {PREPARE}` (or `sudo make test`)"
    problem = cache_problem()
    if problem:
        return problem, f"set RELIVE_REALWORLD_CACHE to a folder of yours (not {CACHE})"
    return None


def _missing_packages() -> str | None:
    """What tests/prepare.sh reports missing for these tests (tools, libraries, deb-src)."""
    check = subprocess.run(
        ["bash", str(HERE.parent / "prepare.sh"), "--check", "realworld"],
        capture_output=True,
        text=True,
        check=False,
    )
    if check.returncode == 0:
        return None
    return check.stdout.strip() or f"{PREPARE} --check realworld failed: {check.stderr.strip()}"


def _require_machine() -> None:
    """Skip (one line: why, how to enable) unless this machine can build and run them."""
    problem = _machine_problem()
    if problem is not None:
        cannot_run("real-program tests (tests/realworld)", *problem)


def _tree(recipe: Recipe) -> Iterator[SourceTree]:
    with locked(recipe.package):
        try:
            tree = built_tree(recipe)
        except BuildFailed as e:
            pytest.fail(f"cannot build {recipe.package}: {e}", pytrace=False)
        try:
            yield tree
        finally:
            tree.restore()


@pytest.fixture(scope="session")
def redis_tree() -> Iterator[SourceTree]:
    """redis built from Debian's source package."""
    yield from _tree(REDIS)


@pytest.fixture(scope="session")
def lua_tree() -> Iterator[SourceTree]:
    """lua5.4 built from Debian's source package."""
    yield from _tree(LUA)


@pytest.fixture(scope="session")
def dnsmasq_tree() -> Iterator[SourceTree]:
    """dnsmasq built from Debian's source package."""
    yield from _tree(DNSMASQ)


@pytest.fixture
def redis_src(redis_tree: SourceTree) -> Iterator[SourceTree]:
    """The redis tree; files a test edits are restored after it."""
    yield redis_tree
    redis_tree.restore()


@pytest.fixture
def lua_src(lua_tree: SourceTree) -> Iterator[SourceTree]:
    """The lua5.4 tree; files a test edits are restored after it."""
    yield lua_tree
    lua_tree.restore()


@pytest.fixture
def dnsmasq_src(dnsmasq_tree: SourceTree) -> Iterator[SourceTree]:
    """The dnsmasq tree; files a test edits are restored after it."""
    yield dnsmasq_tree
    dnsmasq_tree.restore()


@pytest.fixture(scope="session")
def sqlite_tree() -> Iterator[SourceTree]:
    """sqlite3 (amalgamation and shell) built from Debian's source package."""
    yield from _tree(SQLITE)


@pytest.fixture(scope="session")
def nano_tree() -> Iterator[SourceTree]:
    """nano built from Debian's source package."""
    yield from _tree(NANO)


@pytest.fixture
def nano_src(nano_tree: SourceTree) -> Iterator[SourceTree]:
    """The nano tree; files a test edits are restored after it."""
    yield nano_tree
    nano_tree.restore()


@pytest.fixture(scope="session")
def nginx_tree() -> Iterator[SourceTree]:
    """nginx built from Debian's source package."""
    yield from _tree(NGINX)


@pytest.fixture
def nginx_src(nginx_tree: SourceTree) -> Iterator[SourceTree]:
    """The nginx tree; files a test edits are restored after it."""
    yield nginx_tree
    nginx_tree.restore()


@pytest.fixture(scope="session")
def memcached_tree() -> Iterator[SourceTree]:
    """memcached built from Debian's source package."""
    yield from _tree(MEMCACHED)


@pytest.fixture
def memcached_src(memcached_tree: SourceTree) -> Iterator[SourceTree]:
    """The memcached tree; files a test edits are restored after it."""
    yield memcached_tree
    memcached_tree.restore()
