#!/usr/bin/env bash
# Entrypoint of cadr's Kafka broker in the apache/kafka image (docker-compose.yml, deploy/kubernetes/kafka.yaml).
#
# Renders broker.properties (beside this script, or $CADR_KAFKA_TEMPLATE) with the advertised host, ports, data
# directory and the broker's own SCRAM password, formats the storage once with every SCRAM user of the
# kafka-scram-users secret ("NAME PASSWORD" lines, scripts/make-secrets.sh), then runs the broker.
#
# Environment: KAFKA_ADVERTISED_HOST (required), KAFKA_PORT (9094), KAFKA_CONTROLLER_PORT (9093),
# KAFKA_DATA (/var/lib/kafka/data), CADR_SECRETS (/run/secrets), KAFKA_BIN (/opt/kafka/bin).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TEMPLATE="${CADR_KAFKA_TEMPLATE:-$HERE/broker.properties}"
SECRETS="${CADR_SECRETS:-/run/secrets}"
DATA="${KAFKA_DATA:-/var/lib/kafka/data}"
BIN="${KAFKA_BIN:-/opt/kafka/bin}"
CONF="${KAFKA_RENDERED_CONF:-$(mktemp -d)/broker.properties}"

umask 077
password="$(cat "$SECRETS/kafka-broker.password")"
sed -e "s|@ADVERTISED_HOST@|${KAFKA_ADVERTISED_HOST:?set KAFKA_ADVERTISED_HOST}|" \
  -e "s|@PORT@|${KAFKA_PORT:-9094}|g" \
  -e "s|@CONTROLLER_PORT@|${KAFKA_CONTROLLER_PORT:-9093}|g" \
  -e "s|@DATA@|$DATA|" \
  -e "s|@SECRETS@|$SECRETS|g" \
  -e "s|@BROKER_PASSWORD@|$password|" \
  "$TEMPLATE" >"$CONF"

if [[ ! -f "$DATA/meta.properties" ]]; then
  scram=()
  while read -r name secret; do
    [[ -n "$name" ]] && scram+=(--add-scram "SCRAM-SHA-512=[name=$name,password=$secret]")
  done <"$SECRETS/kafka-scram-users"
  "$BIN/kafka-storage.sh" format --config "$CONF" --cluster-id "$("$BIN/kafka-storage.sh" random-uuid)" "${scram[@]}"
fi
exec "$BIN/kafka-server-start.sh" "$CONF"
