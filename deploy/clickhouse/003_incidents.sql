-- Incidents (stories): every revision is its own row, keyed (incident_id, revision). A redelivered revision has
-- the same key and folds away on merge (ReplacingMergeTree); incidents_latest gives the newest revision of each
-- story. Stories are few and are the record of an investigation: no TTL.
CREATE TABLE IF NOT EXISTS ${database}.incidents
(
    incident_id String,
    revision UInt32,
    status LowCardinality(String),
    severity LowCardinality(String),
    severity_rank UInt8,
    title String,
    summary String,
    first_seen DateTime64(9, 'UTC'),
    last_seen DateTime64(9, 'UTC'),
    updated DateTime64(9, 'UTC'),
    workloads Array(String),
    namespaces Array(LowCardinality(String)),
    pods Array(String),
    actors Array(String),
    mitre Array(LowCardinality(String)),
    alert_ids Array(String),
    rule_ids Array(LowCardinality(String)),
    event_ids Array(String),
    node_ids Array(String),
    raw String CODEC(ZSTD(3)),
    ingested DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY (incident_id, revision);

CREATE VIEW IF NOT EXISTS ${database}.incidents_latest AS
SELECT * FROM ${database}.incidents FINAL
ORDER BY incident_id, revision DESC
LIMIT 1 BY incident_id;
