# shellcheck shell=bash
# Helpers of the ci/*.sh scripts; source it after setting SAY_PREFIX (the tag of their messages).

say() { printf '[%s] %s\n' "$SAY_PREFIX" "$*" >&2; }

# apt-get install the packages given, quietly; as root only (else say how and exit 1).
# A failed install is retried once after an apt-get update (stale package lists).
apt_install() {
  if [ "$(id -u)" != 0 ]; then
    say "missing: $* -- run as root: apt-get install -y $*"; exit 1
  fi
  say "apt-get install $*"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  fi
}
