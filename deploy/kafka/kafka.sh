#!/usr/bin/env bash
# Local Apache Kafka for cadr: one KRaft node (broker + controller) listening on loopback only.
#
#   kafka.sh fetch                            copy the broker jars pinned by pom.xml into the cache (once per pom)
#   kafka.sh format DATA_DIR                  format KRaft storage under DATA_DIR (no-op when already formatted)
#   kafka.sh run DATA_DIR PORT [CTRL_PORT]    run the node in the foreground (exec java; SIGTERM stops it cleanly)
#   kafka.sh version | home | classpath       print the pinned Kafka version / cache dir / java classpath
#
# Environment:
#   CADR_KAFKA_HOME   cache dir for the jars (default ~/.cache/cadr/kafka-<version>); jars go to $CADR_KAFKA_HOME/libs
#   KAFKA_HEAP_OPTS   JVM heap flags (default -Xms256m -Xmx768m)
#   KAFKA_OPTS        extra JVM flags
#   CADR_KAFKA_SASL_SSL_PORT   also listen for SASL_SSL clients (SCRAM-SHA-512/256) on this loopback port; needs:
#   CADR_KAFKA_SSL_KEYSTORE    a PEM file holding the broker's private key (unencrypted PKCS#8) and certificate chain
#   CADR_KAFKA_SCRAM_USERS     a file of "NAME PASSWORD" lines: SCRAM users written into the storage by `format`
#                              (so they exist before the first start; formatting happens once per DATA_DIR)
#
# DATA_DIR layout: kraft/ (log.dirs and metadata log), logs/server.log (broker log), server.properties (written by
# each `run`, so the ports may change between runs of the same data).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
POM="$HERE/pom.xml"
LOG4J_CONFIG="$HERE/log4j2.properties"
KAFKA_VERSION="$(sed -n 's:.*<kafka\.version>\(.*\)</kafka\.version>.*:\1:p' "$POM" | head -n 1)"
[[ -n "$KAFKA_VERSION" ]] || { echo "kafka.sh: no <kafka.version> in $POM" >&2; exit 2; }
KAFKA_HOME_DIR="${CADR_KAFKA_HOME:-$HOME/.cache/cadr/kafka-$KAFKA_VERSION}"
LIBS="$KAFKA_HOME_DIR/libs"
STAMP="$LIBS/.pom.sha256"

die() { echo "kafka.sh: $*" >&2; exit 1; }

pom_hash() { sha256sum "$POM" | cut -d' ' -f1; }

libs_current() { [[ -f "$STAMP" && "$(cat "$STAMP")" == "$(pom_hash)" ]]; }

cmd_fetch() {
  libs_current && return 0
  command -v mvn >/dev/null || die "mvn (Maven) is not on PATH; it is needed once to fetch the Kafka jars"
  mkdir -p "$KAFKA_HOME_DIR"
  # Serialise concurrent fetches (parallel test sessions, `cadr up` + tests) on the same cache dir.
  exec 9>"$KAFKA_HOME_DIR/.fetch.lock"
  flock 9
  if ! libs_current; then
    local tmp="$KAFKA_HOME_DIR/libs.tmp.$$"
    rm -rf "$tmp"
    echo "kafka.sh: fetching Apache Kafka $KAFKA_VERSION jars into $LIBS" >&2
    if ! mvn -q -B -f "$POM" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$tmp" >"$KAFKA_HOME_DIR/fetch.log" 2>&1; then
      rm -rf "$tmp"
      cat "$KAFKA_HOME_DIR/fetch.log" >&2
      die "mvn dependency:copy-dependencies failed for $POM (log: $KAFKA_HOME_DIR/fetch.log)"
    fi
    pom_hash >"$tmp/.pom.sha256"
    rm -rf "$LIBS"
    mv "$tmp" "$LIBS"
  fi
  exec 9>&-
}

java_bin() {
  if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then echo "$JAVA_HOME/bin/java"; return; fi
  command -v java >/dev/null || die "java is not on PATH (Kafka $KAFKA_VERSION needs Java 17+)"
  echo java
}

# Run a Kafka main class on the cached classpath: jvm MAIN_CLASS LOGS_DIR ARGS...
jvm() {
  local main="$1" logs="$2"
  shift 2
  mkdir -p "$logs"
  # shellcheck disable=SC2086  # the *_OPTS variables are word lists on purpose
  exec "$(java_bin)" ${KAFKA_HEAP_OPTS:--Xms256m -Xmx768m} \
    -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent \
    -Djava.awt.headless=true -Dkafka.logs.dir="$logs" -Dlog4j2.configurationFile="$LOG4J_CONFIG" \
    ${KAFKA_OPTS:-} -cp "$LIBS/*" "$main" "$@"
}

# write_config DATA_DIR PORT CONTROLLER_PORT: the whole node config, on stdout.
write_config() {
  local data="$1" port="$2" cport="$3"
  local listeners="PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport"
  local advertised="PLAINTEXT://127.0.0.1:$port"
  local protocols="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
  if [[ -n "${CADR_KAFKA_SASL_SSL_PORT:-}" ]]; then
    listeners="$listeners,SASL_SSL://127.0.0.1:$CADR_KAFKA_SASL_SSL_PORT"
    advertised="$advertised,SASL_SSL://127.0.0.1:$CADR_KAFKA_SASL_SSL_PORT"
    protocols="$protocols,SASL_SSL:SASL_SSL"
  fi
  cat <<EOF
# Written by deploy/kafka/kafka.sh for one local run; edits are lost on the next run.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=$listeners
advertised.listeners=$advertised
listener.security.protocol.map=$protocols
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
log.dirs=$data/kraft

# A single node: every internal topic has one replica, and few partitions so the first group join is quick.
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
num.partitions=1
auto.create.topics.enable=true

# Fast restarts: after an unclean stop (kill -9) the new incarnation cannot register until the old broker session
# expires (default 9 s).
broker.session.timeout.ms=3000
broker.heartbeat.interval.ms=500

# Fast consumer-group joins: no initial rebalance delay; allow the short session timeouts tests use.
group.initial.rebalance.delay.ms=0
group.min.session.timeout.ms=1000

# Sized for a 2-core machine and a 768 MiB heap.
num.network.threads=2
num.io.threads=4
background.threads=4
num.recovery.threads.per.data.dir=2
log.cleaner.threads=1
log.cleaner.dedupe.buffer.size=33554432
EOF
  if [[ -n "${CADR_KAFKA_SASL_SSL_PORT:-}" ]]; then
    [[ -f "${CADR_KAFKA_SSL_KEYSTORE:-}" ]] || die "CADR_KAFKA_SASL_SSL_PORT needs CADR_KAFKA_SSL_KEYSTORE (a PEM file)"
    cat <<EOF

# SASL_SSL clients: TLS with the broker's PEM key and certificate, then SCRAM (users are in the metadata log).
sasl.enabled.mechanisms=SCRAM-SHA-512,SCRAM-SHA-256
listener.name.sasl_ssl.ssl.keystore.type=PEM
listener.name.sasl_ssl.ssl.keystore.location=$CADR_KAFKA_SSL_KEYSTORE
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
EOF
  fi
}

# scram_args: one --add-scram per mechanism per line of $CADR_KAFKA_SCRAM_USERS ("NAME PASSWORD").
scram_args() {
  [[ -n "${CADR_KAFKA_SCRAM_USERS:-}" ]] || return 0
  local name password
  while read -r name password; do
    [[ -n "$name" ]] || continue
    printf '%s\n' "--add-scram" "SCRAM-SHA-512=[name=$name,password=$password]"
    printf '%s\n' "--add-scram" "SCRAM-SHA-256=[name=$name,password=$password]"
  done <"$CADR_KAFKA_SCRAM_USERS"
}

formatted() { [[ -f "$1/kraft/meta.properties" ]]; }

abs_dir() { mkdir -p "$1" && (cd "$1" && pwd); }

cmd_format() {
  [[ $# -eq 1 ]] || die "usage: kafka.sh format DATA_DIR"
  local data
  data="$(abs_dir "$1")"
  if formatted "$data"; then
    echo "kafka.sh: $data is already formatted" >&2
    return 0
  fi
  cmd_fetch
  # Static quorum (controller.quorum.voters): format stores no listener address, so the ports are free to change
  # between runs; these two are placeholders.
  write_config "$data" 9092 9093 >"$data/format.properties"
  # A cluster id is 16 random bytes in unpadded URL-safe base64 (what `kafka-storage.sh random-uuid` prints);
  # made here to spare a JVM start.
  local cluster_id
  cluster_id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')"
  # (passed as --cluster-id=ID: an id may start with "-", which would read as an option)
  local -a scram=()
  mapfile -t scram < <(scram_args)
  (KAFKA_HEAP_OPTS="-Xmx256m" KAFKA_OPTS="-XX:TieredStopAtLevel=1 ${KAFKA_OPTS:-}" \
    jvm kafka.tools.StorageTool "$data/logs" format --cluster-id="$cluster_id" --config "$data/format.properties" \
    "${scram[@]}" >&2)
  rm -f "$data/format.properties"
}

cmd_run() {
  [[ $# -eq 2 || $# -eq 3 ]] || die "usage: kafka.sh run DATA_DIR PORT [CONTROLLER_PORT]"
  local data port="$2" cport="${3:-$(($2 + 1))}"
  [[ "$port" =~ ^[0-9]+$ && "$cport" =~ ^[0-9]+$ ]] || die "ports must be numbers: $port $cport"
  data="$(abs_dir "$1")"
  formatted "$data" || cmd_format "$data"
  cmd_fetch
  write_config "$data" "$port" "$cport" >"$data/server.properties"
  jvm kafka.Kafka "$data/logs" "$data/server.properties"
}

main() {
  local sub="${1:-}"
  [[ $# -gt 0 ]] && shift
  case "$sub" in
    fetch) cmd_fetch ;;
    format) cmd_format "$@" ;;
    run) cmd_run "$@" ;;
    version) echo "$KAFKA_VERSION" ;;
    home) echo "$KAFKA_HOME_DIR" ;;
    classpath) cmd_fetch && echo "$LIBS/*" ;;
    -h | --help | help) sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' ;;
    *) die "unknown subcommand '${sub}' (try: fetch, format DATA_DIR, run DATA_DIR PORT, version, home, --help)" ;;
  esac
}

main "$@"
