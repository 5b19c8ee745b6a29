-- Alerts: one row per alert update. Detection folds repeats of one cause into `count`, re-emitting the alert with
-- the same alert_id; ReplacingMergeTree(count) keeps the highest count, so `FINAL` (or the alerts_latest view)
-- reads one row per alert and a redelivered update folds away. Partitioned by first_seen, which an alert never
-- changes, so every update of one alert lands in the same partition (replacement works within a partition only).
CREATE TABLE IF NOT EXISTS ${database}.alerts
(
    alert_id String,
    rule_id LowCardinality(String),
    rule_name LowCardinality(String),
    severity LowCardinality(String),
    severity_rank UInt8,
    mitre Array(LowCardinality(String)),
    message String,
    time DateTime64(9, 'UTC'),
    first_seen DateTime64(9, 'UTC'),
    last_seen DateTime64(9, 'UTC'),
    count UInt64,
    dedup_key String,
    cluster LowCardinality(String),
    namespace LowCardinality(String),
    pod LowCardinality(String),
    container LowCardinality(String),
    workload_kind LowCardinality(String),
    workload_name LowCardinality(String),
    image LowCardinality(String),
    actors Array(String),
    event_id String,
    event_kind LowCardinality(String),
    exec_id String,
    tags Array(LowCardinality(String)),
    raw String CODEC(ZSTD(3)),
    ingested DateTime64(3, 'UTC') DEFAULT now64(3),

    INDEX idx_alert_event_id event_id TYPE bloom_filter(0.01) GRANULARITY 1
)
ENGINE = ReplacingMergeTree(count)
PARTITION BY toYYYYMM(first_seen)
ORDER BY (rule_id, alert_id)
TTL toDateTime(ingested) + toIntervalDay(${retention_days})
SETTINGS ttl_only_drop_parts = 1;

CREATE VIEW IF NOT EXISTS ${database}.alerts_latest AS
SELECT * FROM ${database}.alerts FINAL;
