#!/usr/bin/env bash
# Apply deploy/kafka/acls.txt with kafka-acls.sh (apache/kafka image) as cadr-admin; idempotent.
#
#   apply-acls.sh BOOTSTRAP [ACLS_FILE]      e.g. apply-acls.sh kafka:9094
#
# Environment: CADR_SECRETS (/run/secrets: kafka-admin.properties from scripts/make-secrets.sh), KAFKA_BIN
# (/opt/kafka/bin).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BOOTSTRAP="${1:?usage: apply-acls.sh BOOTSTRAP [ACLS_FILE]}"
ACLS="${2:-$HERE/acls.txt}"
SECRETS="${CADR_SECRETS:-/run/secrets}"
BIN="${KAFKA_BIN:-/opt/kafka/bin}"

while read -r principal operation resource pattern name; do
  [[ -z "$principal" || "$principal" == \#* ]] && continue
  case "$resource" in
    Topic) target=(--topic "$name") ;;
    Group) target=(--group "$name") ;;
    Cluster) target=(--cluster) ;;
    *) echo "apply-acls: unknown resource $resource" >&2; exit 2 ;;
  esac
  "$BIN/kafka-acls.sh" --bootstrap-server "$BOOTSTRAP" --command-config "$SECRETS/kafka-admin.properties" \
    --add --allow-principal "User:$principal" --operation "$operation" \
    --resource-pattern-type "${pattern,,}" "${target[@]}" >/dev/null
done <"$ACLS"
echo "apply-acls: applied $ACLS" >&2
