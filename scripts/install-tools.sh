#!/usr/bin/env bash
# Installs the tools that check the deployment files (tests/system/test_deploy.py):
# systemd-analyze (Debian package systemd), nginx, and promtool (Debian package prometheus).
# Idempotent and quiet: installs only what is missing, prints one line per install.
# Needs root and apt-get; no service is started (policy-rc.d forbids it during the install).
set -euo pipefail

# Debian puts nginx in /usr/sbin, which a non-login shell may not have on PATH.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

missing=()
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v nginx >/dev/null || missing+=(nginx)
command -v promtool >/dev/null || missing+=(prometheus)
if [ ${#missing[@]} -eq 0 ]; then
	exit 0
fi

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
	echo "install-tools: need root and apt-get to install: ${missing[*]}" >&2
	exit 1
fi

# The packages' maintainer scripts would start nginx on :80 and Prometheus on :9090; a
# policy-rc.d that exits 101 ("action forbidden") stops invoke-rc.d from doing so. A
# machine that already has one (container images do) keeps its own.
policy=/usr/sbin/policy-rc.d
made_policy=
# apt's chatter (debconf, "Created symlink", invoke-rc.d's refusals) is shown only on failure.
log=$(mktemp)
trap 'rm -f "$log"; [ -z "$made_policy" ] || rm -f "$policy"' EXIT
if [ ! -e "$policy" ]; then
	printf '#!/bin/sh\nexit 101\n' >"$policy"
	chmod 755 "$policy"
	made_policy=1
fi

export DEBIAN_FRONTEND=noninteractive
# Wait for a concurrent apt (another session's install) instead of failing at once.
apt_opts=(-qq -o DPkg::Lock::Timeout=300 -o Dpkg::Use-Pty=0)
start=$SECONDS
if ! { apt-get "${apt_opts[@]}" update &&
	apt-get "${apt_opts[@]}" install -y --no-install-recommends "${missing[@]}"; } >"$log" 2>&1 </dev/null; then
	cat "$log" >&2
	echo "install-tools: apt-get install ${missing[*]} failed" >&2
	exit 1
fi
echo "install-tools: installed ${missing[*]} in $((SECONDS - start))s"
