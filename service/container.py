"""The services a request or a job works with, built once per process: settings, database, storage, queue.

The API keeps one on ``app.state`` (``app.routes.ServicesDep`` hands it to a route); each worker process builds
its own (``worker.runtime.context``), after any fork.
"""
from __future__ import annotations

from dataclasses import dataclass

from service.db import Database
from service.queue import JobQueue
from service.settings import Settings
from service.storage import LocalStorage


@dataclass
class Services:
    settings: Settings
    db: Database
    storage: LocalStorage
    queue: JobQueue

    @classmethod
    def from_settings(cls, settings: Settings) -> "Services":
        return cls(settings=settings, db=Database(settings), storage=LocalStorage(settings.storage_root),
                   queue=JobQueue(settings))

    @property
    def repository(self):
        from hubscout.teachers import Repository  # torch: the API loads it only when it needs a teacher

        return Repository(self.settings.repository_dir)

    def close(self) -> None:
        self.queue.close()
        self.db.dispose()
