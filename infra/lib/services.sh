# The platform's own services as background processes: start (idempotent, waits for /health), stop (SIGTERM, which
# drains), status. Sourced after common.sh and python.sh.

# service_start NAME PORT MODULE [VAR=VALUE...]
service_start() {
  local name=$1 port=$2 module=$3; shift 3
  local pidfile=$FERRY_RUN/$name.pid
  if pid_alive "$pidfile"; then log "$name already running (pid $(cat "$pidfile"))"; return 0; fi
  port_open "$port" && die "port $port is taken by another process; $name cannot start"
  rm -f "$pidfile"
  # setsid: its own session and process group, so stop can reap the vLLM EngineCore child too. The shell writes its
  # own pid, then execs, so the pidfile names the service itself; every fd is redirected so no caller pipe stays open.
  (cd "$FERRY_ROOT" && exec env "$@" FERRY_OTEL_CONSOLE_PATH="$FERRY_LOGS/$name.traces.jsonl" PYTHONPATH="$FERRY_ROOT" \
     nohup setsid bash -c 'echo $$ >"$0"; exec "$1" -m "$2"' "$pidfile" "$PY" "$module") \
     >>"$FERRY_LOGS/$name.log" 2>&1 </dev/null &
  local waited=0
  until [[ -s $pidfile ]]; do (( waited++ < 50 )) || die "$name did not start"; sleep 0.1; done
}

# service_wait NAME PORT SECONDS: waits for GET /health to succeed.
service_wait() {
  local name=$1 port=$2 seconds=$3 waited=0
  until curl -fsS -o /dev/null "http://127.0.0.1:$port/health" 2>/dev/null; do
    pid_alive "$FERRY_RUN/$name.pid" || die "$name exited while starting; see $FERRY_LOGS/$name.log"
    (( waited++ < seconds * 2 )) || die "$name not healthy after ${seconds}s; see $FERRY_LOGS/$name.log"
    sleep 0.5
  done
  log "$name ready on http://127.0.0.1:$port"
}

service_status() {
  local name=$1 port=$2
  if pid_alive "$FERRY_RUN/$name.pid"; then
    status_line "$name" running "$(cat "$FERRY_RUN/$name.pid")" "$port"
  else
    status_line "$name" stopped; return 1
  fi
}
