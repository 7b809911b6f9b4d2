"""Static checks of the target's Celery configuration against known state-latency pitfalls.

No network: it reads ``target.conf`` (Celery fills in the defaults) and knows the installed
Celery and SQLAlchemy versions, because several facts changed between releases (which backends
honour ``result_backend_always_retry``, whether ``date_done`` is indexed, which engine options
crash). Every claim here is from ``shared/reference/celery-facts.md`` (section letters in the
comments) or from the installed Celery source where the two differ (5.7 rewrote the database
backend's retries and row locking).

``impact_ms`` policy, so static findings rank honestly next to measured ones:
- a *cost* finding (an extra write, a bigger payload) carries what one state update pays;
  when that depends on the live system it is 0 and the detail names the probe that measures it;
- a *hazard* finding (a timeout that lets one update stall) is ``findings.hazard``: ``impact_ms``
  0 and the stall the setting allows in ``evidence.worst_case_ms``: how often it happens, and so
  what it adds to the P99, is unknowable statically, and a worst case must not outrank a measured
  delay. ``rank`` makes it a warning when that stall would reach 20 % of the budget and never
  more; only a live probe may call a cause critical;
- security (pickle) and crash (a setting that makes every write raise) findings have a fixed
  severity and ``impact_ms`` 0: they are not latency.

Every Fix.config is pasteable Python assigning real Celery settings; fixes that change the same
setting are computed from one recommendation, so two findings never give contradicting advice.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable

from celerydiag.compat import sqlalchemy_version
from celerydiag.config.fixes import (
    CONNECT_TIMEOUT_S,
    NULLPOOL_FILTER_FROM,
    PLACEHOLDER_REDIS,
    SQLALCHEMY_NO_AUTOCOMMIT_FROM,
    assignments,
    db_dialect,
    engine_options,
    has_connect_timeout,
    index_ddl,
    recommended_engine_options,
    recommended_transport_options,
    retry_settings,
    transport_options,
)
from celerydiag.findings import Cause, Finding, Fix, Kind, Severity, delay, hazard
from celerydiag.probe import Probe, ProbeContext
from celerydiag.target import AMQP_SCHEMES, REDIS_SCHEMES, Target

# ---- version facts (celery-facts.md; the unit tests check them against the installed code) ----
RETRY_EFFECTIVE_FROM = {"redis": (5, 5, 0), "rediss": (5, 5, 0), "sentinel": (5, 5, 0),
                        "db": (5, 6, 3)}  # A.1, A.2: exception_safe_to_retry exists from these
RESULT_STAMPS_FROM = (5, 7, 0)  # installed code: TaskExtended gains a 'stamps' column (7 extra, 6 before)
DB_RETRY_DEFAULT_ON_FROM = (5, 7, 0)  # installed code: DatabaseBackend defaults always_retry on, 3 tries
DATE_DONE_INDEX_FROM = (5, 6, 3)  # A.2 / E / G.1: celery#10097, PR #10098

PUBLISH_RETRY_KEYS = ("max_retries", "interval_start", "interval_step", "interval_max")
PICKLE_MARKERS = ("pickle", "python-serialize")
INNODB_LOCK_WAIT_S = 50.0  # E: innodb_lock_wait_timeout default
SANE_REDIS_TIMEOUT_S = 10.0  # a healthy Redis answers in milliseconds; above this a stall is the risk
# No redis_retry_on_timeout: result_backend_always_retry already retries a timed-out store on a
# new connection, and retry_on_timeout would double every wait (audit: 1.1 s -> 2.0 s).
RECOMMENDED_REDIS = {"redis_socket_timeout": 5.0, "redis_socket_connect_timeout": 5.0,
                     "redis_backend_health_check_interval": 25}
REDIS_TIMEOUT_SETTINGS = ("redis_socket_timeout", "redis_socket_connect_timeout")
NOMINAL_BROKER_RTT_MS = 1.0  # one LAN round trip plus broker enqueue; the broker probe measures yours
# py-amqp's DEFAULT_SOCKET_SETTINGS (amqp/transport.py:31-37): keepalive after 60 s idle, 9 probes
# 10 s apart; what notices a dead connection when heartbeats are off
AMQP_KEEPALIVE = {"TCP_KEEPIDLE": 60, "TCP_KEEPINTVL": 10, "TCP_KEEPCNT": 9}
KEEPALIVE_DETECT_S = (AMQP_KEEPALIVE["TCP_KEEPIDLE"]
                      + AMQP_KEEPALIVE["TCP_KEEPINTVL"] * AMQP_KEEPALIVE["TCP_KEEPCNT"])

DOCS = "https://docs.celeryq.dev/en/stable/userguide/configuration.html#"
D_ENGINE_OPTIONS = DOCS + "database-engine-options"
D_MYSQL_FAQ = "https://docs.celeryq.dev/en/stable/faq.html#mysql-is-throwing-deadlock-errors-what-can-i-do"
D_DB_RESULTS = "https://docs.celeryq.dev/en/stable/userguide/tasks.html#database-result-backend"
D_RPC_RESULTS = "https://docs.celeryq.dev/en/stable/userguide/tasks.html#rpc-result-backend-rabbitmq-qpid"
D_TRANSPORT_OPTIONS = DOCS + "broker-transport-options"
D_PUBLISH_RETRY = "https://docs.celeryq.dev/en/stable/userguide/calling.html#message-sending-retry"
D_CONFIRMS = "https://www.rabbitmq.com/docs/confirms"
D_REDIS_SETTINGS = DOCS + "redis-backend-settings"
D_ALWAYS_RETRY = DOCS + "result-backend-always-retry"
D_INDEX_ISSUE = "https://github.com/celery/celery/issues/10097"
D_TRACK_STARTED = DOCS + "task-track-started"
D_RESULT_EXTENDED = DOCS + "result-extended"
D_SECURITY = "https://docs.celeryq.dev/en/stable/userguide/security.html#serializers"
D_IGNORE_RESULT = DOCS + "task-ignore-result"
D_RESULT_BACKEND = DOCS + "result-backend"
D_NULLPOOL_ISSUE = "https://github.com/celery/celery/issues/2661"
D_HEARTBEAT = DOCS + "broker-heartbeat"
D_POOL_LIMIT = DOCS + "broker-pool-limit"
D_RESULT_TRANSPORT = DOCS + "result-backend-transport-options"

D_EVENTS = "https://docs.celeryq.dev/en/stable/userguide/monitoring.html#events"
D_PREFETCH = "https://docs.celeryq.dev/en/stable/userguide/optimizing.html#prefetch-limits"
D_RESULT_EXPIRES = DOCS + "result-expires"
D_FAILOVER = DOCS + "broker-failover-strategy"
D_QUORUM = "https://docs.celeryq.dev/en/stable/getting-started/backends-and-brokers/rabbitmq.html#using-quorum-queues"

# ---- fix templates: one-line summaries; the config is built from the user's own values -------
S_ISOLATION = "Run the MySQL result backend at READ COMMITTED (your engine options merged; same dict in every fix)"
S_AUTOCOMMIT = "Remove 'autocommit' from database_engine_options (SQLAlchemy 2 rejects it)"
S_NULLPOOL_CRASH = "Remove max_overflow/echo_pool from database_engine_options (crash before Celery 5.6.3)"
S_RPC_CONFIRM = "Keep publisher confirms for tasks; store states in Redis so update_state skips the broker"
S_PUBLISH_RETRY = "Set publish retries where Celery reads them: task_publish_retry_policy"
S_CONFIRM_IGNORED = "Remove confirm_publish: only the AMQP transport reads it"
S_CONFIRM_DELIVERY = "confirm_delivery is not an option: the AMQP spelling is confirm_publish"
S_CONFIRM_DELIVERY_NON_AMQP = "Remove confirm_delivery: no Celery/kombu transport reads it"
S_REDIS_TIMEOUT = ("Bound Redis result-backend socket waits and retry a failed store a few times; if Redis stays "
                   "away, update_state() raises BackendStoreError in the task")
S_RETRY_RPC = "Remove result_backend_always_retry: rpc:// retries publishes with kombu's own policy"
S_RETRY_UPGRADE = "Upgrade Celery to {version} or later for result_backend_always_retry to work on {backend}"
S_TASK_EVENTS = ("If you watch tasks in Flower or another event monitor: worker_send_task_events = True (or "
                 "celery worker -E) and task_send_sent_event = True; each adds one broker message per event")
S_ENGINE_DEFAULTS = "Keep Celery's pool_pre_ping/pool_recycle in your database_engine_options"
S_PREFETCH = ("For long tasks, reserve one task per worker process: worker_prefetch_multiplier = 1 (and "
              "task_acks_late = True for idempotent tasks); not for short tasks, where prefetch keeps "
              "workers busy")
S_RESULT_EXPIRES = ("Let results expire (seconds; Celery's default is one day), and run celery beat on a "
                    "database backend")
S_RPC_READER = "Use a stored result backend if any process other than the sender reads states"
S_REDIS_KEEPALIVE = "Turn on TCP keepalive for the Redis result backend"
S_FAILOVER_ONE = "Remove broker_failover_strategy, or list the alternate broker URLs"
S_FAILOVER_NAME = "Use a kombu failover strategy name ('round-robin' or 'shuffle')"
S_QUORUM = ("Drop the x-ha-* queue arguments; for replicated queues set task_default_queue_type = 'quorum' or "
            "Queue(..., queue_arguments={'x-queue-type': 'quorum'}), and re-declare existing queues")
S_SOCKET_SETTINGS = "Key socket_settings by socket.TCP_* constants, not strings"
S_KEEPALIVE_IGNORED = "Remove the Redis-only keepalive keys; py-amqp keeps TCP keepalive on"
S_RETRY_LIMIT = "Give the backend retries a limit: after it, update_state() raises BackendStoreError"
S_RETRY_DB_OFF = "Let the database backend retry transient errors again (its default since Celery 5.7)"
S_INDEX = "Create the date_done indexes by hand (create_all() never alters an existing table)"
S_TRACK_STARTED = "Turn task_track_started off if no client needs the STARTED state"
S_RESULT_EXTENDED = "Turn result_extended off if no client reads name/args/kwargs from results"
S_PICKLE = "Accept JSON only (switch pickle-serialized tasks/results to JSON first)"
S_IGNORE_RESULT = "Store results so clients see the final state"
S_IGNORE_RESULT_TASKS = "Drop ignore_result=True from tasks whose state a client reads"
S_NO_BACKEND = "Configure a result backend; Redis gives push-based state updates"
S_CONNECT_TIMEOUT = "Bound each new database connection (clients open one per state read)"
S_HEARTBEAT = "Restore AMQP heartbeats so a dead worker connection is noticed"
S_POOL_DISABLED = "Re-enable the broker connection pool"
S_POOL_SMALL = "Give each thread/greenlet a pooled broker connection"
S_RESULT_VISIBILITY = "Remove visibility_timeout from result_backend_transport_options (a broker option)"



@dataclass(frozen=True)
class Facts:
    """What the checks need besides the config: the versions (tests vary them). Not the budget:
    severity is rank's decision."""

    celery: tuple[int, ...]
    sqlalchemy: tuple[int, ...]

    @classmethod
    def installed(cls, celery: tuple[int, ...]) -> Facts:
        return cls(celery, sqlalchemy_version())


def _v(version: tuple[int, ...]) -> str:
    return ".".join(str(p) for p in version)


# ---- finding constructors ---------------------------------------------------------------------

def _ok(slug: str, title: str, detail: str = "", **evidence: Any) -> Finding:
    return Finding(f"config.{slug}", Cause.CONFIG, Severity.OK, title, detail, 0.0, evidence)


def _fixed(slug: str, severity: Severity, title: str, detail: str, fix: Fix | None,
           **evidence: Any) -> Finding:
    """Security, crash and plain-truth findings: severity by kind, not by milliseconds."""
    return Finding(f"config.{slug}", Cause.CONFIG, severity, title, detail, 0.0, evidence, fix)


def _cost(facts: Facts, slug: str, impact_ms: float, title: str, detail: str, fix: Fix | None,
          **evidence: Any) -> Finding:
    """A cost of the config itself: nothing is measured statically, so it is modelled (a nominal
    round trip, or 0 when only a live probe can tell)."""
    return delay(f"config.{slug}", Cause.CONFIG, impact_ms, title, kind=Kind.MODELLED, detail=detail,
                 evidence=evidence, fix=fix)


def _hazard(facts: Facts, slug: str, stall_s: float | None, title: str, detail: str,
            fix: Fix | None, **evidence: Any) -> Finding:
    """A stall the config allows for one update (None: unbounded); rank rates it by that worst
    case, capped at warning (frequency is unknown here)."""
    return hazard(f"config.{slug}", Cause.CONFIG, None if stall_s is None else stall_s * 1000.0,
                  title, detail=detail, evidence=evidence, fix=fix)


# ---- the checks -------------------------------------------------------------------------------

Check = Callable[[Any, Target, Facts], Iterator[Finding]]


def _engine_fix(summary: str, conf: Any, target: Target, facts: Facts, *docs: str) -> Fix:
    options = recommended_engine_options(conf, target, facts.celery)
    return Fix(summary, assignments(database_engine_options=options), docs)


def _isolation(value: Any) -> str:
    return " ".join(str(value or "").replace("-", " ").replace("_", " ").upper().split())


def check_isolation(conf: Any, target: Target, facts: Facts) -> Iterator[Finding]:
    """E, H.4: MySQL/MariaDB default to REPEATABLE READ; Celery's FAQ says READ COMMITTED.
    PostgreSQL already runs READ COMMITTED and must never get this advice."""
    dialect = db_dialect(target)
    if dialect == "postgresql":
        yield _ok("db-isolation", "PostgreSQL result backend: already READ COMMITTED by default",
                  "PostgreSQL's default isolation is READ COMMITTED; the READ COMMITTED advice in "
                  "Celery's FAQ is for MySQL/MariaDB only.")
        return
    if dialect not in ("mysql", "mariadb"):
        return
    level = _isolation(engine_options(conf).get("isolation_level"))
    if level == "READ COMMITTED":
        yield _ok("db-isolation", "MySQL result backend runs at READ COMMITTED")
        return
    shown = level or "server default (REPEATABLE READ unless my.cnf sets transaction-isolation)"
    detail = (
        f"database_engine_options sets no READ COMMITTED isolation (now: {shown}). Under REPEATABLE "
        "READ, InnoDB keeps next-key (gap) locks for locking reads and DELETEs until commit, so the daily "
        "celery.backend_cleanup DELETE keeps every row it scans locked, not only the rows it deletes "
        "(the whole table while date_done has no index), and concurrent INSERTs of task rows can "
        "deadlock (Celery's FAQ); a result write that hits such a lock waits up to "
        f"innodb_lock_wait_timeout ({INNODB_LOCK_WAIT_S:.0f} s by default) or is retried after a "
        "deadlock. worst_case_ms is that stall for one affected update; `celerydiag probe backend` "
        "measures how often it happens and reads the server's real isolation level.")
    if level == "AUTOCOMMIT":
        detail += (" AUTOCOMMIT is not a fix either: it makes Celery's read-then-write of a result "
                   "non-atomic and does not shorten lock waits.")
    yield _hazard(facts, "db-isolation", INNODB_LOCK_WAIT_S,
                  "MySQL result backend without READ COMMITTED: gap locks can stall state writes",
                  detail, _engine_fix(S_ISOLATION, conf, target, facts, D_MYSQL_FAQ, D_ENGINE_OPTIONS),
                  isolation_level=level or "server default")


def check_autocommit(conf: Any, target: Target, facts: Facts) -> Iterator[Finding]:
    """E, H.4: create_engine(autocommit=True) raises TypeError on SQLAlchemy 2."""
    if target.backend_scheme != "db":
        return
    if "autocommit" not in engine_options(conf):
        yield _ok("db-autocommit", "database_engine_options has no 'autocommit' key")
        return
    fix = _engine_fix(S_AUTOCOMMIT, conf, target, facts, D_ENGINE_OPTIONS)
    why = ("The fix does not add isolation_level='AUTOCOMMIT' either: it would make Celery's "
           "read-then-write of a result non-atomic and does not shorten lock waits (each Celery "
           "write is already one short transaction).")
    if facts.sqlalchemy >= SQLALCHEMY_NO_AUTOCOMMIT_FROM:
        yield _fixed("db-autocommit", Severity.CRITICAL,
                     "database_engine_options 'autocommit' crashes the result backend on SQLAlchemy 2",
                     f"SQLAlchemy {_v(facts.sqlalchemy)} raises TypeError: Invalid argument(s) "
                     "'autocommit' sent to create_engine(); every update_state() and every state "
                     f"read fails, so no state is ever visible. {why}",
                     fix, sqlalchemy_version=_v(facts.sqlalchemy))
    else:
        yield _fixed("db-autocommit", Severity.INFO,
                     "database_engine_options 'autocommit' will crash after an upgrade to SQLAlchemy 2",
                     f"SQLAlchemy {_v(facts.sqlalchemy)} still accepts it; 2.x raises TypeError on "
                     f"every backend operation. {why}", fix, sqlalchemy_version=_v(facts.sqlalchemy))


def check_nullpool_options(conf: Any, target: Target, facts: Facts) -> Iterator[Finding]:
    """A.2 / G.5: before 5.6.3, max_overflow/echo_pool reach create_engine(poolclass=NullPool)."""
    if target.backend_scheme != "db" or facts.celery >= NULLPOOL_FILTER_FROM:
        return
    bad = sorted(k for k in ("max_overflow", "echo_pool") if k in engine_options(conf))
    if not bad:
        return
    yield _fixed("db-nullpool-option-crash", Severity.CRITICAL,
                 f"database_engine_options {', '.join(bad)} crash the database backend outside forked workers",
                 f"Celery {_v(facts.celery)} strips only pool* options when it uses NullPool (every "
                 "client process, solo/threads/gevent/eventlet workers), so create_engine() raises "
                 "TypeError and no state is stored or read there (celery#7355, fixed in 5.6.3).",
                 _engine_fix(S_NULLPOOL_CRASH, conf, target, facts, D_ENGINE_OPTIONS),
                 celery_version=_v(facts.celery))


def check_rpc_confirm(conf: Any, target: Target, facts: Facts) -> Iterator[Finding]:
    """A.3, C.1, H.1/H.2: only rpc:// puts update_state on the broker; confirms then wait per update."""
    amqp = target.broker_scheme in AMQP_SCHEMES
    confirm = bool(transport_options(conf).get("confirm_publish")) and amqp
    if target.backend_scheme != "rpc":
        if confirm:
            yield _ok("rpc-confirm-publish",
                      "confirm_publish is not on the update_state path (results do not go through the broker)",
                      "With confirms the caller's apply_async() waits one broker round trip for the ack "
                      "after the message is routed; the task itself is delivered as fast (the broker probe "
                      "measures the wait), and state updates do not go through the broker: the worker "
                      "writes them straight to the result backend.")
        return
    if not confirm:
        yield _ok("rpc-confirm-publish", "rpc:// results are published without waiting for broker acks")
        return
    yield _cost(
        facts, "rpc-confirm-publish", NOMINAL_BROKER_RTT_MS,
        "rpc:// results with confirm_publish: every update_state() waits for a broker ack",
        "With the rpc:// backend a state update is an AMQP message to the client's reply queue, sent "
        "through the broker producer pool, whose connections carry broker_transport_options; with "
        "confirm_publish each publish waits synchronously for basic.ack (one outstanding message per "
        "channel), so the task blocks one broker round trip plus broker enqueue per update_state() "
        f"(~{NOMINAL_BROKER_RTT_MS:g} ms assumed on a LAN; `celerydiag probe broker` measures yours). "
        "Do not drop confirms to win this back: without them broker-side rejections lose tasks "
        "silently (celery#5410). Either accept the cost, or store states in Redis as below.",
        Fix(S_RPC_CONFIRM, assignments(result_backend=PLACEHOLDER_REDIS), (D_RPC_RESULTS, D_CONFIRMS)),
        round_trips_per_update_count=1)


def check_publish_retry_keys(conf: Any, target: Target, facts: Facts) -> Iterator[Finding]:
    """C.3, C.4: these keys in broker_transport_options mean connection retry, not publish retry."""
    options = transport_options(conf)
    found = [k for k in PUBLISH_RETRY_KEYS if k in options]
    if not found:
        return
    if conf.value_set_for("task_publish_retry_policy"):
        yield _ok("publish-retry-keys", "task_publish_retry_policy is set explicitly",
                  f"broker_transport_options {', '.join(found)} stay connection-establishment retry "
                  "settings (kombu reads them when it (re)connects).")
        return
    policy = dict(conf.get("task_publish_retry_policy") or {})
    policy.update({k: options[k] for k in found})
    yield _fixed(
        "publish-retry-keys", Severity.INFO,
        f"broker_transport_options {', '.join(found)} set connection retry, not task publish retry",
        "kombu reads max_retries/interval_* from broker_transport_options only when it establishes "
        "a connection (Connection._extract_failover_opts; with interval_max absent it caps waits at "
        "30 s). Retrying a failed apply_async() publish is task_publish_retry_policy's job (default "
        "3 retries, at most 1 s apart), and kombu copies that policy over the connection's transport "
        "options at the first retried publish anyway. The fix keeps your transport options and makes "
        "the publish policy explicit with your values.",
        Fix(S_PUBLISH_RETRY, assignments(task_publish_retry_policy=policy), (D_PUBLISH_RETRY, D_TRANSPORT_OPTIONS)),
        keys=found)


def check_confirm_options(conf: Any, target: Target, facts: Facts) -> Iterator[Finding]:
    """C.1, H.2: confirm_publish is pyamqp-only; confirm_delivery exists nowhere in kombu."""
    options = transport_options(conf)
    amqp = target.broker_scheme in AMQP_SCHEMES
    fixed = recommended_transport_options(conf, target)
    docs = (D_TRANSPORT_OPTIONS, D_CONFIRMS)
    if "confirm_publish" in options and not amqp:
        yield _fixed("confirm-publish-ignored", Severity.INFO,
                     f"confirm_publish does nothing on a {target.broker_scheme or 'non-AMQP'} broker",
                     "Only kombu's AMQP (pyamqp) transport reads confirm_publish; other transports ignore "
                     "it. A Redis publish (LPUSH) is already a synchronous request/reply.",
                     Fix(S_CONFIRM_IGNORED, assignments(broker_transport_options=fixed), docs),
                     broker_scheme=target.broker_scheme)
    if "confirm_delivery" in options:
        summary = S_CONFIRM_DELIVERY if amqp else S_CONFIRM_DELIVERY_NON_AMQP
        yield _fixed("confirm-delivery-unknown", Severity.INFO,
                     "broker_transport_options confirm_delivery does nothing: no such option",
                     "confirm_delivery() is a pika BlockingChannel method; kombu and py-amqp accept "
                     "unknown transport options and silently ignore them. The real option is "
                     "confirm_publish (AMQP only, default False)."
                     + (" Enabling it adds one broker round trip per publish (task dispatch)." if amqp else ""),
                     Fix(summary, assignments(broker_transport_options=fixed), docs))


def _redis_params(conf: Any, target: Target) -> dict[str, Any]:
    """The socket settings the Redis backend will really use: built by Celery's own backend class
    (URL query arguments override the settings); construction opens no connection."""
    try:
        from celery.app.backends import by_url

        cls, url = by_url(target.backend_url, target.app.loader)
        params = dict(cls(app=target.app, url=url).connparams)
    except Exception:  # a backend we cannot build offline: fall back to the settings alone
        params = {"socket_timeout": conf.get("redis_socket_timeout"),
                  "socket_connect_timeout": conf.get("redis_socket_connect_timeout"),
                  "retry_on_timeout": conf.get("redis_retry_on_timeout"),
                  "health_check_interval": conf.get("redis_backend_health_check_interval")}
    return params


def _seconds(value: Any) -> float | None:
    try:
        return float(value) if value not in (None, "", 0, "0") else None
    except (TypeError, ValueError):
        return None


def check_redis_timeout(conf: Any, target: Target, facts: Facts) -> Iterator[Finding]:
    """A.1 + audit: redis_socket_timeout defaults to 120 s. Against a half-open connection
    update_state() blocks that long and then raises redis TimeoutError inside the task: the GET
    before each write (celery/backends/base.py:1367) is outside ensure(), which covers only
    SETEX/PUBLISH (redis.py:790-824), and nothing retries it unless result_backend_always_retry
    is on. So the fix is the timeouts *and* a finite retry, and it says what the task sees when
    Redis stays away: BackendStoreError from update_state()."""
    if target.backend_scheme not in REDIS_SCHEMES:
        return
    params = _redis_params(conf, target)
    timeout = _seconds(params.get("socket_timeout"))
    connect = _seconds(params.get("socket_connect_timeout"))
    retries = retry_settings(conf)
    evidence: dict[str, Any] = {"socket_timeout_s": timeout, "socket_connect_timeout_s": connect}
    if timeout is not None and timeout <= SANE_REDIS_TIMEOUT_S and connect is not None \
            and connect <= SANE_REDIS_TIMEOUT_S:
        retry = bool(conf.get("result_backend_always_retry"))
        yield _ok("redis-socket-timeout", f"Redis result backend socket waits are bounded ({timeout:g} s)",
                  "A stalled connection makes update_state() raise after that wait"
                  + (", then Celery retries it on a new connection." if retry else
                     ": with result_backend_always_retry off nothing retries it and the task gets "
                     "redis TimeoutError."), **evidence)
        return
    stall = None if timeout is None else max(timeout, connect or 0.0)
    bound = "forever" if timeout is None else f"up to {timeout:g} s"
    tries = retries["result_backend_max_retries"] + 1
    fixed_worst_s = tries * RECOMMENDED_REDIS["redis_socket_timeout"]
    detail = (
        f"redis_socket_timeout is {'unset' if timeout is None else f'{timeout:g} s'} (Celery's default is "
        f"120 s) and redis_socket_connect_timeout is {'unset' if connect is None else f'{connect:g} s'}. "
        "update_state() is a GET then MULTI/SETEX/PUBLISH/EXEC; when the connection has gone half-open "
        f"(a NAT or load-balancer idle timeout, a failover) the GET blocks {bound} and then raises "
        "redis TimeoutError inside the task: that GET is not retried (only SETEX/PUBLISH run under "
        "Celery's reconnecting ensure()), so without result_backend_always_retry the task fails after "
        "the wait. worst_case_ms is that stall for one affected update; it costs nothing while the "
        "network is healthy. The fix bounds both waits, PINGs connections idle for 25 s before use, "
        f"and retries a failed store on a new connection {tries - 1} times (result_backend_always_retry "
        "with a finite result_backend_max_retries; the default maximum is infinite). If Redis is still "
        f"unreachable after about {fixed_worst_s:g} s, update_state() raises "
        "celery.exceptions.BackendStoreError in the task (the task fails unless it catches it around "
        "update_state()).")
    fix = Fix(S_REDIS_TIMEOUT, assignments(**RECOMMENDED_REDIS, **retries), (D_REDIS_SETTINGS, D_ALWAYS_RETRY))
    evidence.update(worst_case_with_fix_s=fixed_worst_s)
    if not any(conf.value_set_for(k) for k in REDIS_TIMEOUT_SETTINGS) and "timeout" not in target.backend_url:
        # Celery's own default: fine on a healthy network, so info (issue 17: no warning on a
        # default Redis backend); an explicit long or unset timeout is rated by its stall.
        yield hazard(f"config.{'redis-socket-timeout'}", Cause.CONFIG, None if stall is None else stall * 1000,
                     f"Redis result backend: a stalled connection can block update_state() {bound}, then fail it",
                     severity=Severity.INFO, detail=detail, evidence=evidence, fix=fix)
        return
    yield _hazard(facts, "redis-socket-timeout", stall,
                  f"Redis result backend: a stalled connection can block update_state() {bound}, then fail it",
                  detail, fix, **evidence)


def check_always_retry(conf: Any, target: Target, facts: Facts) -> Iterator[Finding]:
    """A.0-A.2, B: result_backend_always_retry only works where exception_safe_to_retry exists."""
    scheme = target.backend_scheme
    explicitly = conf.value_set_for("result_backend_always_retry")
    wanted = bool(conf.get("result_backend_always_retry"))
    if scheme == "db" and facts.celery >= DB_RETRY_DEFAULT_ON_FROM and explicitly and not wanted:
        yield _fixed(
            "always-retry", Severity.INFO,
            "result_backend_always_retry = False turns off the database backend's default retries",
            f"Since Celery {_v(DB_RETRY_DEFAULT_ON_FROM)} the database backend retries transient "
            "DatabaseErrors (deadlocks, lock-wait timeouts, dropped connections) up to 3 times with "
            "backoff unless result_backend_always_retry is set; set to False, the first deadlock makes "
            "update_state() raise in the task and that state is never stored.",
            Fix(S_RETRY_DB_OFF, assignments(result_backend_always_retry=True), (D_ALWAYS_RETRY,)),
            celery_version=_v(facts.celery))
        return
    if not wanted:
        return
    if scheme == "rpc":
        yield _fixed("always-retry", Severity.INFO,
                     "result_backend_always_retry does nothing with rpc:// results",
                     "The rpc:// backend has no exception_safe_to_retry, so this setting never retries "
                     "anything; its state messages are already published with kombu's retry policy "
                     "(20 retries, at most 1 s apart).",
                     Fix(S_RETRY_RPC, "", (D_ALWAYS_RETRY,)))
        return
    start = RETRY_EFFECTIVE_FROM.get(scheme)
    if start is None:
        return
    name = "Redis" if scheme in REDIS_SCHEMES else "the database backend"
    if facts.celery < start:
        extra = (" The database backend's own @retry still retries 3 times without sleeping."
                 if scheme == "db" else " No Redis error is retried by this setting.")
        yield _fixed("always-retry", Severity.INFO,
                     f"result_backend_always_retry does nothing on {name} before Celery {_v(start)}",
                     f"Celery {_v(facts.celery)} has no exception_safe_to_retry for {name}, so the "
                     f"setting is ignored there.{extra}",
                     Fix(S_RETRY_UPGRADE.format(version=_v(start), backend=name), "", (D_ALWAYS_RETRY,)),
                     celery_version=_v(facts.celery))
        return
    max_sleep_ms = conf.get("result_backend_max_sleep_between_retries_ms")
    limit = conf.get("result_backend_max_retries")
    # the database backend replaces an unset limit with 3 (database/__init__.py:76-77); Redis keeps
    # Celery's default, infinity (app/defaults.py)
    unbounded = isinstance(limit, float) and limit == float("inf") and (
        scheme != "db" or conf.value_set_for("result_backend_max_retries"))
    if unbounded:
        yield _hazard(facts, "always-retry", None,
                      "result_backend_always_retry with no retry limit: a down backend blocks the task forever",
                      f"result_backend_max_retries is infinite (Celery's default), so while {name} is down "
                      "every update_state() and the final store retry without end (sleeping up to "
                      f"{max_sleep_ms} ms between tries): the task never finishes or fails, and its state "
                      "never changes. The fix keeps the retries for short outages and, after the last, "
                      "update_state() raises BackendStoreError in the task.",
                      Fix(S_RETRY_LIMIT, assignments(**retry_settings(conf)), (D_ALWAYS_RETRY,)),
                      max_sleep_between_retries_ms=max_sleep_ms)
        return
    yield _ok("always-retry", f"result_backend_always_retry is effective on {name} (Celery {_v(facts.celery)})",
              "Retries sleep a random time up to min(max sleep, base·2^n); after the backend comes back "
              "an update can still wait up to result_backend_max_sleep_between_retries_ms.",
              max_sleep_between_retries_ms=max_sleep_ms)


def check_date_done_index(conf: Any, target: Target, facts: Facts) -> Iterator[Finding]:
    """E, G.1: tables created before 5.6.3 lack the date_done index; create_all() never adds it."""
    dialect = db_dialect(target)
    if target.backend_scheme != "db" or not dialect or dialect == "sqlite":
        return
    ddl = index_ddl(conf, dialect)
    where = ("run once in the database, outside a transaction (CONCURRENTLY does not block writes):"
             if dialect == "postgresql" else "run once in the database:")
    fix = Fix(S_INDEX, f"# {where}\n" + "".join(f"# {line}\n" for line in ddl.splitlines()), (D_INDEX_ISSUE,))
    innodb = dialect in ("mysql", "mariadb")
    lock_story = (
        "On InnoDB the daily celery.backend_cleanup DELETE ... WHERE date_done < :t then scans and "
        "locks the whole table, and result writes wait up to innodb_lock_wait_timeout "
        f"({INNODB_LOCK_WAIT_S:.0f} s) or fail with 1205 (celery#10097)."
        if innodb else
        "celery.backend_cleanup's DELETE ... WHERE date_done < :t then scans the whole table; "
        "on PostgreSQL that is slow but locks only the rows it deletes.")
    if facts.celery < DATE_DONE_INDEX_FROM:
        text = (f"Celery {_v(facts.celery)} creates celery_taskmeta/celery_tasksetmeta without an index "
                f"on date_done (added in {_v(DATE_DONE_INDEX_FROM)}). {lock_story} Run the DDL in the "
                "fix once (it is in the fix as comments).")
        if innodb:
            yield _hazard(facts, "db-date-done-index", INNODB_LOCK_WAIT_S,
                          "Result tables have no date_done index: cleanup can lock out state writes",
                          text, fix, celery_version=_v(facts.celery))
        else:
            yield _fixed("db-date-done-index", Severity.INFO,
                         "Result tables have no date_done index: cleanup scans the whole table",
                         text, fix, celery_version=_v(facts.celery))
        return
    yield _fixed("db-date-done-index", Severity.INFO,
                 "If your result tables predate Celery 5.6.3 they lack the date_done index",
                 f"Celery {_v(facts.celery)} creates the index on new tables only; create_all() never "
                 f"alters an existing one. {lock_story} `celerydiag probe backend` checks the live "
                 "table; the DDL is in the fix as comments.", fix, celery_version=_v(facts.celery))


def _results_stored(conf: Any, target: Target) -> bool:
    return target.backend_scheme not in ("", "disabled") and not conf.get("task_ignore_result")


def check_track_started(conf: Any, target: Target, facts: Facts) -> Iterator[Finding]:
    """A.0, B: task_track_started adds one backend write per task before the body runs."""
    if not _results_stored(conf, target):
        return
    if not conf.get("task_track_started"):
        yield _ok("track-started", "task_track_started is off: no extra write per task",
                  "Clients see PENDING until the task's first update_state() or its result.")
        return
    yield _cost(facts, "track-started", 0.0,
                "task_track_started: one extra backend write per task, before the task body runs",
                "The worker stores STARTED (meta {pid, hostname}) before running the body, so every task "
                "pays one write's latency (Redis: GET + MULTI/SETEX/PUBLISH/EXEC; database: SELECT + "
                "INSERT + UPDATE + COMMIT on the first write) and every other state write queues behind "
                "it. It does not delay other states; `celerydiag probe backend` measures the per-write "
                "cost. Keep it if clients need to tell queued from running.",
                Fix(S_TRACK_STARTED, assignments(task_track_started=False), (D_TRACK_STARTED,)),
                extra_writes_per_task_count=1)


def check_result_extended(conf: Any, target: Target, facts: Facts) -> Iterator[Finding]:
    """A.0, A.2, B: result_extended adds name/args/kwargs/worker/retries/queue to every write."""
    if not _results_stored(conf, target):
        return
    if not conf.get("result_extended"):
        yield _ok("result-extended", "result_extended is off: state payloads carry only status and meta")
        return
    columns = ("seven extra columns, stamps included" if facts.celery >= RESULT_STAMPS_FROM
               else "six extra columns")
    yield _cost(facts, "result-extended", 0.0,
                "result_extended: every state write also carries the task's name, args and kwargs",
                "Each update_state() and the final result serialize name, args, kwargs, worker, retries "
                "and queue, so write and read cost grow with the size of the task's arguments (Redis also "
                f"decodes the old payload before each write; the database backend fills {columns}). "
                "`celerydiag probe serialization` measures the encode/decode cost.",
                Fix(S_RESULT_EXTENDED, assignments(result_extended=False), (D_RESULT_EXTENDED,)))


def _pickle_like(name: Any) -> bool:
    return any(m in str(name).lower() for m in PICKLE_MARKERS)


def check_pickle(conf: Any, target: Target, facts: Facts) -> Iterator[Finding]:
    """D: any pickle-family content type accepted lets whoever can publish run code."""
    accept = list(conf.get("accept_content") or ())
    result_accept = conf.get("result_accept_content")
    accepted = accept + list(result_accept or ())
    bad = sorted({str(c) for c in accepted if _pickle_like(c)})
    if not bad:
        if target.backend_scheme == "db":
            yield _fixed("pickle-accepted", Severity.INFO,
                         "No pickle serializer is accepted, but the database backend still unpickles old-style rows",
                         "accept_content and result_accept_content exclude pickle, yet Celery 5.7's database "
                         "backend falls back to pickle.loads() for any stored result that starts with \\x80 "
                         "(celery/backends/database/__init__.py:289-297, for rows written before celery#3025), "
                         "whatever the accept lists say: whoever can write the result tables can run code in "
                         "every client that reads a state. No setting turns this off; keep write access to "
                         "those tables to Celery's own database user.", None)
            return
        yield _ok("pickle-accepted", "No pickle-family serializer is accepted")
        return
    safe = [c for c in accept if not _pickle_like(c)] or ["json"]
    settings: dict[str, Any] = {"accept_content": safe}
    if result_accept is not None:
        settings["result_accept_content"] = [c for c in result_accept if not _pickle_like(c)] or ["json"]
    for key in ("task_serializer", "result_serializer"):
        if _pickle_like(conf.get(key)):
            settings[key] = "json"
    yield _fixed(
        "pickle-accepted", Severity.WARNING,
        "pickle is accepted: anyone who can publish to the broker can run code in your workers",
        f"accept_content/result_accept_content include {', '.join(bad)}. A crafted pickle payload runs "
        "arbitrary code when a worker decodes a task message or a client decodes a result, so anyone "
        "who can publish to the broker (or write the result store) can execute code. This is a "
        "security finding, not latency. Switching serializers changes what task arguments may be: "
        "JSON carries no Python objects.",
        Fix(S_PICKLE, assignments(**settings), (D_SECURITY,)), content_types=bad)


def _ignored_tasks(target: Target) -> list[str]:
    try:
        tasks = dict(target.app.tasks)
    except Exception:  # a user's task module that fails to finalize is not our finding
        return []
    return sorted(name for name, task in tasks.items()
                  if not name.startswith("celery.") and getattr(task, "ignore_result", False))


def check_ignore_result(conf: Any, target: Target, facts: Facts) -> Iterator[Finding]:
    """A.0 + installed trace.py/base.py: update_state ignores ignore_result; the final state does not."""
    scheme = target.backend_scheme
    if scheme in ("", "disabled"):
        severity = Severity.WARNING if str(target.source) == "app" else Severity.INFO
        yield _fixed("result-backend-disabled", severity,
                     "No result backend: update_state() does nothing and clients can read no state",
                     "With result_backend unset Celery uses its DisabledBackend: store_result() is a no-op, "
                     "so update_state() silently stores nothing. On Celery 5.7 AsyncResult.state and "
                     ".ready() raise AttributeError ('DisabledBackend' object has no attribute "
                     "'_get_task_meta_for'); only .get() raises NotImplementedError('No result backend "
                     "is configured').",
                     Fix(S_NO_BACKEND, assignments(result_backend=PLACEHOLDER_REDIS), (D_RESULT_BACKEND,)))
        return
    if conf.get("task_ignore_result"):
        yield _fixed("ignore-result", Severity.WARNING,
                     "task_ignore_result = True: clients never see a task finish",
                     "update_state() does not check ignore_result, so intermediate states are still "
                     "written, but the worker stores no SUCCESS/FAILURE (and no STARTED): a client keeps "
                     "seeing the last PROGRESS, or PENDING, forever.",
                     Fix(S_IGNORE_RESULT, assignments(task_ignore_result=False), (D_IGNORE_RESULT,)))
        return
    ignored = _ignored_tasks(target)
    if ignored:
        yield _fixed("ignore-result", Severity.INFO,
                     f"{len(ignored)} task(s) set ignore_result=True: their final state is never stored",
                     "These tasks may still call update_state(), but SUCCESS/FAILURE is never written, so "
                     f"a client polling them sees the last intermediate state forever: {', '.join(ignored[:10])}"
                     + (" …" if len(ignored) > 10 else ""),
                     Fix(S_IGNORE_RESULT_TASKS, "", (D_IGNORE_RESULT,)), tasks_count=len(ignored))
        return
    yield _ok("ignore-result", "Results are stored (task_ignore_result is off)")


def check_db_connection_per_read(conf: Any, target: Target, facts: Facts) -> Iterator[Finding]:
    """A.2, B, G.3/G.4: outside forked pool children every DB backend operation opens a connection."""
    dialect = db_dialect(target)
    if target.backend_scheme != "db" or not dialect or dialect == "sqlite":
        return
    bounded = has_connect_timeout(engine_options(conf))
    detail = (
        "Celery's SessionManager caches an engine only in forked prefork children. Everywhere else "
        "(web servers and other clients, solo/threads/gevent/eventlet workers) it builds a new engine "
        "with NullPool per operation, so every AsyncResult.state read and every store_result() opens a "
        "new database connection (TCP, auth, dialect init) and pool* options in "
        "database_engine_options do not apply there. AsyncResult.get() on this backend polls every "
        "0.5 s (its interval argument): a larger interval means fewer connections but later detection. "
        "`celerydiag probe backend` measures the connect cost.")
    fix = None if bounded else _engine_fix(S_CONNECT_TIMEOUT, conf, target, facts, D_ENGINE_OPTIONS,
                                           D_NULLPOOL_ISSUE, D_DB_RESULTS)
    if not bounded:
        detail += (f" No connect timeout is set: the fix bounds each new connection to {CONNECT_TIMEOUT_S} s "
                   "so one unreachable server cannot hang a state read.")
    yield _cost(facts, "db-connection-per-read", 0.0,
                "Database backend: clients open a new connection for every state read", detail, fix,
                connect_timeout_set=bounded)


def check_broker_heartbeat(conf: Any, target: Target, facts: Facts) -> Iterator[Finding]:
    """C.2, F: broker_heartbeat 0/None vetoes AMQP heartbeats on the worker's consumer connection."""
    if target.broker_scheme not in AMQP_SCHEMES:
        return
    heartbeat = conf.get("broker_heartbeat")
    if heartbeat:
        yield _ok("broker-heartbeat", f"AMQP heartbeats on (broker_heartbeat={heartbeat})",
                  "Negotiated with the server: the smaller non-zero value wins (RabbitMQ proposes 60 s), "
                  "so a client value cannot raise a shorter one the server proposes.")
        return
    yield _hazard(facts, "broker-heartbeat", KEEPALIVE_DETECT_S,
                  "broker_heartbeat disables AMQP heartbeats: a dead worker connection goes unnoticed",
                  f"broker_heartbeat is {heartbeat!r}; py-amqp then forces heartbeat 0 whatever the server "
                  "proposes (client veto). The worker's consumer connection is the only one that uses "
                  "heartbeats: without them a half-open connection is noticed only by py-amqp's TCP "
                  "keepalive (on by default: 60 s idle, then 9 probes 10 s apart, about 150 s on Linux; "
                  "amqp/transport.py DEFAULT_SOCKET_SETTINGS), and meanwhile the worker receives no tasks "
                  "and they stay PENDING.",
                  Fix(S_HEARTBEAT, assignments(broker_heartbeat=120), (D_HEARTBEAT,)))


def check_broker_pool(conf: Any, target: Target, facts: Facts) -> Iterator[Finding]:
    """C.2: broker_pool_limit 0/None connects per publish; a small pool makes publishers queue."""
    if target.broker_scheme in ("", "memory"):
        return
    limit = conf.get("broker_pool_limit")
    rpc = " and, with rpc:// results, every update_state()" if target.backend_scheme == "rpc" else ""
    if not limit:
        yield _cost(facts, "broker-pool-limit", 0.0,
                    "broker_pool_limit disables connection pooling: every publish opens a new connection",
                    f"With broker_pool_limit={limit!r} each task publish{rpc} opens and closes a broker "
                    "connection (TCP, AMQP handshake, auth: several round trips) instead of reusing one.",
                    Fix(S_POOL_DISABLED, assignments(broker_pool_limit=10), (D_POOL_LIMIT,)),
                    broker_pool_limit_count=limit)
        return
    pool = str(conf.get("worker_pool") or "")
    concurrency = conf.get("worker_concurrency")
    if pool in ("threads", "gevent", "eventlet") and concurrency and concurrency > limit:
        yield _cost(facts, "broker-pool-limit", 0.0,
                    f"{concurrency} {pool} workers share {limit} broker connections",
                    f"Celery acquires a producer with block=True, so beyond {limit} concurrent publishers "
                    f"(task sends{rpc}) wait for a free connection.",
                    Fix(S_POOL_SMALL, assignments(broker_pool_limit=int(concurrency)), (D_POOL_LIMIT,)),
                    broker_pool_limit_count=limit, worker_concurrency_count=concurrency)
        return
    yield _ok("broker-pool-limit", f"Broker connection pool: {limit} connections per process",
              broker_pool_limit_count=limit)


def check_result_transport_options(conf: Any, target: Target, facts: Facts) -> Iterator[Finding]:
    """A.1: the result backend never reads visibility_timeout (the docs' example is a broker option)."""
    options = dict(conf.get("result_backend_transport_options") or {})
    if "visibility_timeout" not in options:
        return
    options.pop("visibility_timeout")
    yield _fixed("result-transport-visibility-timeout", Severity.INFO,
                 "result_backend_transport_options visibility_timeout does nothing",
                 "visibility_timeout is a Redis/SQS *broker* transport option (broker_transport_options); "
                 "the result backend reads only global_keyprefix, retry_policy, result_chord_ordered, "
                 "additional_connection_errors and the Sentinel keys from result_backend_transport_options.",
                 Fix(S_RESULT_VISIBILITY, assignments(result_backend_transport_options=options),
                     (D_RESULT_TRANSPORT,)))


# ---- late or missing states, and the network advice users are given (issue 17) ---------------

def check_task_events(conf: Any, target: Target, facts: Facts) -> Iterator[Finding]:
    """worker_send_task_events / task_send_sent_event (both off by default, app/defaults.py):
    monitors (Flower, ``celery events``) see task states only as events; update_state() never
    sends one (app/task.py update_state only calls backend.store_result)."""
    if target.broker_scheme in ("", "memory"):
        return
    worker, sent = bool(conf.get("worker_send_task_events")), bool(conf.get("task_send_sent_event"))
    why = ("Custom states from update_state() are stored in the result backend and never sent as "
           "events, so monitors show them with events on or off; read them with AsyncResult.")
    if worker and sent:
        yield _ok("task-events", "Task events are on: monitors see task-sent, started and finished", why)
        return
    off = [n for n, on in (("worker_send_task_events", worker), ("task_send_sent_event", sent)) if not on]
    yield _fixed("task-events", Severity.INFO,
                 f"{' and '.join(off)} off: Flower and event monitors miss task states",
                 f"With {', '.join(off)} off (Celery's defaults) a monitor built on events sees "
                 + ("no task at all" if not worker else "no task-sent event, so queued tasks are invisible")
                 + f" until the worker reports it. {why}",
                 Fix(S_TASK_EVENTS, "", (D_EVENTS,)), off=off)


def check_engine_defaults(conf: Any, target: Target, facts: Facts) -> Iterator[Finding]:
    """A user's database_engine_options replaces Celery's defaults (pool_pre_ping, pool_recycle):
    DatabaseBackend reads the setting whole (database/__init__.py:85-89)."""
    if target.backend_scheme != "db" or db_dialect(target) in ("", "sqlite"):
        return
    from celerydiag.config.fixes import celery_engine_defaults

    defaults = celery_engine_defaults()
    missing = sorted(k for k in defaults if k not in engine_options(conf))
    if not missing:
        yield _ok("db-engine-defaults", "database_engine_options keeps pool_pre_ping and pool_recycle")
        return
    yield _fixed("db-engine-defaults", Severity.INFO,
                 f"database_engine_options drops Celery's defaults ({', '.join(missing)})",
                 "Setting database_engine_options replaces Celery's own {'pool_pre_ping': True, "
                 "'pool_recycle': 3600} instead of merging with it. Without them a pooled connection the "
                 "server closed (MySQL wait_timeout, a failover, a proxy's idle timeout) fails the next "
                 "update_state() in a prefork child with OperationalError, which Celery then retries.",
                 _engine_fix(S_ENGINE_DEFAULTS, conf, target, facts, D_ENGINE_OPTIONS), missing=missing)


def check_prefetch(conf: Any, target: Target, facts: Facts) -> Iterator[Finding]:
    """worker_prefetch_multiplier (4) and task_acks_late (False): a worker process reserves tasks
    it cannot start while a long task runs; they stay PENDING (or STARTED never comes) meanwhile."""
    if target.broker_scheme in ("", "memory"):
        return
    multiplier = conf.get("worker_prefetch_multiplier")
    late = bool(conf.get("task_acks_late"))
    evidence = {"worker_prefetch_multiplier_count": multiplier, "task_acks_late": late}
    if multiplier == 1 and late:
        yield _ok("prefetch", "Each worker process reserves only the task it runs", **evidence)
        return
    reserved = ("up to worker_prefetch_multiplier x concurrency messages beyond the running ones"
                if not late else "worker_prefetch_multiplier x concurrency messages")
    yield _fixed("prefetch", Severity.INFO,
                 f"worker_prefetch_multiplier={multiplier}, task_acks_late={late}: "
                 "reserved tasks wait behind long ones",
                 f"A worker reserves {reserved}; a reserved task waits for a busy process even when "
                 "another worker is idle, and stays PENDING until it starts. Harmless for short tasks; for "
                 "long ones set worker_prefetch_multiplier = 1 (the fix), and task_acks_late = True if your "
                 "tasks are idempotent (a task whose worker dies is then redelivered and runs again).",
                 Fix(S_PREFETCH, "", (D_PREFETCH,)), **evidence)


def check_result_expires(conf: Any, target: Target, facts: Facts) -> Iterator[Finding]:
    """result_expires None/0: Redis keys never expire (an allkeys-* maxmemory-policy then evicts
    them: the client reads PENDING); the database never deletes, because celery beat installs
    celery.backend_cleanup only when result_expires is set (celery/beat.py:274-282)."""
    scheme = target.backend_scheme
    if scheme not in REDIS_SCHEMES and scheme != "db":
        return
    expires = conf.get("result_expires")
    seconds = expires.total_seconds() if hasattr(expires, "total_seconds") else expires
    if seconds:
        yield _ok("result-expires", f"Results expire after {float(seconds):g} s",
                  "" if scheme in REDIS_SCHEMES else
                  "On a database backend only celery beat deletes them (celery.backend_cleanup, daily at "
                  "4:00): without beat the task table grows.")
        return
    detail = ("result_expires is unset/0: Redis keeps every result forever; when memory fills and the "
              "maxmemory-policy is allkeys-*, Redis evicts result keys and a client then reads PENDING for "
              "a task that finished." if scheme in REDIS_SCHEMES else
              "result_expires is unset/0: celery beat then installs no celery.backend_cleanup, the task "
              "table only grows, and every state write and read gets slower with it.")
    yield _fixed("result-expires", Severity.INFO, "Results never expire", detail,
                 Fix(S_RESULT_EXPIRES, assignments(result_expires=86400), (D_RESULT_EXPIRES,)))


def check_rpc_single_reader(conf: Any, target: Target, facts: Facts) -> Iterator[Finding]:
    """rpc:// sends states to the caller's own reply queue: no other process can read them
    (they see PENDING forever). Static twin of polling.rpc-other-process."""
    if target.backend_scheme != "rpc":
        return
    yield _fixed("rpc-single-reader", Severity.INFO,
                 "rpc:// results: only the process that sent a task can see its states",
                 "Every state goes to the sending client's reply queue; a web process, another worker or "
                 "a monitor asking for the same task id sees PENDING forever (not until it expires), and a "
                 "client restart loses the states in flight. Fine for one caller that waits for its own "
                 "tasks; any other reader needs a stored backend.",
                 Fix(S_RPC_READER, assignments(result_backend=PLACEHOLDER_REDIS), (D_RPC_RESULTS,)))


def check_redis_keepalive(conf: Any, target: Target, facts: Facts) -> Iterator[Finding]:
    """redis_socket_keepalive (False by default; redis.py:522,571): without it an idle half-open
    result connection is found only by the next command's timeout or the health check."""
    if target.backend_scheme not in REDIS_SCHEMES:
        return
    if conf.get("redis_socket_keepalive"):
        yield _ok("redis-socket-keepalive", "redis_socket_keepalive is on")
        return
    yield _fixed("redis-socket-keepalive", Severity.INFO,
                 "redis_socket_keepalive is off: an idle dead connection is found only when a write times out",
                 "Celery's Redis result connections set no SO_KEEPALIVE by default, so a connection a NAT or "
                 "load balancer dropped while idle is discovered by the next update_state() waiting "
                 "redis_socket_timeout (see config.redis-socket-timeout). Keepalive lets the kernel find it "
                 "between tasks.", Fix(S_REDIS_KEEPALIVE, assignments(redis_socket_keepalive=True),
                                       (D_REDIS_SETTINGS,)))


def _broker_urls(conf: Any) -> list[str]:
    raw = conf.get("broker_url") or ""
    urls = raw if isinstance(raw, (list, tuple)) else str(raw).split(";")
    return [u.strip() for u in urls if str(u).strip()]


def check_broker_failover(conf: Any, target: Target, facts: Facts) -> Iterator[Finding]:
    """Several broker URLs fail over only when kombu (re)connects, in broker_failover_strategy
    order; an unknown strategy name is called as a function (kombu/connection.py:271-275) and
    raises TypeError on every connection that has alternates."""
    from kombu.connection import failover_strategies

    urls = _broker_urls(conf)
    strategy = conf.get("broker_failover_strategy")
    known = strategy is None or callable(strategy) or strategy in failover_strategies
    if len(urls) < 2:
        if strategy is not None:
            yield _fixed("broker-failover", Severity.INFO,
                         "broker_failover_strategy does nothing with one broker URL",
                         "kombu uses the strategy only to cycle through alternate URLs "
                         "(broker_url = 'amqp://a//;amqp://b//').", Fix(S_FAILOVER_ONE, "", (D_FAILOVER,)))
        return
    if not known:
        yield _fixed("broker-failover", Severity.CRITICAL,
                     f"broker_failover_strategy {strategy!r} is not a kombu strategy: every connection fails",
                     f"kombu looks the name up in {sorted(failover_strategies)} and otherwise calls the value "
                     "itself, so a misspelt name raises TypeError when the connection is built: no task is "
                     "sent and no worker consumes.",
                     Fix(S_FAILOVER_NAME, assignments(broker_failover_strategy="round-robin"), (D_FAILOVER,)),
                     urls_count=len(urls))
        return
    rpc = (" With rpc:// results the client's reply queue lives on the broker it used: after a failover the "
           "states still in it are lost." if target.backend_scheme == "rpc" else "")
    yield _ok("broker-failover", f"{len(urls)} broker URLs, {strategy or 'round-robin'} failover",
              "kombu moves to the next URL only when a connection fails and it reconnects; tasks published "
              "to the failed broker stay there (a failover is not replication: use quorum queues on one "
              f"cluster for that).{rpc}", urls_count=len(urls))


HA_ARGUMENTS = ("x-ha-policy", "x-ha-nodes", "ha-mode", "ha-params", "ha-sync-mode")


def check_queue_type(conf: Any, target: Target, facts: Facts) -> Iterator[Finding]:
    """Classic mirrored queues were removed in RabbitMQ 4.0 (and mirroring was a server policy,
    never a queue argument, since 3.0); replicated queues are quorum queues
    (task_default_queue_type = 'quorum', celery/app/amqp.py:333-334)."""
    if target.broker_scheme not in AMQP_SCHEMES:
        return
    ha = sorted({k for q in (conf.get("task_queues") or ())
                 for k in dict(getattr(q, "queue_arguments", None) or {}) if k in HA_ARGUMENTS})
    if not ha:
        kind = conf.get("task_default_queue_type") or "classic"
        yield _ok("queue-type", f"Default queue type: {kind}",
                  "Quorum queues replicate; ETA/countdown tasks then rely on native delayed delivery."
                  if kind == "quorum" else "Classic queues are not replicated: a broker node loss loses "
                  "their messages (mirroring is gone in RabbitMQ 4; quorum queues replace it).")
        return
    yield _fixed("queue-type", Severity.INFO,
                 f"queue_arguments {', '.join(ha)} do not mirror queues",
                 "RabbitMQ ignores these arguments (mirroring was set by server policy since 3.0) and "
                 "RabbitMQ 4 removed classic queue mirroring altogether. For replicated task queues "
                 "declare quorum queues; existing queues must be re-declared (deleted first) to change type.",
                 Fix(S_QUORUM, "", (D_QUORUM,)), arguments=ha)


def check_amqp_keepalive(conf: Any, target: Target, facts: Facts) -> Iterator[Finding]:
    """py-amqp always sets SO_KEEPALIVE, with TCP_KEEPIDLE 60 / KEEPINTVL 10 / KEEPCNT 9 and
    TCP_USER_TIMEOUT 1000 ms (amqp/transport.py:31-37,199,217-240); socket_settings (int keys,
    socket.TCP_*) update those. The Redis-style keepalive keys do nothing here, and string keys
    reach setsockopt() and raise TypeError on every connect."""
    if target.broker_scheme not in AMQP_SCHEMES:
        return
    options = transport_options(conf)
    settings = options.get("socket_settings")
    bad = sorted(str(k) for k in dict(settings or {}) if not isinstance(k, int))
    ignored = sorted(k for k in ("socket_keepalive", "socket_keepalive_options") if k in options)
    if bad:
        fixed = recommended_transport_options(conf, target)
        yield _fixed("amqp-keepalive", Severity.CRITICAL,
                     f"socket_settings keys {', '.join(bad)} are not socket options: every broker connect fails",
                     "py-amqp passes each socket_settings key to setsockopt(SOL_TCP, key, value); a string "
                     "such as 'TCP_KEEPIDLE' raises TypeError, so no connection is made. Use the socket "
                     "module's constants (socket.TCP_KEEPIDLE) in your config file.",
                     Fix(S_SOCKET_SETTINGS, assignments(broker_transport_options=fixed), (D_TRANSPORT_OPTIONS,)),
                     keys=bad)
        return
    if ignored:
        fixed = recommended_transport_options(conf, target)
        yield _fixed("amqp-keepalive", Severity.INFO,
                     f"broker_transport_options {', '.join(ignored)} do nothing on py-amqp",
                     f"These are Redis transport options. py-amqp always enables TCP keepalive "
                     f"({AMQP_KEEPALIVE}, TCP_USER_TIMEOUT 1000 ms: an idle dead connection is dropped after "
                     f"about {KEEPALIVE_DETECT_S} s); tune it with socket_settings keyed by socket.TCP_*.",
                     Fix(S_KEEPALIVE_IGNORED, assignments(broker_transport_options=fixed), (D_TRANSPORT_OPTIONS,)),
                     keys=ignored)
        return
    yield _ok("amqp-keepalive", f"py-amqp TCP keepalive on (dead idle connection dropped in ~{KEEPALIVE_DETECT_S} s)",
              "py-amqp's defaults: keepalive after 60 s idle, 9 probes 10 s apart, TCP_USER_TIMEOUT 1 s.")


CHECKS: tuple[Check, ...] = (
    check_autocommit,
    check_nullpool_options,
    check_isolation,
    check_date_done_index,
    check_db_connection_per_read,
    check_redis_timeout,
    check_always_retry,
    check_rpc_confirm,
    check_confirm_options,
    check_publish_retry_keys,
    check_broker_heartbeat,
    check_broker_pool,
    check_track_started,
    check_result_extended,
    check_ignore_result,
    check_result_transport_options,
    check_pickle,
    check_task_events,
    check_engine_defaults,
    check_prefetch,
    check_result_expires,
    check_rpc_single_reader,
    check_redis_keepalive,
    check_broker_failover,
    check_queue_type,
    check_amqp_keepalive,
)


def check_config(target: Target, facts: Facts) -> list[Finding]:
    """Every check against one target. Secrets: the fixes print no secret setting (config.fixes),
    and the probe guard scrubs the target's passwords from every finding of every probe."""
    conf = target.conf
    return [f for check in CHECKS for f in check(conf, target, facts)]


class ConfigProbe(Probe):
    """Static config check: settings that delay or lose state updates (no network).

    Reads the app's settings and the installed Celery/SQLAlchemy versions only; opens no
    connection and creates nothing, so there is nothing to clean up.
    """

    name = "config"
    cause = Cause.CONFIG
    static = True

    def run(self, ctx: ProbeContext) -> Iterator[Finding]:
        facts = Facts.installed(ctx.celery_version)
        yield from check_config(ctx.target, facts)
