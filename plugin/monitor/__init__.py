"""Watching unirg: a snapshot of the queue database (:mod:`.snapshot`), the status page drawn from it
(:mod:`.page`), Prometheus metrics computed from it at scrape time (:mod:`.metrics`) and the small HTTP
server of ``unirg status --serve`` (:mod:`.server`). The Orthanc plugin serves the same page and metrics
at ``/unirg/`` and ``/unirg/metrics``."""
