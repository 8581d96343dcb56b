#!/usr/bin/env bash
# Make a Debian machine ready for tests/realworld: deb-src lines for the suites apt
# already uses (so `apt-get source` works) and what the programs' builds need.
# Idempotent and quiet: does nothing when all is there; needs root otherwise.
set -euo pipefail

PACKAGES=(
  dpkg-dev xz-utils          # apt-get source: dpkg-source unpacks and patches
  gcc make pkg-config bear   # the builds; bear writes compile_commands.json
  libjemalloc-dev            # redis, linked with Debian's jemalloc as debian/rules does
  libtool-bin libreadline-dev  # lua5.4: Debian's Makefile uses libtool; linux-readline
  libncurses-dev tmux        # nano, and the terminal it runs in
)
DEB_SRC=/etc/apt/sources.list.d/relive-deb-src.sources

missing=()
for package in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}\n' "$package" 2>/dev/null | grep -q '^install ok installed$' \
    || missing+=("$package")
done

have_deb_src() {
  grep -rqsE '^\s*(Types:.*\bdeb-src\b|deb-src\s)' /etc/apt/sources.list /etc/apt/sources.list.d/
}

# The Debian sources apt already uses, as deb822 stanzas of "Types: deb-src": those
# of debian.sources, and the one-line "deb URI suite components" of sources.list.
deb_src_lines() {
  python3 - <<'PY'
import os, re
out = []
path = "/etc/apt/sources.list.d/debian.sources"
if os.path.isfile(path):
    for stanza in re.split(r"\n\s*\n", open(path).read()):
        fields = dict(re.findall(r"^([\w-]+):\s*(.*)$", stanza, re.M))
        if "deb" in fields.get("Types", "").split() and fields.get("Enabled", "yes") != "no":
            out.append(re.sub(r"^Types:.*$", "Types: deb-src", stanza.strip(), flags=re.M))
path = "/etc/apt/sources.list"
if os.path.isfile(path):
    for line in open(path):
        m = re.match(r"\s*deb\s+(?:\[([^]]*)\]\s+)?(\S*debian\S*)\s+(\S+)\s+(.*)", line)
        if m:
            stanza = f"Types: deb-src\nURIs: {m[2]}\nSuites: {m[3]}\nComponents: {m[4].strip()}"
            signed = re.search(r"signed-by=(\S+)", m[1] or "")
            out.append(stanza + (f"\nSigned-By: {signed[1]}" if signed else ""))
print("\n\n".join(out))
PY
}

need_update=false
if ! have_deb_src; then
  lines=$(deb_src_lines)
  if [ -z "${lines//[[:space:]]/}" ]; then
    echo "prepare.sh: no Debian apt source found to add deb-src lines for" >&2
    exit 1
  fi
  if [ "$(id -u)" -ne 0 ]; then
    echo "prepare.sh: as root, add deb-src lines for Debian's suites (e.g. $DEB_SRC)" >&2
    exit 1
  fi
  printf '%s\n' "$lines" > "$DEB_SRC"
  need_update=true
elif ! apt-get source --print-uris lua5.4 >/dev/null 2>&1; then
  need_update=true  # deb-src lines present, their index not fetched yet
fi

if [ ${#missing[@]} -gt 0 ] || $need_update; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "prepare.sh: as root, run apt-get update and install: ${missing[*]:-(nothing)}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi
