#!/usr/bin/env bash
# Installs the Debian packages that licentia's tests and services use, when they are missing.
# As root it installs them with apt-get; otherwise it names what is missing and how to get it.
set -euo pipefail

# command-or-file  debian-package
needs=(
  "softhsm2-util softhsm2"
  "pkcs11-tool opensc"
  "/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so|/usr/lib/aarch64-linux-gnu/engines-3/pkcs11.so libengine-pkcs11-openssl"
  "gnutls-serv gnutls-bin"
  "openssl openssl"
  "redis-server redis-server"
  "pg_ctl|/usr/lib/postgresql/15/bin/pg_ctl postgresql"
  "chromium chromium"
  "chromedriver chromium-driver"
  "gcc gcc"
  "etcd etcd-server"
  "etcdctl etcd-client"
  "slapd|/usr/sbin/slapd slapd"
  "ldapadd ldap-utils"
  "keepalived|/usr/sbin/keepalived keepalived"
)
# the C compiler and the Python headers build the compiled license path (scripts/build_native.py)
py_include=$("${PYTHON:-python3}" -c 'import sysconfig; print(sysconfig.get_paths()["include"])' 2>/dev/null || true)
if [[ -n "$py_include" ]]; then
  needs+=("$py_include/Python.h python3-dev")
fi

have() {
  local alt
  IFS='|' read -ra alts <<<"$1"
  for alt in "${alts[@]}"; do
    if [[ "$alt" == /* ]]; then [[ -e "$alt" ]] && return 0
    else command -v "$alt" >/dev/null 2>&1 && return 0
    fi
  done
  return 1
}

missing=()
for entry in "${needs[@]}"; do
  read -r probe pkg <<<"$entry"
  have "$probe" || missing+=("$pkg")
done

if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi

if [[ $(id -u) -eq 0 ]]; then
  echo "licentia: installing system packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "licentia: these system packages are missing: ${missing[*]}" >&2
  echo "licentia: install them with: sudo apt-get install ${missing[*]}" >&2
  echo "licentia: (tests that need them are skipped with a message naming the package)" >&2
fi
