# Shared by every infra script: where things live and small process helpers. Sourced, never run.
# FERRY_HOME keeps what is installed (venv, Kafka jars, converted models) and is shared by every clone on the machine,
# so a second run or a fresh clone reuses it. FERRY_STATE keeps this checkout's data, pids and logs.
set -euo pipefail

FERRY_ROOT=${FERRY_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
FERRY_HOME=${FERRY_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/ferry}
FERRY_STATE=${FERRY_STATE:-$FERRY_ROOT/.state}
FERRY_LOGS=$FERRY_STATE/logs
FERRY_RUN=$FERRY_STATE/run
FERRY_VENV=${FERRY_VENV:-$FERRY_HOME/venv}

FERRY_KAFKA_PORT=${FERRY_KAFKA_PORT:-9092}
FERRY_KAFKA_CONTROLLER_PORT=${FERRY_KAFKA_CONTROLLER_PORT:-9093}
FERRY_POSTGRES_PORT=${FERRY_POSTGRES_PORT:-55432}
FERRY_REDIS_PORT=${FERRY_REDIS_PORT:-56379}
export FERRY_ROOT FERRY_HOME FERRY_STATE FERRY_VENV FERRY_KAFKA_PORT FERRY_POSTGRES_PORT FERRY_REDIS_PORT

mkdir -p "$FERRY_HOME" "$FERRY_LOGS" "$FERRY_RUN"

log() { printf '[ferry] %s\n' "$*" >&2; }
die() { printf '[ferry] error: %s\n' "$*" >&2; exit 1; }

# port_open PORT: true when something accepts TCP connections on 127.0.0.1:PORT.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_for_port PORT SECONDS NAME [PIDFILE]: waits until the port accepts connections; fails early if PIDFILE's process died.
wait_for_port() {
  local port=$1 seconds=$2 name=$3 pidfile=${4:-} waited=0
  until port_open "$port"; do
    if [[ -n $pidfile ]] && ! pid_alive "$pidfile"; then
      die "$name exited while starting; see $FERRY_LOGS/$name.log"
    fi
    (( waited++ < seconds * 5 )) || die "$name not ready on port $port after ${seconds}s; see $FERRY_LOGS/$name.log"
    sleep 0.2
  done
}

# pid_alive PIDFILE: true when the file names a running process.
pid_alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# stop_pid NAME SECONDS: SIGTERM the process in $FERRY_RUN/NAME.pid (it drains), wait, then SIGKILL. Services run in
# their own session (setsid), so the whole process group is killed last: a vLLM worker's EngineCore child would
# otherwise outlive its parent holding gigabytes. Idempotent.
stop_pid() {
  local name=$1 seconds=${2:-20} pidfile="$FERRY_RUN/$1.pid" waited=0
  if pid_alive "$pidfile"; then
    local pid; pid=$(cat "$pidfile")
    kill -TERM "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null && (( waited++ < seconds * 5 )); do sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then log "$name did not stop in ${seconds}s; killing"; fi
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    log "$name stopped"
  fi
  rm -f "$pidfile"
}

# status_line NAME STATE [PID PORT]: the one-line format of `infra/platform status`.
status_line() {
  if [[ $# -ge 4 ]]; then printf '%-28s %-8s pid %-8s 127.0.0.1:%s\n' "$1" "$2" "$3" "$4"; else printf '%-28s %s\n' "$1" "$2"; fi
}

# apt_install PKG...: installs Debian packages that are missing (apt-get update once per run).
apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  (( ${#missing[@]} == 0 )) && return 0
  command -v apt-get >/dev/null || die "missing packages ${missing[*]} and no apt-get"
  local sudo=""; [[ $(id -u) == 0 ]] || sudo=sudo
  log "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
