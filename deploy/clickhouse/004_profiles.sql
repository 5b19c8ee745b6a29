-- Baseline profiles: one row per published revision of a workload container's profile; profiles_latest gives
-- the newest revision of each. No TTL: profiles are small and explain past verdicts.
CREATE TABLE IF NOT EXISTS ${database}.profiles
(
    workload_key String,
    container LowCardinality(String),
    revision UInt32,
    status LowCardinality(String),
    learning_started DateTime64(9, 'UTC'),
    learning_until DateTime64(9, 'UTC'),
    updated DateTime64(9, 'UTC'),
    execs Map(String, Array(String)),
    files Array(String),
    egress Array(String),
    dns Array(String),
    listen_ports Array(UInt16),
    privileges Array(LowCardinality(String)),
    raw String CODEC(ZSTD(3)),
    ingested DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY (workload_key, container, revision);

CREATE VIEW IF NOT EXISTS ${database}.profiles_latest AS
SELECT * FROM ${database}.profiles FINAL
ORDER BY workload_key, container, revision DESC
LIMIT 1 BY workload_key, container;
