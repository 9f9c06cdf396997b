#!/usr/bin/env bash
# Installs the given Debian packages (with sudo when not root); does nothing without any.
# Shared by the scripts that prepare a fresh machine. Recommended packages stay out: with
# them, chromium alone pulled 131 packages and upgraded systemd in place.
set -euo pipefail
[ "$#" -gt 0 ] || exit 0
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@"
