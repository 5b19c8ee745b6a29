-- One JSON parse per event on the sink's fast path (replaces the two views of 006, which parsed every event
-- three times: the flattening tuple, JSONHas for the network block, and the rejection check's event_id).
--
--   events_ingest (Null, raw JSON)
--     └─ events_parse_mv ─→ events_parsed (Null: raw, the parsed tuple, flags)
--          ├─ events_store_mv  ─→ events           (flattened; rows with an event id)
--          └─ events_reject_mv ─→ events_rejected  (rows without one, with the reason)
--
-- The tuple type appears twice (the column of events_parsed and the JSONExtract in events_parse_mv);
-- tests/streams/test_store_migrations.py checks that they agree. The column mapping mirrors
-- streams/store/columns.py field for field; tests/streams/test_store_ingest.py checks both paths give identical
-- rows. Measured on this project's machines: 3.7 → 1.9 us of engine CPU per event for the parse.
DROP VIEW IF EXISTS ${database}.events_ingest_mv;

DROP VIEW IF EXISTS ${database}.events_ingest_rejected_mv;

CREATE TABLE IF NOT EXISTS ${database}.events_parsed
(
    raw String,
    is_object Bool,
    has_network Bool,
    j Tuple(
        time UInt64, event_id String, node String, source String, kind String, replayed Nullable(Bool),
        workload Tuple(cluster String, namespace String, pod String, container String, workload_kind String,
            workload_name String, image String, service_account String),
        process Tuple(pid UInt64, ppid UInt64, uid Nullable(Int64), comm String, exe String, args Array(String),
            cwd String, exec_id String, parent_exec_id String, parent_exe String, exit_code Nullable(Int32),
            tty Bool),
        file Tuple(path Nullable(String), flags Int64, write Bool),
        network Tuple(src_ip String, src_port UInt64, dst_ip String, dst_port UInt64, direction Nullable(String)),
        dns Tuple(query Nullable(String), answers Array(String)),
        privilege Tuple(op Nullable(String), new_uid Nullable(Int64)),
        audit Tuple(audit_id Nullable(String), verb String, user String, groups Array(String), resource String,
            subresource String, namespace String, name String, source_ips Array(String), user_agent String,
            response_code Int64)
    )
)
ENGINE = Null;

CREATE MATERIALIZED VIEW IF NOT EXISTS ${database}.events_store_mv TO ${database}.events AS
SELECT
    fromUnixTimestamp64Nano(toInt64(j.time), 'UTC') AS time,
    j.event_id AS event_id,
    j.node AS node,
    j.source AS source,
    j.kind AS kind,
    ifNull(j.replayed, false) AS replayed,
    j.workload.cluster AS cluster,
    j.workload.namespace AS namespace,
    j.workload.pod AS pod,
    j.workload.container AS container,
    j.workload.workload_kind AS workload_kind,
    j.workload.workload_name AS workload_name,
    j.workload.image AS image,
    j.workload.service_account AS service_account,
    toUInt32(least(j.process.pid, 4294967295)) AS pid,
    toUInt32(least(j.process.ppid, 4294967295)) AS ppid,
    ifNull(j.process.uid, -1) AS uid,
    j.process.comm AS comm,
    j.process.exe AS exe,
    j.process.args AS args,
    j.process.cwd AS cwd,
    j.process.exec_id AS exec_id,
    j.process.parent_exec_id AS parent_exec_id,
    j.process.parent_exe AS parent_exe,
    j.process.exit_code AS exit_code,
    j.process.tty AS tty,
    ifNull(j.file.path, '') AS file_path,
    j.file.flags AS file_flags,
    j.file.write AS file_write,
    j.network.src_ip AS src_ip,
    toUInt16(least(j.network.src_port, 65535)) AS src_port,
    j.network.dst_ip AS dst_ip,
    toUInt16(least(j.network.dst_port, 65535)) AS dst_port,
    if(has_network, ifNull(j.network.direction, 'egress'), '') AS net_direction,
    ifNull(j.dns.query, '') AS dns_query,
    j.dns.answers AS dns_answers,
    ifNull(j.privilege.op, '') AS priv_op,
    ifNull(j.privilege.new_uid, -1) AS priv_new_uid,
    ifNull(j.audit.audit_id, '') AS audit_id,
    j.audit.verb AS audit_verb,
    j.audit.user AS audit_user,
    j.audit.groups AS audit_groups,
    j.audit.resource AS audit_resource,
    j.audit.subresource AS audit_subresource,
    j.audit.namespace AS audit_namespace,
    j.audit.name AS audit_name,
    j.audit.source_ips AS audit_source_ips,
    j.audit.user_agent AS audit_user_agent,
    toInt32(j.audit.response_code) AS audit_response_code,
    raw
FROM ${database}.events_parsed
WHERE is_object AND j.event_id != ''
-- the same event twice in one batch (an upstream producer retry) is stored once
LIMIT 1 BY event_id;

CREATE MATERIALIZED VIEW IF NOT EXISTS ${database}.events_reject_mv TO ${database}.events_rejected AS
SELECT raw, multiIf(NOT isValidJSON(raw), 'not JSON', NOT is_object, 'not a JSON object', 'no event_id') AS reason
FROM ${database}.events_parsed
WHERE NOT is_object OR j.event_id = '';

-- Created last: until it exists, inserts into events_ingest go nowhere, so a process killed half-way through
-- this migration never leaves a chain that stores half of a batch.
CREATE MATERIALIZED VIEW IF NOT EXISTS ${database}.events_parse_mv TO ${database}.events_parsed AS
SELECT
    raw,
    -- a JSON array would map onto the tuple by position
    startsWith(trimLeft(raw), '{') AS is_object,
    -- is there a network block at all (its fields all have defaults, so the tuple cannot tell)? The key is
    -- looked up by a cheap substring search first; the exact check parses only when the key occurs.
    if(position(raw, '"network"') > 0, JSONHas(raw, 'network'), false) AS has_network,
    JSONExtract(raw, 'Tuple(
            time UInt64, event_id String, node String, source String, kind String, replayed Nullable(Bool),
            workload Tuple(cluster String, namespace String, pod String, container String, workload_kind String,
                workload_name String, image String, service_account String),
            process Tuple(pid UInt64, ppid UInt64, uid Nullable(Int64), comm String, exe String, args Array(String),
                cwd String, exec_id String, parent_exec_id String, parent_exe String, exit_code Nullable(Int32),
                tty Bool),
            file Tuple(path Nullable(String), flags Int64, write Bool),
            network Tuple(src_ip String, src_port UInt64, dst_ip String, dst_port UInt64, direction Nullable(String)),
            dns Tuple(query Nullable(String), answers Array(String)),
            privilege Tuple(op Nullable(String), new_uid Nullable(Int64)),
            audit Tuple(audit_id Nullable(String), verb String, user String, groups Array(String), resource String,
                subresource String, namespace String, name String, source_ips Array(String), user_agent String,
                response_code Int64)
        )') AS j
FROM ${database}.events_ingest;
