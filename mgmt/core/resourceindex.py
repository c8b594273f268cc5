"""One uuid namespace across every kind of resource: the ``resource`` table and its triggers.

Every table with a ``uuid`` and an ``owner_account_uuid`` column carries ``TRIGGER_NAME``, which
keeps one ``resource`` row per uuid (kind = the table's name, and the owner). PostgreSQL does it
rather than the ORM so that the raw SQL some hot paths write (a VM's create) is covered too, and a
race between two creates of the same uuid in two tables is settled by the primary key.

Choices (issue #11):

* A uuid taken by anything, of any kind and any account, refuses the insert: ``SYS.CONFLICT``
  "resource uuid <uuid> is already in use", the same words whoever holds it. Ownership and
  sharing are therefore unambiguous: one uuid is one resource.
* A deleted resource leaves a tombstone (``deleted_at``) instead of freeing its uuid. Only the
  same owner may use the uuid again (a client retrying its own create after a failure). So the
  one thing a caller-chosen ``resourceUuid`` tells another account is "this uuid has been issued"
  -- which anyone holding a uuid already knows, since uuids are 128-bit random and are only
  obtained from a resource that was made -- and never whether the resource still exists, what
  kind it is, or whose it is. (Refusing a taken uuid cannot be made to look like success, so
  "issued or not" is the unavoidable minimum; the tombstone keeps it from saying more.)
* A migration that adds a resource table calls ``index_table`` for it (a test checks that every
  such table of the models has the trigger).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, text

TRIGGER_NAME = "ringstack_resource_index"
FUNCTION_NAME = "ringstack_resource_index"
CONSTRAINT = "pk_resource"

FUNCTION_SQL = f"""
CREATE OR REPLACE FUNCTION {FUNCTION_NAME}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    INSERT INTO resource AS r (uuid, kind, owner_account_uuid, created_at, deleted_at)
    VALUES (NEW.uuid, TG_TABLE_NAME, NEW.owner_account_uuid, now(), NULL)
    ON CONFLICT (uuid) DO UPDATE
      SET kind = EXCLUDED.kind, owner_account_uuid = EXCLUDED.owner_account_uuid,
          created_at = now(), deleted_at = NULL
      WHERE r.deleted_at IS NOT NULL
        AND r.owner_account_uuid IS NOT DISTINCT FROM EXCLUDED.owner_account_uuid;
    IF NOT FOUND THEN
      RAISE unique_violation USING
        MESSAGE = format('resource uuid %s is already in use', NEW.uuid), CONSTRAINT = '{CONSTRAINT}';
    END IF;
    RETURN NEW;
  ELSIF TG_OP = 'UPDATE' THEN
    IF NEW.uuid IS DISTINCT FROM OLD.uuid THEN
      RAISE EXCEPTION 'the uuid of a resource never changes (%s in %s)', OLD.uuid, TG_TABLE_NAME;
    END IF;
    UPDATE resource SET owner_account_uuid = NEW.owner_account_uuid
      WHERE uuid = NEW.uuid AND kind = TG_TABLE_NAME;
    RETURN NEW;
  END IF;
  UPDATE resource SET deleted_at = now() WHERE uuid = OLD.uuid AND kind = TG_TABLE_NAME;
  RETURN OLD;
END $$;
"""


def trigger_sql(table: str) -> list[str]:
    return [
        f'DROP TRIGGER IF EXISTS {TRIGGER_NAME} ON "{table}"',
        f"CREATE TRIGGER {TRIGGER_NAME} AFTER INSERT OR DELETE OR UPDATE OF uuid, owner_account_uuid "
        f'ON "{table}" FOR EACH ROW EXECUTE FUNCTION {FUNCTION_NAME}()',
    ]


def index_table(conn: Connection, table: str) -> None:
    """Put ``table`` in the namespace: its existing rows (first come keeps a uuid already taken
    by another table: there can be such rows only from before this index), then the trigger."""
    conn.execute(
        text(
            f"INSERT INTO resource (uuid, kind, owner_account_uuid) SELECT uuid, :kind, owner_account_uuid "
            f'FROM "{table}" ON CONFLICT (uuid) DO NOTHING'
        ),
        {"kind": table},
    )
    for statement in trigger_sql(table):
        conn.execute(text(statement))


def resource_tables(conn: Connection) -> list[str]:
    """The tables of the current schema with both a ``uuid`` and an ``owner_account_uuid``."""
    rows = conn.execute(
        text(
            "SELECT table_name FROM information_schema.columns WHERE table_schema = current_schema() "
            "AND column_name IN ('uuid', 'owner_account_uuid') AND table_name <> 'resource' "
            "GROUP BY table_name HAVING count(*) = 2 ORDER BY table_name"
        )
    )
    return [str(r[0]) for r in rows]


def indexed_tables(conn: Connection) -> set[str]:
    rows = conn.execute(
        text(
            "SELECT c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "WHERE t.tgname = :name AND NOT t.tgisinternal"
        ),
        {"name": TRIGGER_NAME},
    )
    return {str(r[0]) for r in rows}


def taken_message(uuid: Any) -> str:
    return f"resource uuid {uuid} is already in use"
