#!/usr/bin/env bash
# deps.sh: make sure the tools the tests and the demo need are present.
#   scripts/deps.sh redis      redis-server (tests and make run)
#   scripts/deps.sh chromium   headless Chromium (browser tests)
#   scripts/deps.sh openssl    openssl (scripts/dev-certs.sh and its test)
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
    openssl) need_pkg openssl openssl ;;
    nginx)
      # The bench runs its own nginx; one the package may have started on
      # port 80 is stopped, and only when this script installed it.
      had_nginx=0; command -v nginx >/dev/null 2>&1 && had_nginx=1
      [ -x /usr/sbin/nginx ] && had_nginx=1
      if [ "$had_nginx" = 0 ]; then
        need_pkg nginx nginx
        SUDO=""; [ "$(id -u)" != "0" ] && SUDO="sudo -n"
        $SUDO systemctl disable --now nginx >/dev/null 2>&1 || $SUDO service nginx stop >/dev/null 2>&1 || true
      fi ;;
    *) echo "deps: unknown dependency $what" >&2; exit 2 ;;
  esac
done
