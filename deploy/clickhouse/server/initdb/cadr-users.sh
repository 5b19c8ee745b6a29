#!/usr/bin/env bash
# First start of cadr's ClickHouse server (the image runs /docker-entrypoint-initdb.d/* once, on an empty data
# directory): the users cadr connects as, with passwords from the secrets of scripts/make-secrets.sh.
#   cadr_writer  the worker's store stage: creates cadr's tables (migrations) and inserts into them
#   cadr_reader  `cadr query` / capture / replay: read-only, with the same per-query limits cadr sets itself
set -euo pipefail
writer="$(cat /run/secrets/clickhouse-writer.password)"
reader="$(cat /run/secrets/clickhouse-reader.password)"
clickhouse client --multiquery <<SQL
CREATE DATABASE IF NOT EXISTS cadr;
CREATE USER IF NOT EXISTS cadr_writer IDENTIFIED WITH sha256_password BY '${writer}';
GRANT ALL ON cadr.* TO cadr_writer;
GRANT CREATE TEMPORARY TABLE ON *.* TO cadr_writer;
CREATE SETTINGS PROFILE IF NOT EXISTS cadr_readonly SETTINGS
    readonly = 1, max_memory_usage = 2147483648, max_execution_time = 300,
    max_result_rows = 100000000, max_result_bytes = 4294967296, max_concurrent_queries_for_user = 4;
CREATE USER IF NOT EXISTS cadr_reader IDENTIFIED WITH sha256_password BY '${reader}' SETTINGS PROFILE cadr_readonly;
GRANT SELECT ON cadr.* TO cadr_reader;
SQL
