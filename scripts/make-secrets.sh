#!/usr/bin/env bash
# Generate the secrets of a hardened cadr deployment (docker-compose.yml reads them from deploy/secrets/;
# for Kubernetes, `kubectl create secret` them as deploy/kubernetes/README.md says).
#
#   scripts/make-secrets.sh [OUT_DIR]     default OUT_DIR: deploy/secrets (git-ignored); existing files are kept
#
# Writes, owner-readable only (0600, in a 0700 directory):
#   ca.crt, ca.key                 a private CA that signs the servers below (clients trust ca.crt)
#   kafka-broker.pem               Kafka's PEM keystore: unencrypted PKCS#8 key + certificate for "kafka"
#                                  (also kafka.cadr.svc, kafka.cadr.svc.cluster.local, localhost, 127.0.0.1)
#   clickhouse.crt, clickhouse.key ClickHouse's https certificate for "clickhouse" (and the same extra names)
#   kafka-<user>.password          SCRAM passwords of the Kafka users: broker (inter-broker), admin (ACLs),
#                                  sensor, audit, worker, forward
#   kafka-scram-users              "NAME PASSWORD" lines, the users created when Kafka's storage is formatted
#   kafka-admin.properties         client settings of the admin user for kafka-acls.sh
#   clickhouse-writer.password     ClickHouse password of the worker's user (cadr_writer)
#   clickhouse-reader.password     ClickHouse password of a read-only user for `cadr query` (cadr_reader)
set -euo pipefail

OUT="${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/deploy/secrets}"
DAYS=825
USERS=(broker admin sensor audit worker forward)

umask 077
mkdir -p "$OUT"
chmod 700 "$OUT"
cd "$OUT"

password() { [[ -s "$1" ]] || head -c 24 /dev/urandom | base64 | tr -d '/+=\n' >"$1"; }

if [[ ! -s ca.key ]]; then
  openssl req -x509 -newkey rsa:3072 -nodes -days "$DAYS" -subj "/CN=cadr private CA" \
    -keyout ca.key -out ca.crt 2>/dev/null
fi

# server NAME: NAME.key (PKCS#8) and NAME.crt signed by the CA, for DNS name NAME and the usual aliases
server() {
  local name="$1"
  [[ -s "$name.crt" ]] && return 0
  local sans="DNS:$name,DNS:$name.cadr.svc,DNS:$name.cadr.svc.cluster.local,DNS:localhost,IP:127.0.0.1"
  openssl req -newkey rsa:3072 -nodes -subj "/CN=$name" -keyout "$name.key" -out "$name.csr" 2>/dev/null
  openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days "$DAYS" \
    -extfile <(printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$sans") -out "$name.crt" 2>/dev/null
  rm -f "$name.csr"
}

server kafka
server clickhouse
[[ -s kafka-broker.pem ]] || cat kafka.key kafka.crt >kafka-broker.pem
rm -f kafka.key kafka.crt

for user in "${USERS[@]}"; do password "kafka-$user.password"; done
: >kafka-scram-users.tmp
for user in "${USERS[@]}"; do printf 'cadr-%s %s\n' "$user" "$(cat "kafka-$user.password")" >>kafka-scram-users.tmp; done
mv kafka-scram-users.tmp kafka-scram-users

cat >kafka-admin.properties <<EOF
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="cadr-admin" password="$(cat kafka-admin.password)";
ssl.truststore.type=PEM
ssl.truststore.location=/run/secrets/ca.crt
EOF

password clickhouse-writer.password
password clickhouse-reader.password
chmod 600 ./*
echo "make-secrets: secrets in $OUT" >&2
