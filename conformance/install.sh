#!/usr/bin/env bash
# Install the Autobahn TestSuite (wstest, Python 2.7) into $AUTOBAHN_PREFIX (default /opt/autobahn).
#
# Idempotent: when everything is already in place it only checks and exits (well under a second).
# Needs root (apt-get) the first time. Debian 12 ships no Python 2.7, so the `bullseye` suite is
# added as a low-priority (Pin-Priority 100) apt source used only for python2.7 and its libraries.
set -euo pipefail

PREFIX="${AUTOBAHN_PREFIX:-/opt/autobahn}"
PY2=/usr/bin/python2.7          # absolute: pyenv shims on PATH may shadow `python2.7`

# Exact pins of the whole dependency closure (what pip resolved for Python 2.7), so every machine
# gets the same suite. Autobahn 0.8.2 is the last wstest release; the rest are the newest releases
# that still support Python 2.7 and fit together.
PKGS=(
  autobahntestsuite==0.8.2 autobahn==0.10.9 txaio==2.1.0 Twisted==20.3.0
  wsaccel==0.6.6
  jinja2==2.11.3 markupsafe==1.1.1 Werkzeug==1.0.1 klein==20.6.0
  pyopenssl==19.1.0 cryptography==3.3.2 service-identity==18.1.0 cffi==1.15.1 pycparser==2.21
  zope.interface==5.5.2 attrs==21.4.0 incremental==21.3.0 hyperlink==20.0.1 Automat==20.2.0
  idna==2.10 six==1.17.0 constantly==15.1.0 PyHamcrest==1.10.1 pyasn1==0.4.8
  pyasn1-modules==0.2.8 enum34==1.1.10 ipaddress==1.0.23 Tubes==0.2.1 typing==3.10.0.0
  unittest2==1.1.0 linecache2==1.0.0 traceback2==1.4.0
)
# Changing the list above (or this script's logic version) forces a re-install.
STAMP_VALUE="v1 ${PKGS[*]}"
STAMP="$PREFIX/.installed"

log() { printf '[install] %s\n' "$*" >&2; }
die() { printf '[install] ERROR: %s\n' "$*" >&2; exit 1; }

site_dir() { echo "$PREFIX/lib/python2.7/site-packages"; }

check() {
  [[ -x $PY2 && -x $PREFIX/bin/wstest && -f $STAMP ]] || return 1
  [[ -d $(site_dir)/wsaccel && -d $(site_dir)/autobahntestsuite ]] || return 1
  [[ "$(cat "$STAMP")" == "$STAMP_VALUE" ]] || return 1
  "$PY2" -c 'import wsaccel, autobahntestsuite, twisted' 2>/dev/null || return 1
  "$PREFIX/bin/wstest" --help >/dev/null 2>&1 || return 1
}

if check; then
  log "Autobahn TestSuite already installed in $PREFIX"
  exit 0
fi

[[ $(id -u) -eq 0 ]] || die "must run as root the first time (apt-get, $PREFIX)"
export DEBIAN_FRONTEND=noninteractive

# ---------------------------------------------------------------- python2.7 from bullseye
need_apt=()
for p in python2.7 python2.7-dev gcc; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need_apt+=("$p")
done
if ((${#need_apt[@]})); then
  # Same mirror and keyring as the machine's own bookworm source (deb822 or one-line format).
  mirror="" keyring=""
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f $f && $f != */bullseye.sources ]] || continue
    if grep -qE '^Suites:.*\bbookworm\b' "$f"; then
      mirror=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' "$f")
      keyring=$(awk '/^Signed-By:/ {print $2; exit}' "$f")
      [[ -n $mirror ]] && break
    fi
  done
  if [[ -z $mirror ]]; then
    mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
      | awk '$1=="deb" && / bookworm / {for(i=2;i<=NF;i++) if ($i ~ /^https?:/ && $i !~ /security/) {print $i; exit}}' || true)
  fi
  mirror=${mirror:-http://deb.debian.org/debian}
  keyring=${keyring:-/usr/share/keyrings/debian-archive-keyring.gpg}
  log "adding Debian bullseye from $mirror (keyring $keyring), pinned at priority 100"
  cat > /etc/apt/sources.list.d/bullseye.sources <<SRC
# Added by tidewire conformance/install.sh: Python 2.7 for the Autobahn TestSuite.
Types: deb
URIs: $mirror
Suites: bullseye
Components: main
Signed-By: $keyring
SRC
  cat > /etc/apt/preferences.d/bullseye-low <<PIN
# Added by tidewire conformance/install.sh: never upgrade anything from bullseye.
Package: *
Pin: release n=bullseye
Pin-Priority: 100
PIN
  log "apt-get update"
  apt-get update -qq || die "apt-get update failed"
  log "apt-get install ${need_apt[*]}"
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null \
    || die "apt-get install ${need_apt[*]} failed"
fi
[[ -x $PY2 ]] || die "$PY2 missing after apt-get install"

# ---------------------------------------------------------------- pip for python2.7
mkdir -p "$PREFIX"
SITE=$(site_dir)
# Register the prefix's site dir with python2.7 (addsitedir also processes its .pth files,
# which the namespace package `zope` needs).
PY2_SITE=$("$PY2" -c 'import site; print(site.getsitepackages()[0])')
mkdir -p "$PY2_SITE" "$SITE"
if [[ $PREFIX == /opt/autobahn ]]; then
  PTH="$PY2_SITE/autobahn-prefix.pth"
else
  PTH="$PY2_SITE/autobahn-prefix-$(printf '%s' "$PREFIX" | md5sum | cut -c1-8).pth"
fi
echo "import site; site.addsitedir('$SITE')" > "$PTH"

if ! python3 -m pip --version >/dev/null 2>&1; then
  log "apt-get install python3-pip (to fetch the pip wheels for python2.7)"
  apt-get install -y -qq --no-install-recommends python3-pip >/dev/null || die "apt-get install python3-pip failed"
fi

BOOT="$PREFIX/bootstrap"
if [[ ! -f $SITE/pip/__init__.py || ! -f $SITE/setuptools/__init__.py || ! -f $SITE/wheel/__init__.py ]]; then
  log "bootstrapping pip for python2.7"
  mkdir -p "$BOOT"
  python3 -m pip download -q --no-deps --python-version 2.7 --only-binary=:all: \
    --platform any -d "$BOOT" pip==20.3.4 setuptools==44.1.1 wheel==0.37.1 \
    || die "could not download the pip/setuptools/wheel wheels with python3's pip"
  "$PY2" "$BOOT"/pip-20.3.4-py2.py3-none-any.whl/pip install -q --no-warn-script-location --no-python-version-warning \
    --ignore-installed --prefix "$PREFIX" --no-index "$BOOT"/*.whl || die "pip bootstrap failed"
fi

PIP=(env PYTHONPATH="$SITE" "$PY2" -m pip)   # this prefix's pip first
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONWARNINGS=ignore
log "pip install ${#PKGS[@]} packages into $PREFIX (about 40 s the first time)"
"${PIP[@]}" install -q --no-warn-script-location --no-python-version-warning --ignore-installed \
  --prefix "$PREFIX" "${PKGS[@]}" \
  || die "pip install of the Autobahn TestSuite failed"

echo "$STAMP_VALUE" > "$STAMP"
check || die "installed, but '$PREFIX/bin/wstest --help' or 'import wsaccel' fails"
log "OK: $PREFIX/bin/wstest ($("$PY2" --version 2>&1), wsaccel present)"
