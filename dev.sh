#!/usr/bin/env bash
# gridwatch's one entry point for a fresh machine: installs what the project needs, then runs it.
#   ./dev.sh demo            set up, then run the demo (no servers needed)
#   ./dev.sh test [ARGS]     set up, then run the test suite (pytest ARGS)
#   ./dev.sh bench SUITE     set up, then run a benchmark suite (processors, ingest, mqtt)
#   ./dev.sh setup           only set up
# Python packages go into .venv; Debian packages (Mosquitto, OpenSSL, GStreamer RTSP server,
# FFmpeg tools, Java for Kafka/QuestDB, Chromium for the console's browser tests) are installed with apt-get when missing (needs root).
set -euo pipefail
cd "$(dirname "$0")"

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
VENV=.venv

DEBS_RUNTIME=(mosquitto mosquitto-clients openssl)
DEBS_TEST=(python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good
           gstreamer1.0-plugins-ugly gstreamer1.0-plugins-bad ffmpeg opencv-doc chromium)

log() { printf '\033[1m[gridwatch]\033[0m %s\n' "$*" >&2; }

install_debs() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    log "missing Debian packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})"
    return 1
  fi
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # the project starts its own brokers on free ports; the distribution's service is not wanted
  if [ -x /usr/bin/systemctl ] && systemctl is-active --quiet mosquitto 2>/dev/null; then systemctl stop mosquitto || true; fi
}

setup_python() {
  local extra="$1" stamp="$VENV/.installed-$1"
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV with $($PY --version)"
    "$PY" -m venv "$VENV"
  fi
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    log "installing Python packages ($extra)"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    if [ "$extra" = "runtime" ]; then
      "$VENV/bin/python" -m pip install -q -e .
    else
      "$VENV/bin/python" -m pip install -q -e ".[$extra]"
    fi
    touch "$stamp"
  fi
}

install_java() {  # Kafka and QuestDB tests run on the JVM; their jars come from Maven Central
  command -v java >/dev/null 2>&1 || install_debs openjdk-17-jre-headless
  command -v mvn >/dev/null 2>&1 || install_debs maven
}

cmd=${1:-help}; shift || true
case "$cmd" in
  setup)
    install_debs "${DEBS_RUNTIME[@]}" "${DEBS_TEST[@]}"
    install_java
    setup_python test ;;
  demo)
    setup_python runtime
    exec "$VENV/bin/gridwatch" demo "$@" ;;
  test)
    install_debs "${DEBS_RUNTIME[@]}" "${DEBS_TEST[@]}"
    install_java
    setup_python test
    log "running the tests"
    exec "$VENV/bin/python" -m pytest "$@" ;;
  bench)
    install_debs "${DEBS_RUNTIME[@]}"
    setup_python test
    exec "$VENV/bin/gridwatch" bench "$@" ;;
  *)
    sed -n '2,9p' "$0"; exit 2 ;;
esac
