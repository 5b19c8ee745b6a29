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
    schema_version UInt16,
    enriched Bool,
    replayed Bool,

    cluster LowCardinality(String),
    namespace LowCardinality(String),
    pod LowCardinality(String),
    container LowCardinality(String),
    container_id String,
    workload_kind LowCardinality(String),
    workload_name LowCardinality(String),
    image LowCardinality(String),
    service_account LowCardinality(String),
    pod_ip String,
    labels Map(LowCardinality(String), String),

    pid UInt32,
    ppid UInt32,
    tid UInt32,
    uid Int64,
    euid Int64,
    gid Int64,
    egid Int64,
    comm LowCardinality(String),
    exe LowCardinality(String),
    args Array(String),
    cwd LowCardinality(String),
    exec_id String,
    parent_exec_id String,
    parent_exe LowCardinality(String),
    start_time UInt64,
    exit_code Nullable(Int32),
    tty Bool,
    stdio_socket Bool,
    cgroup_id UInt64,
    mnt_ns UInt64,
    pid_ns UInt64,

    file_path String,
    file_flags Int64,
    file_mode UInt32,
    file_write Bool,
    file_target String,

    net_protocol LowCardinality(String),
    net_family LowCardinality(String),
    src_ip String,
    src_port UInt16,
    dst_ip String,
    dst_port UInt16,
    net_direction LowCardinality(String),

    dns_query String,
    dns_qtype LowCardinality(String),
    dns_server String,
    dns_answers Array(String),

    priv_op LowCardinality(String),
    priv_old_uid Int64,
    priv_new_uid Int64,
    priv_old_gid Int64,
    priv_new_gid Int64,
    priv_caps UInt64,
    priv_target_pid UInt32,
    priv_flags Int64,
    priv_detail String,
    priv_result Int64,

    audit_id String,
    audit_stage LowCardinality(String),
    audit_verb LowCardinality(String),
    audit_user LowCardinality(String),
    audit_groups Array(LowCardinality(String)),
    audit_impersonated_user LowCardinality(String),
    audit_resource LowCardinality(String),
    audit_subresource LowCardinality(String),
    audit_api_group LowCardinality(String),
    audit_namespace LowCardinality(String),
    audit_name String,
    audit_request_uri String,
    audit_source_ips Array(String),
    audit_user_agent LowCardinality(String),
    audit_response_code Int32,
    audit_decision LowCardinality(String),

    raw String CODEC(ZSTD(3)),
    ingested DateTime64(3, 'UTC') DEFAULT now64(3),

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
    INDEX idx_audit_source_ips audit_source_ips TYPE bloom_filter(0.01) GRANULARITY 2
)
ENGINE = ReplacingMergeTree
PARTITION BY toDate(time)
ORDER BY (cluster, namespace, workload_name, kind, time, event_id)
TTL toDateTime(ingested) + toIntervalDay(${retention_days})
SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1;
