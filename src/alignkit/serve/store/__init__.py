"""The durable store of served responses, feedback, comparisons and A/B weight changes: ``api`` (the ``Store``),
``db`` (opening SQLite / PostgreSQL, errors), ``schema`` (tables and migrations), ``commit`` (group commit)."""

from alignkit.serve.store.api import FEEDBACK_VALUES, VOTES, Store
from alignkit.serve.store.db import DEFAULT_DB, NotFound, StoreError

__all__ = ["DEFAULT_DB", "FEEDBACK_VALUES", "NotFound", "Store", "StoreError", "VOTES"]
