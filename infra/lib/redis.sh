# Redis for ferry: a project-local redis-server on 127.0.0.1:$FERRY_REDIS_PORT. Sourced after common.sh; defines
# functions only. Data (RDB + AOF) in $FERRY_STATE/redis, log in $FERRY_LOGS/redis.log, pid in $FERRY_RUN/redis.pid.
# The Debian package's own redis (port 6379, /etc/redis/redis.conf) is never touched.

_redis_cli() { redis-cli -h 127.0.0.1 -p "$FERRY_REDIS_PORT" "$@"; }

_redis_ready() { [[ $(_redis_cli ping 2>/dev/null) == PONG ]]; }

# _redis_running PID: PID is a live redis-server, not a zombie (the daemon is reparented to PID 1, which may reap it
# late or never, and kill -0 takes a zombie for alive) and not some other program that reused a stale pid.
_redis_running() {
  [[ $1 =~ ^[0-9]+$ ]] || return 1
  local st comm; st=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  comm=${st#*(}; comm=${comm%)*}; st=${st##*) }
  [[ $comm == redis-server* && ${st%% *} != Z ]]
}

# _redis_pid: the pid from $FERRY_RUN/redis.pid when that process runs.
_redis_pid() {
  local pid=""
  [[ -s $FERRY_RUN/redis.pid ]] && pid=$(cat "$FERRY_RUN/redis.pid")
  _redis_running "$pid" || return 1
  printf '%s\n' "$pid"
}

redis_install() {
  command -v redis-server >/dev/null && command -v redis-cli >/dev/null && return 0
  apt_install redis-server
  command -v redis-server >/dev/null || die "redis-server installed but not on PATH"
}

redis_start() {
  redis_install
  local pidfile=$FERRY_RUN/redis.pid logfile=$FERRY_LOGS/redis.log dir=$FERRY_STATE/redis started=$SECONDS pid
  if pid=$(_redis_pid) && _redis_ready; then
    log "redis already running (pid $pid, 127.0.0.1:$FERRY_REDIS_PORT)"
    return 0
  fi
  if ! _redis_pid >/dev/null; then
    port_open "$FERRY_REDIS_PORT" &&
      die "port $FERRY_REDIS_PORT is already in use by another process (not this checkout's redis)"
    rm -f "$pidfile"
    mkdir -p "$dir" "$FERRY_LOGS" "$FERRY_RUN"
    # No config file: every setting is on the command line, so /etc/redis/redis.conf plays no part.
    redis-server --bind 127.0.0.1 --port "$FERRY_REDIS_PORT" --protected-mode yes \
      --daemonize yes --supervised no --pidfile "$pidfile" --logfile "$logfile" \
      --dir "$dir" --appendonly yes --appendfsync everysec --save "3600 1 300 100 60 10000" \
      >>"$logfile" 2>&1 || die "redis-server failed to start; see $logfile"
  fi
  local waited=0
  until _redis_ready; do
    # The daemon writes its pid file just after forking; only a missing process after that is a failure.
    if (( waited > 10 )) && ! _redis_pid >/dev/null; then die "redis exited while starting; see $logfile"; fi
    (( waited++ < 300 )) || die "redis not ready on port $FERRY_REDIS_PORT after 60s; see $logfile"
    sleep 0.2
  done
  log "redis started (pid $(_redis_pid || echo '?'), 127.0.0.1:$FERRY_REDIS_PORT, $(( SECONDS - started ))s)"
}

redis_stop() {
  local pid waited=0
  if pid=$(_redis_pid); then
    # SHUTDOWN writes the RDB and flushes the AOF; the connection closes without a reply, so ignore its status.
    _redis_cli shutdown >/dev/null 2>&1 || true
    while _redis_running "$pid" && (( waited++ < 100 )); do sleep 0.1; done
    if _redis_running "$pid"; then
      stop_pid redis 20   # SIGTERM also saves; SIGKILL only as a last resort
    else
      log "redis stopped"
    fi
  fi
  rm -f "$FERRY_RUN/redis.pid"
}

redis_status() {
  local pid
  if pid=$(_redis_pid); then
    if _redis_ready; then
      status_line redis running "$pid" "$FERRY_REDIS_PORT"
      return 0
    fi
    status_line redis starting "$pid" "$FERRY_REDIS_PORT"
    return 1
  fi
  status_line redis stopped
  return 1
}
