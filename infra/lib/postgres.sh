# PostgreSQL for ferry: a project-local cluster on 127.0.0.1:$FERRY_POSTGRES_PORT. Sourced after common.sh; defines
# functions only. Postgres refuses to run as root, so the cluster belongs to the `postgres` OS user (created by the
# Debian package): data in $FERRY_STATE/postgres/data, unix socket in $FERRY_STATE/postgres/run, log in
# $FERRY_LOGS/postgres.log, postmaster pid copied to $FERRY_RUN/postgres.pid. The Debian "main" cluster (port 5432)
# is never touched. TCP logins use scram passwords: role `ferry`, password `ferry`, database `ferry`.

# _pg_as CMD...: runs CMD as the postgres OS user (from / so a private working directory does not cause warnings).
_pg_as() {
  if [[ $(id -un) == postgres ]]; then
    (cd / && LC_ALL=C "$@")
  elif [[ $(id -u) == 0 ]]; then
    (cd / && runuser -u postgres -- env LC_ALL=C "$@")
  else
    (cd / && sudo -n -u postgres -- env LC_ALL=C "$@")
  fi
}

# _pg_root CMD...: runs CMD as root (directly, or with sudo).
_pg_root() { if [[ $(id -u) == 0 ]]; then "$@"; else sudo -n "$@"; fi; }

_pg_dir() { printf '%s\n' "$FERRY_STATE/postgres"; }

# _pg_bindir [MAJOR]: the bin dir of that major version, or of the newest installed one.
_pg_bindir() {
  if [[ -n ${1:-} ]]; then
    [[ -x /usr/lib/postgresql/$1/bin/postgres ]] || return 1
    printf '%s\n' "/usr/lib/postgresql/$1/bin"
    return 0
  fi
  local found
  found=$(compgen -G '/usr/lib/postgresql/*/bin/postgres' | sort -V | tail -n 1) || true
  [[ -n $found ]] || return 1
  dirname "$found"
}

# _pg_running PID: PID is a live postgres process, not a zombie and not some other program that reused a stale pid.
# (A killed postmaster is reparented to PID 1; an init that reaps late, or a container without one, leaves a zombie that
# kill -0, pg_ctl and postgres's own lock file check all take for alive.) Reads /proc rather than using kill -0, which
# fails with EPERM for another user's process when not root.
_pg_running() {
  [[ $1 =~ ^[0-9]+$ ]] || return 1
  local st comm; st=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  comm=${st#*(}; comm=${comm%)*}; st=${st##*) }
  [[ $comm == postgres && ${st%% *} != Z ]]
}

# _pg_pid: the postmaster pid when it runs (from $FERRY_RUN/postgres.pid, else the data dir's postmaster.pid).
_pg_pid() {
  local pid=""
  [[ -s $FERRY_RUN/postgres.pid ]] && pid=$(cat "$FERRY_RUN/postgres.pid")
  if ! _pg_running "$pid" && [[ -r $(_pg_dir)/data/postmaster.pid ]]; then
    pid=$(head -n 1 "$(_pg_dir)/data/postmaster.pid" 2>/dev/null) || true
  fi
  _pg_running "$pid" || return 1
  printf '%s\n' "$pid"
}

_pg_ready() {
  local bindir
  bindir=$(_pg_bindir) || return 1
  "$bindir/pg_isready" -q -h 127.0.0.1 -p "$FERRY_POSTGRES_PORT" -t 2
}

postgres_install() {
  if ! _pg_bindir >/dev/null; then
    apt_install postgresql
    _pg_bindir >/dev/null || die "postgresql installed but no /usr/lib/postgresql/*/bin/postgres found"
  fi
  id postgres >/dev/null 2>&1 || die "the postgres OS user is missing (it comes with the postgresql-common package)"
}

# _pg_prepare_dirs: directories the postgres user owns, and parents it can traverse.
_pg_prepare_dirs() {
  local base; base=$(_pg_dir)
  mkdir -p "$base" "$FERRY_LOGS" "$FERRY_RUN"
  # Our own directories: make them traversable even under a restrictive umask (they hold nothing secret themselves).
  chmod a+x "$FERRY_STATE" "$base" "$FERRY_LOGS" 2>/dev/null || true
  _pg_root install -d -o postgres -g postgres -m 700 "$base/data"
  _pg_root install -d -o postgres -g postgres -m 755 "$base/run"
  if ! _pg_as test -w "$base/data" || ! _pg_as test -x "$FERRY_LOGS"; then
    local d="" part blocked=$base
    local -a parts; IFS=/ read -ra parts <<<"${base#/}"
    for part in "${parts[@]}"; do   # from / down: the first directory the postgres user cannot enter
      d=$d/$part
      if ! _pg_as test -x "$d" 2>/dev/null; then blocked=$d; break; fi
    done
    die "the postgres OS user cannot enter $blocked (needed for $base): make it traversable (chmod o+x) or set FERRY_STATE elsewhere"
  fi
  # The unix socket path has a hard limit of 107 bytes.
  local sock="$base/run/.s.PGSQL.$FERRY_POSTGRES_PORT"
  (( ${#sock} <= 107 )) || die "postgres socket path too long (${#sock} > 107 bytes): $sock; set a shorter FERRY_STATE"
  # pg_ctl opens the log as the postgres user; keep it in FERRY_LOGS, readable by everyone.
  _pg_root touch "$FERRY_LOGS/postgres.log"
  _pg_root chown postgres:postgres "$FERRY_LOGS/postgres.log"
  _pg_root chmod 644 "$FERRY_LOGS/postgres.log"
}

postgres_start() {
  postgres_install
  local base data pid major bindir started=$SECONDS created=""
  base=$(_pg_dir); data=$base/data
  if pid=$(_pg_pid) && _pg_ready; then
    printf '%s\n' "$pid" >"$FERRY_RUN/postgres.pid"
    log "postgres already running (pid $pid, 127.0.0.1:$FERRY_POSTGRES_PORT)"
    return 0
  fi
  _pg_prepare_dirs

  if ! _pg_as test -f "$data/PG_VERSION"; then
    bindir=$(_pg_bindir)
    created=", new cluster in $data"
    local out
    if ! out=$(_pg_as "$bindir/initdb" -D "$data" -U postgres -E UTF8 --no-locale \
                 --auth-local=peer --auth-host=scram-sha-256 2>&1); then
      printf '%s\n' "$out" >&2
      die "initdb failed"
    fi
    printf "\n# ferry: port, socket and sizes live in ferry.conf (rewritten by every start)\ninclude_if_exists = 'ferry.conf'\n" |
      _pg_as tee -a "$data/postgresql.conf" >/dev/null
  fi
  major=$(_pg_as cat "$data/PG_VERSION")
  bindir=$(_pg_bindir "$major") ||
    die "$data was created by PostgreSQL $major, whose binaries are not installed (apt-get install postgresql-$major)"

  _pg_as tee "$data/ferry.conf" >/dev/null <<EOF
# Written by infra/lib/postgres.sh on every start; edit that file instead.
listen_addresses = '127.0.0.1'
port = $FERRY_POSTGRES_PORT
unix_socket_directories = '$base/run'
max_connections = 200
shared_buffers = 128MB
password_encryption = scram-sha-256
log_line_prefix = '%m [%p] %q%u@%d '
log_timezone = 'UTC'
timezone = 'UTC'
EOF

  # postmaster.pid names the running server; one left by a killed server is stale (postgres itself handles that once
  # the old process is gone, but not while it lingers as an unreaped zombie).
  local oldpid waited=0
  oldpid=$(_pg_as head -n 1 "$data/postmaster.pid" 2>/dev/null) || true
  if ! _pg_running "$oldpid"; then
    if [[ $oldpid =~ ^[0-9]+$ ]]; then
      while [[ -e /proc/$oldpid ]]; do
        (( waited++ < 50 )) || die "old postmaster $oldpid is a zombie nobody reaps (container without an init?); once no postgres processes remain, remove $data/postmaster.pid"
        sleep 0.2
      done
    fi
    port_open "$FERRY_POSTGRES_PORT" &&
      die "port $FERRY_POSTGRES_PORT is already in use by another process (not this checkout's postgres)"
    if ! _pg_as "$bindir/pg_ctl" -D "$data" -l "$FERRY_LOGS/postgres.log" -w -t 60 -s start >/dev/null; then
      tail -n 20 "$FERRY_LOGS/postgres.log" >&2 || true
      die "postgres failed to start; see $FERRY_LOGS/postgres.log"
    fi
  fi
  pid=$(_pg_as head -n 1 "$data/postmaster.pid")
  printf '%s\n' "$pid" >"$FERRY_RUN/postgres.pid"

  waited=0
  until _pg_ready; do
    _pg_running "$pid" || die "postgres exited while starting; see $FERRY_LOGS/postgres.log"
    (( waited++ < 300 )) || die "postgres not ready on port $FERRY_POSTGRES_PORT after 60s; see $FERRY_LOGS/postgres.log"
    sleep 0.2
  done

  # Role and database, created once (each statement runs only when its object is missing).
  _pg_as "$bindir/psql" -X -q -v ON_ERROR_STOP=1 -h "$base/run" -p "$FERRY_POSTGRES_PORT" -U postgres -d postgres \
    >/dev/null <<'SQL' || die "could not create the ferry role and database"
SELECT 'CREATE ROLE ferry LOGIN CREATEDB PASSWORD ''ferry''' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ferry')
\gexec
SELECT 'CREATE DATABASE ferry OWNER ferry' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'ferry')
\gexec
SQL
  log "postgres started (pid $pid, 127.0.0.1:$FERRY_POSTGRES_PORT, $(( SECONDS - started ))s$created)"
}

postgres_stop() {
  local data bindir pid
  data=$(_pg_dir)/data
  pid=$(_pg_as head -n 1 "$data/postmaster.pid" 2>/dev/null) || true
  if _pg_running "$pid"; then
    bindir=$(_pg_bindir "$(_pg_as cat "$data/PG_VERSION")") || bindir=$(_pg_bindir)
    _pg_as "$bindir/pg_ctl" -D "$data" -m fast -w -t 60 -s stop >/dev/null ||
      die "postgres did not stop; see $FERRY_LOGS/postgres.log"
    log "postgres stopped"
  fi
  # Otherwise nothing runs: a pid file left behind is stale (its pid may belong to someone else by now).
  rm -f "$FERRY_RUN/postgres.pid"
}

postgres_status() {
  local pid
  if pid=$(_pg_pid); then
    if _pg_ready; then
      status_line postgres running "$pid" "$FERRY_POSTGRES_PORT"
      return 0
    fi
    status_line postgres starting "$pid" "$FERRY_POSTGRES_PORT"
    return 1
  fi
  status_line postgres stopped
  return 1
}
