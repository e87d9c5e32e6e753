#!/usr/bin/env bash
# Builds the distasks container image (`make image`) from Debian packages and the project's
# own wheels, with nothing pulled from an image registry:
#
#   1. base: a Debian bookworm root filesystem made by mmdebstrap (--variant=minbase plus
#      python3, ca-certificates and tini), imported with `podman import` as
#      localhost/distasks-base:<key>;
#   2. wheels: `pip wheel` on this host, from the tracked files of the work tree, for
#      distasks and its pinned dependencies (and pip itself, run from its wheel to install);
#   3. image: deploy/image/Containerfile, built with `podman build --isolation chroot`
#      (no container runtime needed), tagged localhost/distasks:<version> and :src-<key>.
#
# Every step is cached in .local/image/ (git-ignored) and in podman's image store under a
# content hash: the base by its mmdebstrap options, the image by the source files, this
# script and the Containerfile. Building again from the same files does nothing.
#
# Usage: scripts/image.sh [build|tag|base|manifest|tools]
#   build     (default) build what is missing, print the image's tag
#   tag       print the tag the image of this work tree has (built or not)
#   base      build or import the base only, print its tag
#   manifest  list the built image's files with their SHA-256 (compare two builds)
#   tools     install podman and mmdebstrap if missing, nothing else
#
# Environment (all optional):
#   DISTASKS_IMAGE_NAME=localhost/distasks   the image's name
#   DISTASKS_IMAGE_SOURCE=...                the source label (default: the git remote, if any)
#   PYTHON=.venv/bin/python                  the interpreter whose pip builds the wheels
#   DISTASKS_IMAGE_NO_CACHE=1                podman build --no-cache (a check of reproducibility)
# Needs root (mmdebstrap, podman); installs podman and mmdebstrap with apt-get if missing.
set -euo pipefail
shopt -s inherit_errexit

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE="$ROOT/.local/image"
CONTAINERFILE="$ROOT/deploy/image/Containerfile"
NAME=${DISTASKS_IMAGE_NAME:-localhost/distasks}
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
# The base's Debian suite and packages. python3 is Debian 12's 3.11.2: the wheels are built
# for the same minor version (cp311), as `make dist` does.
SUITE=bookworm
PACKAGES=python3,ca-certificates,tini
# redis needs async-timeout on Python < 3.11.3 but pip leaves it out when the host's Python
# is newer (as in the Makefile's dist target): always include it.
EXTRA_REQUIREMENTS=(async-timeout==5.0.1)
# Documentation, manual pages, translations and info pages are not installed into the
# base (about 20 MB); copyright files are kept.
DPKG_OPTS=(
    --dpkgopt='path-exclude=/usr/share/doc/*'
    --dpkgopt='path-include=/usr/share/doc/*/copyright'
    --dpkgopt='path-exclude=/usr/share/man/*'
    --dpkgopt='path-exclude=/usr/share/locale/*'
    --dpkgopt='path-exclude=/usr/share/info/*'
    --dpkgopt='path-exclude=/usr/share/lintian/*'
    # glibc's iconv modules (8 MB): Python and the wheels convert text without iconv.
    --dpkgopt='path-exclude=/usr/lib/*/gconv/*'
    # Leap-second zones (2 MB); Python's zoneinfo reads the ordinary ones.
    --dpkgopt='path-exclude=/usr/share/zoneinfo/right/*'
)
# apt and what only it needs (9 MB) are purged from the base: the image installs nothing
# at run time. dpkg and its database stay, so scanners still see every package. (libstdc++6,
# which apt brought in, stays: greenlet's extension needs it.)
PURGE=(apt adduser debian-archive-keyring gpgv libapt-pkg6.0 libgnutls30 libhogweed6
    libnettle8 libp11-kit0 libseccomp2 libtasn1-6 libxxhash0)
# A fixed date for the base's files (mmdebstrap makes its output reproducible with it):
# two bases made from the same mirror content are the same bytes.
BASE_EPOCH=1700000000

say() { printf 'image.sh: %s\n' "$*" >&2; }
die() { printf 'image.sh: %s\n' "$*" >&2; exit 1; }

# podman and mmdebstrap from Debian's packages when missing (as scripts/services.sh does
# for the servers); a concurrent apt run is waited for.
ensure_tools() {
    local missing=()
    command -v podman >/dev/null || missing+=(podman)
    command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
    [[ ${#missing[@]} -eq 0 ]] && return 0
    if [[ $EUID -ne 0 ]] || ! command -v apt-get >/dev/null; then
        die "need root and apt-get to install: ${missing[*]}"
    fi
    say "installing ${missing[*]} (apt-get)"
    local opts=(-qq -o DPkg::Lock::Timeout=300 -o Dpkg::Use-Pty=0)
    export DEBIAN_FRONTEND=noninteractive
    { apt-get "${opts[@]}" update &&
        apt-get "${opts[@]}" install -y --no-install-recommends "${missing[@]}"; } \
        </dev/null >"$CACHE/apt.log" 2>&1 || { cat "$CACHE/apt.log" >&2; die "apt-get install failed"; }
}

sha() { sha256sum | cut -c1-16; }

base_key() {
    printf '%s\n' "$SUITE" "$PACKAGES" "$BASE_EPOCH" "${DPKG_OPTS[@]}" "${PURGE[*]}" "$(sed -n '/^base_build()/,/^}/p' "$0")" | sha
}

# What goes into the image: the package and its metadata, the config, this script and the
# Containerfile (a change to the tests or the docs builds nothing new).
IMAGE_SOURCES=(pyproject.toml README.md distasks config/distasks.toml deploy/image scripts/image.sh)

# Those files of the work tree as they are now (uncommitted edits and new files included,
# ignored files not), as a tar with fixed owners and dates: the wheels' source and the key.
source_tar() {
    # shellcheck disable=SC2016 # $f is the inner shell's
    (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard -- "${IMAGE_SOURCES[@]}" |
        xargs -0 -r sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' sh |
        tar --null -T - --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
            --mode=u+rw,go+r,go-w -cf -)
}

image_key() {
    { source_tar; base_key; } | sha
}

version() {
    "$PYTHON" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])'
}

base_build() {
    local tag=$1 tarball=$2
    say "mmdebstrap $SUITE ($PACKAGES) -> $tarball"
    # The host's resolv.conf and hostname are not part of an image (a runtime mounts its own).
    # The hooks' "$1" is mmdebstrap's: the root file system being made.
    # shellcheck disable=SC2016
    # The merged-usr hook makes /bin, /lib and /sbin links without the usrmerge package (and
    # the perl it needs, 40 MB).
    SOURCE_DATE_EPOCH=$BASE_EPOCH mmdebstrap --quiet --variant=minbase --include="$PACKAGES" \
        --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
        --aptopt='Acquire::Languages "none"' "${DPKG_OPTS[@]}" \
        --customize-hook='rm -f "$1/etc/resolv.conf" "$1/etc/hostname"' \
        --customize-hook="chroot \"\$1\" dpkg --purge ${PURGE[*]} >/dev/null" \
        --customize-hook='rm -rf "$1"/var/log/apt' \
        --customize-hook='rm -rf "$1"/var/cache/debconf/*-old "$1"/var/lib/dpkg/*-old' \
        "$SUITE" "${tarball%.tar}.tmp.tar" >"$CACHE/mmdebstrap.log" 2>&1 ||
        { tail -n 30 "$CACHE/mmdebstrap.log" >&2; rm -f "${tarball%.tar}.tmp.tar"; die "mmdebstrap failed"; }
    mv "${tarball%.tar}.tmp.tar" "$tarball"
}

base() {
    local key tag tarball
    key=$(base_key)
    tag="localhost/distasks-base:$SUITE-$key"
    tarball="$CACHE/base-$SUITE-$key.tar"
    if podman image exists "$tag"; then
        printf '%s\n' "$tag"
        return
    fi
    if [[ ! -f $tarball ]]; then
        find "$CACHE" -maxdepth 1 -name 'base-*.tar' -delete
        base_build "$tag" "$tarball"
    fi
    podman import --quiet --change 'CMD ["/bin/bash"]' "$tarball" "$tag" >/dev/null
    say "imported $tarball as $tag"
    printf '%s\n' "$tag"
}

build() {
    local key tag base_tag context revision source epoch started=$SECONDS
    key=$(image_key)
    tag="$NAME:src-$key"
    if podman image exists "$tag"; then
        say "$tag is built (same sources)"
        printf '%s\n' "$tag"
        return
    fi
    base_tag=$(base)

    # The wheels, from a clean copy of the sources (setuptools would reuse a stale build/).
    context="$CACHE/context-$key"
    if [[ ! -f $context/.complete ]]; then
        rm -rf "$context" "$context.src"
        mkdir -p "$context/wheels" "$context/tools" "$context.src"
        source_tar | tar -xf - -C "$context.src"
        say "pip wheel -> $context/wheels"
        SOURCE_DATE_EPOCH=315532800 "$PYTHON" -m pip wheel --quiet --disable-pip-version-check \
            --wheel-dir "$context/wheels" "$context.src" "${EXTRA_REQUIREMENTS[@]}" \
            2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
        # pip installs the wheels inside the image from its own wheel, and is not kept there.
        "$PYTHON" -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
            --no-deps --dest "$context/tools" "pip==$("$PYTHON" -m pip --version | cut -d' ' -f2)"
        sed -e 's/^host = "127.0.0.1" .*/host = "0.0.0.0"                     # every interface of the container/' \
            -e 's/^anonymous = "loopback"/anonymous = "none"/' \
            "$ROOT/config/distasks.toml" >"$context/distasks.toml"
        if ! grep -q '^host = "0.0.0.0"' "$context/distasks.toml" ||
            ! grep -q '^anonymous = "none"' "$context/distasks.toml"; then
            die "config/distasks.toml changed: the image's http.host and auth.anonymous were not set"
        fi
        rm -rf "$context.src"
        touch "$context/.complete"
    fi

    revision=$(cd "$ROOT" && git rev-parse HEAD 2>/dev/null || echo unknown)
    if [[ -n $(cd "$ROOT" && git status --porcelain --untracked-files=no 2>/dev/null) ]]; then
        revision="$revision-dirty"
    fi
    # The remote's URL, if it has one (a clone of a local folder names only a path here).
    source=${DISTASKS_IMAGE_SOURCE:-$(git -C "$ROOT" remote get-url origin 2>/dev/null || true)}
    [[ $source == *://* || $source == *@*:* ]] || source=unknown
    # The image's dates (its history and every file of its layers): the commit's.
    epoch=$(cd "$ROOT" && git log -1 --format=%ct 2>/dev/null || echo 0)
    say "podman build $tag"
    podman build --quiet --isolation chroot --format docker --timestamp "$epoch" \
        --pull=never ${DISTASKS_IMAGE_NO_CACHE:+--no-cache} \
        --build-arg "BASE=$base_tag" --build-arg "VERSION=$(version)" \
        --build-arg "REVISION=$revision" --build-arg "SOURCE=$source" \
        --file "$CONTAINERFILE" --tag "$tag" --tag "$NAME:$(version)" "$context" >/dev/null
    # What this cache held for other sources (podman's store keeps their images).
    find "$CACHE" -maxdepth 1 -name 'context-*' ! -name "context-$key" -exec rm -rf {} +
    say "built $tag in $((SECONDS - started)) s, $(podman image inspect --format '{{.Size}}' "$tag" |
        awk '{printf "%.0f MB", $1 / 1e6}')"
    printf '%s\n' "$tag"
}

# Every entry of the image's file system, one a line: path, mode, owner, group, date and
# a regular file's SHA-256 or a link's target. Two builds of one commit print the same.
manifest() {
    local tag root
    tag="$NAME:src-$(image_key)"
    root=$(podman image mount "$tag")
    # shellcheck disable=SC2064 # expanded now: the tag of this call
    trap "podman image unmount '$tag' >/dev/null" RETURN
    "$PYTHON" - "$root" <<'PY'
import hashlib, os, stat, sys

root = sys.argv[1]
for top, dirs, files in os.walk(root):
    dirs.sort()
    for name in sorted(dirs + files):
        path = os.path.join(top, name)
        info = os.lstat(path)
        if stat.S_ISLNK(info.st_mode):
            detail = os.readlink(path)
        elif stat.S_ISREG(info.st_mode):
            with open(path, "rb") as f:
                detail = hashlib.file_digest(f, "sha256").hexdigest()
        else:
            detail = ""
        print(os.path.relpath(path, root), oct(info.st_mode), info.st_uid, info.st_gid,
              int(info.st_mtime), detail)
PY
}

main() {
    mkdir -p "$CACHE"
    case "${1:-build}" in
    tag) printf '%s\n' "$NAME:src-$(image_key)" ;;
    base) ensure_tools && base ;;
    tools) ensure_tools ;;
    build) ensure_tools && build ;;
    manifest) manifest ;;
    *) die "usage: $0 [build|tag|base|manifest|tools]" ;;
    esac
}

main "$@"
