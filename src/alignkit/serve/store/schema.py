"""The store's tables and their migrations (used by ``alignkit.serve.store.api``).

``migrate`` runs at every start: in one transaction (SQLite: BEGIN IMMEDIATE; PostgreSQL: an advisory lock, so
concurrent starts take turns) it reads ``schema_version``, refuses a database newer than the code, and applies the
missing migrations; any failure rolls all of them back.

Each ``Migration`` has two halves: ``model`` brings the SQLAlchemy ``MetaData`` (what the store's queries use) to its
version, and ``upgrade`` runs the DDL that brings a database from the previous version to it, seeing the metadata
already at its version. The live metadata is every ``model`` applied in order, so the queries and a migrated database
always agree, and a fresh database is built by the same steps as an old one. To change the schema, append a migration
(never edit a released one), for example:

    def _v2_model(md):
        md.tables["feedback"].append_column(sa.Column("source", sa.String, nullable=True))

    def _v2_upgrade(conn, md):
        add_column(conn, md.tables["feedback"].c.source)

    MIGRATIONS.append(Migration(2, "feedback.source", _v2_model, _v2_upgrade))
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

import sqlalchemy as sa
from sqlalchemy.schema import CreateColumn

from alignkit.serve.store.db import Database, StoreError

log = logging.getLogger(__name__)
_PG_MIGRATION_LOCK = 0x616C6B73  # pg_advisory_xact_lock key: one migrating process at a time

#: Outside the migrations: it records them. One row per applied migration.
VERSION_METADATA = sa.MetaData()
schema_version = sa.Table(
    "schema_version",
    VERSION_METADATA,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("description", sa.String, nullable=False),
    sa.Column("applied", sa.Float, nullable=False),
)


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    model: Callable[[sa.MetaData], None]
    upgrade: Callable[[sa.Connection, sa.MetaData], None]


def add_column(conn: sa.Connection, column: sa.Column) -> None:
    """``ALTER TABLE ... ADD COLUMN`` for a column already appended to its table in the metadata."""
    ddl = CreateColumn(column).compile(dialect=conn.dialect)
    conn.exec_driver_sql(f"ALTER TABLE {column.table.name} ADD COLUMN {ddl}")


def _v1_model(md: sa.MetaData) -> None:
    sa.Table(
        "responses",
        md,
        sa.Column("id", sa.String, primary_key=True),
        sa.Column("request_id", sa.String, nullable=False),
        sa.Column("created", sa.Float, nullable=False, index=True),
        sa.Column("variant", sa.String, nullable=False, index=True),
        sa.Column("model", sa.String, nullable=False),
        sa.Column("user_hash", sa.String),
        sa.Column("messages", sa.JSON, nullable=False),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column("finish_reason", sa.String),
        sa.Column("prompt_tokens", sa.Integer),
        sa.Column("completion_tokens", sa.Integer),
        sa.Column("latency_s", sa.Float),
        sa.Column("ttft_s", sa.Float),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("flags", sa.JSON, nullable=False),
        sa.Column("comparison_id", sa.String, index=True),
    )
    sa.Table(
        "feedback",
        md,
        sa.Column("id", sa.String, primary_key=True),
        sa.Column("response_id", sa.String, sa.ForeignKey("responses.id"), nullable=False, index=True),
        sa.Column("created", sa.Float, nullable=False, index=True),
        sa.Column("value", sa.String, nullable=False),
        sa.Column("comment", sa.Text),
        sa.Column("user_hash", sa.String),
        sa.Column("snapshot", sa.JSON, nullable=False),
    )
    sa.Table(
        "comparisons",
        md,
        sa.Column("id", sa.String, primary_key=True),
        sa.Column("created", sa.Float, nullable=False, index=True),
        sa.Column("user_hash", sa.String),
        sa.Column("messages", sa.JSON, nullable=False),
        sa.Column("response_a", sa.String, nullable=False, index=True),
        sa.Column("response_b", sa.String, nullable=False, index=True),
        sa.Column("variant_a", sa.String, nullable=False, index=True),
        sa.Column("variant_b", sa.String, nullable=False, index=True),
        sa.Column("a_shown", sa.String, nullable=False),
        sa.Column("vote", sa.String),
        sa.Column("vote_id", sa.String),
        sa.Column("voted", sa.Float),
        sa.Column("vote_user_hash", sa.String),
    )
    sa.Table(
        "weight_changes",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("created", sa.Float, nullable=False, index=True),
        sa.Column("weights", sa.JSON, nullable=False),
        sa.Column("actor", sa.String, nullable=False),
    )


def _v1_upgrade(conn: sa.Connection, md: sa.MetaData) -> None:
    md.create_all(conn, checkfirst=False)


def _v2_model(md: sa.MetaData) -> None:
    sa.Table(
        "rollout_events",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("created", sa.Float, nullable=False, index=True),
        sa.Column("loop", sa.String, nullable=False, index=True),
        sa.Column("action", sa.String, nullable=False),
        sa.Column("champion", sa.String),
        sa.Column("candidate", sa.String),
        sa.Column("share", sa.Float),  # the candidate's traffic share after this event
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("numbers", sa.JSON, nullable=False),
    )


def _v2_upgrade(conn: sa.Connection, md: sa.MetaData) -> None:
    md.tables["rollout_events"].create(conn, checkfirst=False)


MIGRATIONS: list[Migration] = [
    Migration(1, "responses, feedback, comparisons, weight_changes", _v1_model, _v1_upgrade),
    Migration(2, "rollout_events (alignkit loop decisions)", _v2_model, _v2_upgrade),
]


def build_metadata(migrations: list[Migration], upto: int | None = None) -> sa.MetaData:
    """The metadata after the migrations up to version ``upto`` (all when None), without touching a database."""
    md = sa.MetaData()
    for m in migrations:
        if upto is not None and m.version > upto:
            break
        m.model(md)
    return md


def check_order(migrations: list[Migration]) -> None:
    """Migrations are numbered 1, 2, 3, ... in order (a programming error otherwise)."""
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise RuntimeError(f"store migrations must be numbered 1..N in order, got {versions}")


def migrate(db: Database) -> int:
    """Bring ``db`` to the latest schema version in one transaction and return that version."""
    migrations = MIGRATIONS
    check_order(migrations)
    latest = len(migrations)
    try:
        with db.write.begin() as conn:
            if db.dialect == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
            VERSION_METADATA.create_all(conn)
            current = conn.scalar(sa.select(sa.func.max(schema_version.c.version))) or 0
            if current > latest:
                raise StoreError(
                    f"the store {db.where} has schema version {current}, newer than this alignkit's {latest} "
                    "(written by a newer alignkit). Fix: upgrade alignkit (pip install -U alignkit), or use "
                    "another database; it was left unchanged"
                )
            md = build_metadata(migrations, upto=current)
            for m in migrations[current:]:
                m.model(md)
                m.upgrade(conn, md)
                conn.execute(schema_version.insert().values(version=m.version, description=m.description,
                                                            applied=time.time()))  # fmt: skip
                log.info("store %s: applied migration %d (%s)", db.where, m.version, m.description)
    except sa.exc.DBAPIError as e:
        raise db.error(e, "opening") from None
    return latest
