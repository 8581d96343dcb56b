#!/usr/bin/env bash
# Make this machine ready for the whole test suite (run by `make test` and .ci/run):
#  - clang, for the tests that build their C programs with clang too;
#  - for tests/realworld: deb-src lines for the Debian or Ubuntu suites apt already
#    uses (so `apt-get source` works), dpkg-dev, bear, tmux and the programs' build
#    dependencies.
# As root with apt-get it installs what is missing (apt-get update first) and is silent
# when all is there. Otherwise it changes nothing and prints one line per missing part,
# with the command that installs it; the tests that need that part skip, each saying why.
# It never fails: `make test` goes on and runs everything it can.
#
#   bash tests/prepare.sh               prepare (or explain what is missing)
#   bash tests/prepare.sh --check NAME  print why part NAME (clang, realworld) cannot
#                                       run, exit 1; exit 0 silently when it can
#   bash tests/prepare.sh --deb-src     print the deb-src stanzas it would add
#                                       (under $APT_ROOT if set: tests use that)
set -uo pipefail

CLANG=(clang)
REALWORLD=(
  dpkg-dev xz-utils            # apt-get source: dpkg-source unpacks and patches
  gcc make pkg-config bear     # the builds; bear writes compile_commands.json
  libjemalloc-dev              # redis, linked with the distribution's jemalloc
  libtool-bin libreadline-dev  # lua5.4: Debian's Makefile uses libtool; linux-readline
  libncurses-dev tmux          # nano, and the terminal it runs in
  libpcre2-dev zlib1g-dev      # nginx (its default modules: rewrite, gzip)
  libevent-dev                 # memcached
  tcl                          # sqlite3: tclsh generates the amalgamation
)
DEB_SRC=/etc/apt/sources.list.d/relive-deb-src.sources
ENABLE="sudo bash tests/prepare.sh (or sudo make test)"

is_root() { [ "$(id -u)" -eq 0 ]; }
have() { command -v "$1" >/dev/null 2>&1; }

# The packages of "$@" that dpkg does not list as installed.
missing_packages() {
  local package
  for package in "$@"; do
    dpkg-query -W -f='${Status}\n' "$package" 2>/dev/null | grep -q '^install ok installed$' \
      || printf '%s ' "$package"
  done
}

have_deb_src() {
  grep -rqsE '^\s*(Types:.*\bdeb-src\b|deb-src\s)' /etc/apt/sources.list /etc/apt/sources.list.d/
}

# Whether apt knows a source package, i.e. the deb-src indexes have been fetched.
deb_src_indexed() { apt-get source --print-uris lua5.4 >/dev/null 2>&1; }

# deb822 stanzas of "Types: deb-src" for the distribution's own suites that apt uses:
# those of debian.sources / ubuntu.sources, and the one-line "deb URI suite components"
# of sources.list whose URI is Debian's or Ubuntu's (third-party repositories often
# publish no sources, and a missing index would make apt-get update fail).
deb_src_lines() {
  APT_ROOT="${APT_ROOT:-}" python3 - <<'PY'
import glob, os, re
root = os.environ["APT_ROOT"]
out = []
for name in ("debian.sources", "ubuntu.sources"):
    path = f"{root}/etc/apt/sources.list.d/{name}"
    if os.path.isfile(path):
        for stanza in re.split(r"\n\s*\n", open(path).read()):
            fields = dict(re.findall(r"^([\w-]+):\s*(.*)$", stanza, re.M))
            if "deb" in fields.get("Types", "").split() and fields.get("Enabled", "yes") != "no":
                out.append(re.sub(r"^Types:.*$", "Types: deb-src", stanza.strip(), flags=re.M))
for path in [f"{root}/etc/apt/sources.list", *sorted(glob.glob(f"{root}/etc/apt/sources.list.d/*.list"))]:
    if not os.path.isfile(path):
        continue
    for line in open(path):
        m = re.match(r"\s*deb\s+(?:\[([^]]*)\]\s+)?(\S*(?:debian|ubuntu)\S*)\s+(\S+)\s+(.*)", line)
        if m:
            stanza = f"Types: deb-src\nURIs: {m[2]}\nSuites: {m[3]}\nComponents: {m[4].strip()}"
            signed = re.search(r"signed-by=(\S+)", m[1] or "")
            out.append(stanza + (f"\nSigned-By: {signed[1]}" if signed else ""))
print("\n\n".join(out))
PY
}

# Why part $1 (venv, clang, realworld) cannot run now, or nothing when it can.
why_not() {
  case "$1" in
    venv)  # Debian's and Ubuntu's python3 creates no venv without python3-venv
      "${PYTHON:-python3}" -c 'import ensurepip' 2>/dev/null \
        || echo "${PYTHON:-python3} cannot create a venv (no ensurepip)"
      ;;
    clang)
      have clang || echo "clang is not installed"
      ;;
    realworld)
      if ! have apt-get || ! have dpkg-query; then
        echo "they need a Debian or Ubuntu machine (apt-get source, dpkg)"
        return
      fi
      local missing
      missing=$(missing_packages "${REALWORLD[@]}")
      [ -z "$missing" ] || echo "packages not installed: ${missing% }"
      if ! have_deb_src; then
        echo "apt has no deb-src lines, so apt-get source cannot fetch the programs"
      elif ! deb_src_indexed; then
        echo "apt's deb-src indexes are not fetched (apt-get update)"
      fi
      ;;
  esac
}

if [ "${1:-}" = "--deb-src" ]; then
  deb_src_lines
  exit 0
fi

if [ "${1:-}" = "--check" ]; then
  reasons=$(why_not "${2:?usage: prepare.sh --check clang|realworld}")
  [ -z "$reasons" ] && exit 0
  echo "${reasons//$'\n'/; }"
  exit 1
fi

# --- prepare ------------------------------------------------------------------------

venv_missing=$(why_not venv)
clang_missing=$(why_not clang)
realworld_missing=$(why_not realworld)
[ -z "$venv_missing$clang_missing$realworld_missing" ] && exit 0

say() { echo "tests/prepare.sh: $*" >&2; }

if ! is_root || ! have apt-get; then
  why=$(is_root && echo "no apt-get" || echo "not root")
  [ -n "$venv_missing" ] && say "$venv_missing ($why): make cannot set up .venv; to fix: sudo apt-get install python3-venv"
  [ -n "$clang_missing" ] && say "$clang_missing ($why): the clang tests will be skipped; to run them: $ENABLE"
  [ -n "$realworld_missing" ] && say "tests/realworld: ${realworld_missing//$'\n'/; } ($why): they will be skipped; to run them: $ENABLE"
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
packages=()
[ -n "$venv_missing" ] && packages+=(python3-venv)
[ -n "$clang_missing" ] && packages+=("${CLANG[@]}")
if [ -n "$realworld_missing" ]; then
  read -r -a more <<<"$(missing_packages "${REALWORLD[@]}")"
  packages+=("${more[@]}")
  if ! have_deb_src; then
    lines=$(deb_src_lines)
    if [ -n "${lines//[[:space:]]/}" ]; then
      printf '%s\n' "$lines" >"$DEB_SRC"
      say "added deb-src lines for apt's own suites in $DEB_SRC"
    else
      say "no Debian or Ubuntu apt source to add deb-src lines for: tests/realworld will be skipped"
    fi
  fi
fi

say "installing what the tests need: apt-get update; apt-get install ${packages[*]:-(nothing)}"
if ! log=$(apt-get update -qq 2>&1); then
  say "apt-get update failed, the tests that need what is missing will be skipped: $(tail -n 1 <<<"$log")"
  exit 0
fi
if [ ${#packages[@]} -gt 0 ] \
  && ! log=$(apt-get install -y -qq --no-install-recommends "${packages[@]}" 2>&1); then
  say "apt-get install failed, the tests that need it will be skipped: $(tail -n 1 <<<"$log")"
fi
exit 0
