-- cadr event store: one row per event, the Event record (schemas/records.py) flattened into columns.
--
-- Built for hunts over billions of rows:
--   * daily partitions: retention drops whole days (ttl_only_drop_parts), time filters prune whole days;
--   * ORDER BY (cluster, namespace, workload_name, kind, time, event_id): the usual hunt names a workload, a kind
--     and a window, and a range of one workload's events of one kind is contiguous on disk;
--   * ReplacingMergeTree keyed on that ORDER BY (event_id last): a duplicate delivery of an event has the same key,
--     so merges fold it even if the sink's exact dedup (streams/store/sink.py) was raced by a zombie worker;
--   * LowCardinality on names with few values per part (kinds, namespaces, workloads, images, comm, exe, users);
--   * bloom-filter skipping indexes on what a hunt looks up without the sorting key: process names and paths,
--     files, IPs, DNS names, users, exec ids (process trees) and event ids (dedup checks).
--   * the columns hunts filter and show are stored; the rest of the record are ALIAS columns computed from `raw`
--     at query time (same names, same defaults), so they cost nothing at insert: the width of the table is what
--     an insert pays for (each stored column is extracted, converted, sorted, compressed and written).
-- `raw` keeps the whole record as JSON, so nothing the columns leave out is lost.
-- Retention counts from ingestion, not event time: replayed or recorded events (years old) must not vanish on insert.
-- ${database} and ${retention_days} are substituted by the migration runner (streams/store/migrations.py).
CREATE TABLE IF NOT EXISTS ${database}.events
(
    time DateTime64(9, 'UTC') CODEC(Delta, ZSTD(1)),
    event_id String,
    node LowCardinality(String),
    source LowCardinality(String),
    kind LowCardinality(String),
    replayed Bool,

    cluster LowCardinality(String),
    namespace LowCardinality(String),
    pod LowCardinality(String),
    container LowCardinality(String),
    workload_kind LowCardinality(String),
    workload_name LowCardinality(String),
    image LowCardinality(String),
    service_account LowCardinality(String),

    pid UInt32,
    ppid UInt32,
    uid Int64,
    comm LowCardinality(String),
    exe LowCardinality(String),
    args Array(String),
    cwd LowCardinality(String),
    exec_id String,
    parent_exec_id String,
    parent_exe LowCardinality(String),
    exit_code Nullable(Int32),
    tty Bool,

    file_path String,
    file_flags Int64,
    file_write Bool,

    src_ip String,
    src_port UInt16,
    dst_ip String,
    dst_port UInt16,
    net_direction LowCardinality(String),

    dns_query String,
    dns_answers Array(String),

    priv_op LowCardinality(String),
    priv_new_uid Int64,

    audit_id String,
    audit_verb LowCardinality(String),
    audit_user LowCardinality(String),
    audit_groups Array(LowCardinality(String)),
    audit_resource LowCardinality(String),
    audit_subresource LowCardinality(String),
    audit_namespace LowCardinality(String),
    audit_name String,
    audit_source_ips Array(String),
    audit_user_agent LowCardinality(String),
    audit_response_code Int32,

    raw String CODEC(ZSTD(3)),
    ingested DateTime64(3, 'UTC') DEFAULT now64(3),

    -- The rest of the record, read from raw when a query names them.
    schema_version UInt16 ALIAS ifNull(JSONExtract(raw, 'schema_version', 'Nullable(UInt16)'), 1),
    enriched Bool ALIAS JSONExtractBool(raw, 'enriched'),
    container_id String ALIAS JSONExtractString(raw, 'workload', 'container_id'),
    pod_ip String ALIAS JSONExtractString(raw, 'workload', 'pod_ip'),
    labels Map(String, String) ALIAS JSONExtract(raw, 'workload', 'labels', 'Map(String, String)'),
    tid UInt32 ALIAS toUInt32(least(JSONExtractUInt(raw, 'process', 'tid'), 4294967295)),
    euid Int64 ALIAS ifNull(JSONExtract(raw, 'process', 'euid', 'Nullable(Int64)'), -1),
    gid Int64 ALIAS ifNull(JSONExtract(raw, 'process', 'gid', 'Nullable(Int64)'), -1),
    egid Int64 ALIAS ifNull(JSONExtract(raw, 'process', 'egid', 'Nullable(Int64)'), -1),
    start_time UInt64 ALIAS JSONExtractUInt(raw, 'process', 'start_time'),
    stdio_socket Bool ALIAS JSONExtractBool(raw, 'process', 'stdio_socket'),
    cgroup_id UInt64 ALIAS JSONExtractUInt(raw, 'process', 'cgroup_id'),
    mnt_ns UInt64 ALIAS JSONExtractUInt(raw, 'process', 'mnt_ns'),
    pid_ns UInt64 ALIAS JSONExtractUInt(raw, 'process', 'pid_ns'),
    file_mode UInt32 ALIAS toUInt32(least(JSONExtractUInt(raw, 'file', 'mode'), 4294967295)),
    file_target String ALIAS JSONExtractString(raw, 'file', 'target'),
    net_protocol String ALIAS if(JSONHas(raw, 'network'),
        ifNull(JSONExtract(raw, 'network', 'protocol', 'Nullable(String)'), 'tcp'), ''),
    net_family String ALIAS if(JSONHas(raw, 'network'),
        ifNull(JSONExtract(raw, 'network', 'family', 'Nullable(String)'), 'ipv4'), ''),
    dns_qtype String ALIAS if(JSONHas(raw, 'dns'),
        ifNull(JSONExtract(raw, 'dns', 'qtype', 'Nullable(String)'), 'A'), ''),
    dns_server String ALIAS JSONExtractString(raw, 'dns', 'server_ip'),
    priv_old_uid Int64 ALIAS ifNull(JSONExtract(raw, 'privilege', 'old_uid', 'Nullable(Int64)'), -1),
    priv_old_gid Int64 ALIAS ifNull(JSONExtract(raw, 'privilege', 'old_gid', 'Nullable(Int64)'), -1),
    priv_new_gid Int64 ALIAS ifNull(JSONExtract(raw, 'privilege', 'new_gid', 'Nullable(Int64)'), -1),
    priv_caps UInt64 ALIAS JSONExtractUInt(raw, 'privilege', 'caps'),
    priv_target_pid UInt32 ALIAS toUInt32(least(JSONExtractUInt(raw, 'privilege', 'target_pid'), 4294967295)),
    priv_flags Int64 ALIAS JSONExtractInt(raw, 'privilege', 'flags'),
    priv_detail String ALIAS JSONExtractString(raw, 'privilege', 'detail'),
    priv_result Int64 ALIAS JSONExtractInt(raw, 'privilege', 'result'),
    audit_stage String ALIAS if(JSONHas(raw, 'audit'),
        ifNull(JSONExtract(raw, 'audit', 'stage', 'Nullable(String)'), 'ResponseComplete'), ''),
    audit_impersonated_user String ALIAS JSONExtractString(raw, 'audit', 'impersonated_user'),
    audit_api_group String ALIAS JSONExtractString(raw, 'audit', 'api_group'),
    audit_request_uri String ALIAS JSONExtractString(raw, 'audit', 'request_uri'),
    audit_decision String ALIAS JSONExtractString(raw, 'audit', 'decision'),

    -- time is last-but-one in the sorting key, so within a (workload, kind) run it is sorted and each granule
    -- covers a narrow span: a minmax index turns "within N minutes of" into a few granules.
    INDEX idx_time time TYPE minmax GRANULARITY 1,
    INDEX idx_event_id event_id TYPE bloom_filter(0.01) GRANULARITY 2,
    INDEX idx_pod pod TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_comm comm TYPE bloom_filter(0.01) GRANULARITY 2,
    INDEX idx_exe exe TYPE bloom_filter(0.01) GRANULARITY 2,
    INDEX idx_exec_id exec_id TYPE bloom_filter(0.01) GRANULARITY 2,
    INDEX idx_parent_exec_id parent_exec_id TYPE bloom_filter(0.01) GRANULARITY 2,
    INDEX idx_file_path file_path TYPE bloom_filter(0.01) GRANULARITY 2,
    INDEX idx_dst_ip dst_ip TYPE bloom_filter(0.01) GRANULARITY 2,
    INDEX idx_src_ip src_ip TYPE bloom_filter(0.01) GRANULARITY 2,
    INDEX idx_dns_query dns_query TYPE bloom_filter(0.01) GRANULARITY 2,
    INDEX idx_uid uid TYPE set(64) GRANULARITY 2,
    INDEX idx_audit_user audit_user TYPE bloom_filter(0.01) GRANULARITY 2,
    INDEX idx_audit_subresource audit_subresource TYPE set(32) GRANULARITY 1,
    INDEX idx_audit_source_ips audit_source_ips TYPE bloom_filter(0.01) GRANULARITY 2
)
ENGINE = ReplacingMergeTree
PARTITION BY toDate(time)
ORDER BY (cluster, namespace, workload_name, kind, time, event_id)
TTL toDateTime(ingested) + toIntervalDay(${retention_days})
SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1;
