#!/usr/bin/env bash
# deps.sh: make sure the tools the tests and the demo need are present.
#   scripts/deps.sh redis      redis-server (tests and make run)
#   scripts/deps.sh chromium   headless Chromium (browser tests)
#   scripts/deps.sh nginx      nginx (make bench's nginx + auth_request + OPA comparison)
# Installs through apt-get when missing and allowed (root, or sudo without a
# password); otherwise says exactly what to run. PASSPORT_NO_INSTALL=1 never installs.
set -euo pipefail

need_pkg() { # $1 = command, $2 = Debian package
  if command -v "$1" >/dev/null 2>&1; then return 0; fi
  if [ "${PASSPORT_NO_INSTALL:-}" = "1" ]; then
    echo "deps: $1 is missing; install it with: sudo apt-get install -y $2" >&2
    return 1
  fi
  local SUDO=""
  if [ "$(id -u)" != "0" ]; then
    if sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
      echo "deps: $1 is missing and I cannot install it without root; run: sudo apt-get update && sudo apt-get install -y $2" >&2
      return 1
    fi
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "deps: $1 is missing and this system has no apt-get; install the $2 package with your package manager" >&2
    return 1
  fi
  echo "deps: installing $2 with apt-get" >&2
  $SUDO apt-get update -qq >/dev/null 2>&1 || true
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$2" >/dev/null
  command -v "$1" >/dev/null 2>&1
}

for what in "$@"; do
  case "$what" in
    redis) need_pkg redis-server redis-server ;;
    chromium) need_pkg chromium chromium ;;
    nginx) need_pkg nginx nginx ;;
    *) echo "deps: unknown dependency $what" >&2; exit 2 ;;
  esac
done
