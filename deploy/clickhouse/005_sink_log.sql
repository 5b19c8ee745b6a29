-- The sink's write-ahead intents: before inserting a batch of events, the sink records, per Kafka partition, the
-- offset range it is about to write. After a restart or a rebalance, the highest recorded offset bounds the
-- messages a previous owner may already have stored; only those are checked against the table by event_id (see
-- streams/store/dedup.py). Rows are tiny and only the last days matter.
CREATE TABLE IF NOT EXISTS ${database}.sink_log
(
    consumer LowCardinality(String),
    topic LowCardinality(String),
    partition UInt32,
    first_offset UInt64,
    last_offset UInt64,
    rows UInt32,
    written DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
ORDER BY (consumer, topic, partition, last_offset)
TTL toDateTime(written) + toIntervalDay(14);
