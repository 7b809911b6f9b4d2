"""Celery's own DatabaseBackend, pointed at a scratch copy of its task table.

Probes that write task states (the backend probe's contention experiment, the e2e probe's
worker) must run the statements the installed Celery runs, and must never touch the user's
tables. Celery's ``database_table_names`` cannot do that safely:

- ``DatabaseBackend.__init__`` renames the *module-level* model classes (``Task.configure``), so
  every other backend in this process (the user's own ``--app``) would point at our table;
- dropping a table built from Celery's models also drops their shared PostgreSQL sequence
  ``task_id_sequence``, which a real ``celery_taskmeta`` uses for every insert;
- Celery's ``prepare_models`` runs ``create_all`` on its shared metadata: the user's tables;
- the ``date_done`` index keeps Celery's name and collides with a real table's in PostgreSQL.

So the backend here maps a model class of its own to a copy of Celery's table (same columns,
unique key and indexes, our name, its own id generator), and creating and dropping the table
is the caller's job, with the drop registered before the create.
"""

from __future__ import annotations

from typing import Any


def scratch_model(table_name: str, schema: str | None, extended: bool) -> Any:
    """A mapped class for a copy of Celery's task table under our name."""
    import sqlalchemy as sa
    from celery.backends.database.models import Task, TaskExtended
    from sqlalchemy.orm import declarative_base

    source = TaskExtended if extended else Task
    # Celery 5.7 builds one shared Table with the extended columns in it (so its own tables have
    # them all); plain ``Task`` maps only some of them. Copy the table whole, map what Celery maps.
    mapped = [c.key for c in sa.inspect(source).columns]
    base = declarative_base()
    columns = []
    for column in source.__table__.columns:
        copy = column._copy()
        if column.name == "id":
            copy.default = None  # a SERIAL/AUTO_INCREMENT of our own, not task_id_sequence
        columns.append(copy)
    table = sa.Table(table_name, base.metadata, *columns, schema=schema, sqlite_autoincrement=True)
    namespace = {"__table__": table, "__mapper_args__": {"include_properties": mapped},
                 "__init__": Task.__init__, "to_dict": _to_dict(mapped),
                 "configure": classmethod(lambda cls, schema=None, name=None: None)}
    return type("CelerydiagScratchTask", (base,), namespace)


def _to_dict(mapped: list[str]) -> Any:
    """``to_dict`` for the scratch class: Task's, plus the extended columns it maps.

    Not ``TaskExtended.to_dict`` itself: that calls ``super().to_dict()``, whose implicit
    ``__class__`` is TaskExtended, and our class is no subclass of it (it cannot be: it would map
    Celery's shared table), so with result_extended every read raised ``TypeError: super(type,
    obj)``. What TaskExtended maps beyond Task is what its to_dict adds (six columns, seven with
    5.7's ``stamps``), each read the way it reads ``stamps``: None when it cannot be loaded."""
    import sqlalchemy as sa
    from celery.backends.database.models import Task

    plain = {c.key for c in sa.inspect(Task).columns}
    extra = [key for key in mapped if key not in plain]

    def to_dict(self: Any) -> dict[str, Any]:
        data: dict[str, Any] = Task.to_dict(self)
        for key in extra:
            try:
                data[key] = getattr(self, key)
            except Exception:  # a column Celery deferred (missing from an old table)
                data[key] = None
        return data

    return to_dict


class _NoGroups:
    """Stands in for the group model: probes store no groups, and ``configure`` must not rename
    Celery's shared TaskSet class."""

    @classmethod
    def configure(cls, schema: str | None = None, name: str | None = None) -> None:
        return None


def scratch_backend_class(model: Any, forked: bool) -> type:
    """A DatabaseBackend subclass on ``model``'s table, for ``app.backend_cls``.

    A class, not an instance, because Celery keeps one backend per thread (``app.backend`` is
    thread-local): the worker thread and the client each build their own from it. ``forked``
    picks pooled connections (a prefork child) or a new connection per call (NullPool: web
    processes, solo/threads/gevent workers; reference A.2).
    """
    from celery.backends.database import DatabaseBackend

    from celerydiag.compat import own_session_manager

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        DatabaseBackend.__init__(self, *args, **kwargs)
        if kwargs.get("engine_options"):  # ours win over the app's, as from 5.6.3 (before, the app's won)
            self.engine_options = dict(self.app.conf.database_engine_options or {}, **kwargs["engine_options"])
        manager = own_session_manager(self)  # Celery 5.3/5.4 give a backend none of its own
        manager.prepared = True  # never create_all/ALTER Celery's shared metadata
        manager.forked = forked

    def result_session(self: Any, session_manager: Any = None) -> Any:
        # Before 5.5, ResultSession() defaults to the process-wide manager, not self.session_manager.
        return DatabaseBackend.ResultSession(self, session_manager or self.session_manager)

    # A property that ignores assignment: with result_extended Celery's __init__ sets
    # self.task_cls = TaskExtended and then calls its configure(), renaming the shared class.
    task_cls = property(lambda self: model, lambda self, value: None)
    return type("CelerydiagScratchBackend", (DatabaseBackend,),
                {"task_cls": task_cls, "taskset_cls": _NoGroups, "__init__": __init__,
                 "ResultSession": result_session})


def scratch_backend(app: Any, url: str, model: Any, engine_options: dict[str, Any], forked: bool) -> Any:
    """One instance of :func:`scratch_backend_class` for ``app``, on the SQLAlchemy ``url``."""
    # At setup Celery would create_all its *shared* metadata: the user's celery_taskmeta, not ours.
    app.conf.database_create_tables_at_setup = False
    return scratch_backend_class(model, forked)(app=app, url=url, engine_options=engine_options)
