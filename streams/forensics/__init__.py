"""Forensics over the event store: named hunts, capture files and replay.

- :mod:`streams.forensics.named` — named queries (``queries/*.yaml``) with typed, server-bound parameters
- :mod:`streams.forensics.reader` — read-only sessions: a server, the running worker's endpoint, or the directory
- :mod:`streams.forensics.capture` — capture files (JSON lines, optionally zstd) from the store or a topic
- :mod:`streams.forensics.replay` — publish captures or store selections back into the pipeline, marked replayed
"""
