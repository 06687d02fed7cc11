# Local Apache Kafka broker (single-node KRaft) without Docker: jars from Maven Central, run with the machine's Java.
# Sourced after common.sh; defines kafka_install, kafka_start, kafka_stop, kafka_status and nothing else runs here.
#   jars      $FERRY_HOME/kafka/<version>/libs          (shared by every clone; redone if the POM changes)
#   config    $FERRY_STATE/kafka/server.properties      (rendered from infra/kafka/server.properties.template)
#   data      $FERRY_STATE/kafka/data                   (formatted once with the id in $FERRY_STATE/kafka/cluster-id)
#   log, pid  $FERRY_LOGS/kafka.log, $FERRY_RUN/kafka.pid

KAFKA_SRC_DIR=$FERRY_ROOT/infra/kafka
KAFKA_POM=$KAFKA_SRC_DIR/pom.xml
KAFKA_STATE_DIR=$FERRY_STATE/kafka
KAFKA_DATA_DIR=$KAFKA_STATE_DIR/data
KAFKA_PIDFILE=$FERRY_RUN/kafka.pid
KAFKA_LOG=$FERRY_LOGS/kafka.log

# The Kafka version is the one the POM pins (<kafka.version> on one line).
kafka__version() {
  local v
  v=$(sed -n 's:.*<kafka\.version>[[:space:]]*\([^<[:space:]]*\)[[:space:]]*</kafka\.version>.*:\1:p' "$KAFKA_POM" | head -n1)
  [[ -n $v ]] || die "cannot read <kafka.version> from $KAFKA_POM"
  printf '%s\n' "$v"
}
kafka__home() { printf '%s\n' "$FERRY_HOME/kafka/$(kafka__version)"; }
kafka__libs() { printf '%s\n' "$(kafka__home)/libs"; }

# kafka__java ARGS...: runs a Kafka main class with the installed jars and our log4j2 config.
kafka__java() {
  java -Djava.io.tmpdir="$KAFKA_STATE_DIR/tmp" -Dlog4j2.configurationFile="$KAFKA_SRC_DIR/log4j2.properties" \
    -cp "$(kafka__libs)/*" "$@"
}

# kafka__pid_ok: the pidfile names a live process that is a Kafka broker (guards against a recycled pid).
kafka__pid_ok() {
  pid_alive "$KAFKA_PIDFILE" || return 1
  tr '\0' ' ' <"/proc/$(cat "$KAFKA_PIDFILE")/cmdline" 2>/dev/null | grep -q 'kafka\.Kafka'
}

kafka__need_tools() {
  command -v java >/dev/null || apt_install openjdk-17-jre-headless
  command -v mvn >/dev/null || apt_install maven
  local major
  major=$(java -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java\.specification\.version = //p')
  [[ ${major%%.*} -ge 17 ]] 2>/dev/null || die "Kafka 4 needs Java 17 or newer (found ${major:-none})"
}

# kafka_install: copies the broker's runtime jars into $FERRY_HOME/kafka/<version>/libs. Idempotent: a marker
# holding the POM's checksum is written only after a complete copy, so a half-done or outdated install is redone.
kafka_install() {
  local home libs marker sum
  home=$(kafka__home); libs=$home/libs; marker=$home/.installed
  sum=$(sha256sum "$KAFKA_POM" | cut -d' ' -f1)
  if [[ -d $libs && -f $marker && $(cat "$marker") == "$sum" ]]; then return 0; fi
  kafka__need_tools
  mkdir -p "$home"
  (
    # Two clones installing at once share $FERRY_HOME: let one finish, the other then finds the marker.
    if command -v flock >/dev/null; then exec 9>"$home/.lock"; flock 9; fi
    if [[ -d $libs && -f $marker && $(cat "$marker") == "$sum" ]]; then exit 0; fi
    log "installing Kafka $(kafka__version) jars into $libs (Maven Central)"
    rm -rf "$home/libs.partial" "$marker"
    # Maven's output is kept aside (Debian's 3.8 prints stray colour codes even with -q -B) and shown on failure.
    if ! mvn -q -B -f "$KAFKA_POM" dependency:copy-dependencies -DoutputDirectory="$home/libs.partial" \
        >"$home/install.log" 2>&1; then
      tail -n 40 "$home/install.log" >&2
      die "Kafka install failed (mvn dependency:copy-dependencies on $KAFKA_POM); full output in $home/install.log"
    fi
    compgen -G "$home/libs.partial/kafka_2.13-*.jar" >/dev/null || die "Kafka install incomplete: no kafka_2.13 jar"
    rm -rf "$libs"
    mv "$home/libs.partial" "$libs"
    printf '%s\n' "$sum" >"$marker"
    log "Kafka $(kafka__version) installed ($(ls "$libs" | wc -l) jars)"
  ) || return 1
}

# kafka__render_config: writes $KAFKA_STATE_DIR/server.properties from the template (plain bash substitution).
kafka__render_config() {
  local t
  t=$(<"$KAFKA_SRC_DIR/server.properties.template")
  t=${t//@KAFKA_PORT@/$FERRY_KAFKA_PORT}
  t=${t//@KAFKA_CONTROLLER_PORT@/$FERRY_KAFKA_CONTROLLER_PORT}
  t=${t//@KAFKA_DATA_DIR@/$KAFKA_DATA_DIR}
  printf '%s\n' "$t" >"$KAFKA_STATE_DIR/server.properties.new"
  mv "$KAFKA_STATE_DIR/server.properties.new" "$KAFKA_STATE_DIR/server.properties"
}

# kafka__format: gives the data dir its cluster id, once. The id is kept in $KAFKA_STATE_DIR/cluster-id; if only the
# data dir survived, its id is taken back from meta.properties (a formatted dir refuses any other id).
kafka__format() {
  local idfile=$KAFKA_STATE_DIR/cluster-id meta=$KAFKA_DATA_DIR/meta.properties id
  if [[ ! -s $idfile ]]; then
    if [[ -f $meta ]]; then
      id=$(sed -n 's/^cluster\.id=//p' "$meta")
    else
      id=$(kafka__java kafka.tools.StorageTool random-uuid 2>>"$KAFKA_LOG" | grep -E '^[A-Za-z0-9_-]{22}$' | tail -n1 || true)
    fi
    [[ $id =~ ^[A-Za-z0-9_-]{22}$ ]] || die "could not get a Kafka cluster id (got '$id'); see $KAFKA_LOG"
    printf '%s\n' "$id" >"$idfile"
  fi
  [[ -f $meta ]] && return 0
  id=$(<"$idfile")
  log "formatting Kafka storage in $KAFKA_DATA_DIR (cluster id $id)"
  kafka__java kafka.tools.StorageTool format -t "$id" -c "$KAFKA_STATE_DIR/server.properties" --ignore-formatted \
    >>"$KAFKA_LOG" 2>&1 || die "Kafka storage format failed; see $KAFKA_LOG"
}

# kafka_start: starts the broker in the background (survives the calling shell) and waits until it accepts
# connections. Idempotent: a running broker is left alone.
kafka_start() {
  if kafka__pid_ok; then
    if port_open "$FERRY_KAFKA_PORT"; then
      log "kafka already running (pid $(cat "$KAFKA_PIDFILE"), 127.0.0.1:$FERRY_KAFKA_PORT)"
      return 0
    fi
    log "kafka is starting (pid $(cat "$KAFKA_PIDFILE")); waiting for port $FERRY_KAFKA_PORT"
    wait_for_port "$FERRY_KAFKA_PORT" 60 kafka "$KAFKA_PIDFILE"
    return 0
  fi
  rm -f "$KAFKA_PIDFILE"
  local p
  for p in "$FERRY_KAFKA_PORT" "$FERRY_KAFKA_CONTROLLER_PORT"; do
    ! port_open "$p" || die "port $p is already in use by another process (not this checkout's Kafka); set FERRY_KAFKA_PORT/FERRY_KAFKA_CONTROLLER_PORT or stop it"
  done

  kafka_install
  mkdir -p "$KAFKA_DATA_DIR" "$KAFKA_STATE_DIR/tmp"
  kafka__render_config
  kafka__format

  log "starting kafka $(kafka__version) on 127.0.0.1:$FERRY_KAFKA_PORT (log: $KAFKA_LOG)"
  printf '\n===== kafka start %s =====\n' "$(date -Is)" >>"$KAFKA_LOG"
  # The inner bash writes its own pid and then execs java, so the pidfile names the JVM whether or not setsid forks.
  nohup setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' kafka "$KAFKA_PIDFILE" \
    java -Xms512m -Xmx512m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
      -XX:+ExplicitGCInvokesConcurrent -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
      -Djava.io.tmpdir="$KAFKA_STATE_DIR/tmp" -Dkafka.logs.dir="$FERRY_LOGS" \
      -Dlog4j2.configurationFile="$KAFKA_SRC_DIR/log4j2.properties" \
      -cp "$(kafka__libs)/*" kafka.Kafka "$KAFKA_STATE_DIR/server.properties" \
    </dev/null >>"$KAFKA_LOG" 2>&1 &
  local waited=0
  until [[ -s $KAFKA_PIDFILE ]]; do
    (( waited++ < 50 )) || die "kafka did not start; see $KAFKA_LOG"
    sleep 0.1
  done
  wait_for_port "$FERRY_KAFKA_PORT" 60 kafka "$KAFKA_PIDFILE"
  log "kafka ready (pid $(cat "$KAFKA_PIDFILE"))"
}

# kafka_stop: SIGTERM (clean shutdown), SIGKILL after 30 s. Idempotent.
kafka_stop() {
  if ! kafka__pid_ok; then
    rm -f "$KAFKA_PIDFILE"
    log "kafka is not running"
    return 0
  fi
  stop_pid kafka 30
}

# kafka_status: one line; exit 0 only when the broker runs and accepts connections.
kafka_status() {
  if kafka__pid_ok; then
    local pid; pid=$(cat "$KAFKA_PIDFILE")
    if port_open "$FERRY_KAFKA_PORT"; then
      status_line kafka running "$pid" "$FERRY_KAFKA_PORT"
      return 0
    fi
    status_line kafka starting "$pid" "$FERRY_KAFKA_PORT"
    return 1
  fi
  status_line kafka stopped
  return 1
}
