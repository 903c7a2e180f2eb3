# Sourced by stack.sh and test.sh: installing Debian packages where a tool is missing.

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_updated=""
# apt_install PACKAGE...: installs without recommends' prompts; `apt-get update` once per run.
apt_install() {
  if [ -z "$apt_updated" ]; then
    as_root apt-get update -qq
    apt_updated=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
