# Shared by the interop scripts (sourced, not run): the Python venv in interop/.venv with the
# pinned `websockets` of interop/requirements.txt, reinstalled only when that file changes.
# The caller defines log(), LOG_DIR and SETUP_TIMEOUT before sourcing; this file defines
# VENV, VPY, show_tail, hash_of and setup_python (which returns 1 and leaves the reason in
# PYTHON_SETUP_ERROR when it cannot set the venv up).

INTEROP_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$INTEROP_DIR/.venv"
VPY="$VENV/bin/python"
PYTHON_SETUP_ERROR=""

show_tail() { # file [lines]
  [ -s "$1" ] || return 0
  echo "    --- last lines of $1 ---"
  tail -n "${2:-25}" "$1" | sed 's/^/    | /'
}

hash_of() { sha256sum "$@" | sha256sum | cut -c1-64; }

setup_python() {
  local logf="$LOG_DIR/setup-python.log" stamp="$VENV/.interop-stamp" want
  want="$(hash_of "$INTEROP_DIR/requirements.txt")"
  if [ -x "$VPY" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] \
     && "$VPY" -c 'import websockets' 2>/dev/null; then
    log "python: venv up to date (websockets $("$VPY" -c 'import websockets; print(websockets.__version__)'))"
    return 0
  fi
  local py=""
  for cand in "${INTEROP_PYTHON:-}" python3.11 python3; do
    if [ -n "$cand" ] && command -v "$cand" >/dev/null 2>&1; then py="$cand"; break; fi
  done
  if [ -z "$py" ]; then PYTHON_SETUP_ERROR="no python3 found"; log "$PYTHON_SETUP_ERROR"; return 1; fi
  log "python: installing websockets into $VENV (log: $logf)"
  {
    { [ -x "$VPY" ] || timeout "$SETUP_TIMEOUT" "$py" -m venv "$VENV"; } &&
      timeout "$SETUP_TIMEOUT" "$VPY" -m pip install --disable-pip-version-check -q \
        -r "$INTEROP_DIR/requirements.txt" &&
      "$VPY" -c 'import websockets'
  } >"$logf" 2>&1
  if [ $? -ne 0 ]; then
    PYTHON_SETUP_ERROR="venv setup failed (see $logf)"
    log "python: $PYTHON_SETUP_ERROR"
    show_tail "$logf"
    return 1
  fi
  echo "$want" >"$stamp"
  log "python: websockets $("$VPY" -c 'import websockets; print(websockets.__version__)') installed"
}
