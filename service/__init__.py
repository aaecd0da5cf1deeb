"""Shared service state: database, tables, the job state machine, queue, settings, storage, specifications,
webhooks and the teacher-folder sync. `app/` (HTTP) and `worker/` (Celery) both build on it; it builds on
`hubscout` and never imports either of them."""
