"""What owns a process or a side effect: the Spark session (``spark.py``), the Derby metastore server
(``metastore.py``), the SQL endpoint (``sql_server.py``), the Delta tables (``tables/``, the only code that touches
Delta), the catalog's names and views (``catalog.py``), leases (``lease.py``), the run log (``run_log.py``), the
quarantine writer (``quarantine.py``) and per-data-root secrets (``credentials.py``).

It imports only :mod:`cxatlas.core` (the vocabulary: settings, schemas, errors, run ids); see DESIGN.md.
"""
