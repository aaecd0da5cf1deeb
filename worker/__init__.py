"""Celery workers: thin adapters that run hubscout for queued jobs and write results to the DB and storage."""
