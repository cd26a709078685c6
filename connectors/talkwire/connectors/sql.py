"""The ``sql`` connector: named, parameterised statements over SQLAlchemy async.

Example::

    connectors:
      crm:
        type: sql
        url: postgresql+asyncpg://talkwire@db/crm   # or sqlite+aiosqlite:///crm.db,
                                                    # mysql+aiomysql://user@db/crm
        read_only: false
        row_limit: 200            # max rows a "rows" operation returns (fetchmany)
        statement_timeout: 5      # seconds, total deadline per call (also set server-side)
        pool: {size: 5, max_overflow: 10, timeout: 10, recycle: 1800, pre_ping: false}
        operations:
          order_status:
            sql: >-
              SELECT id AS order_id, status, eta FROM orders
              WHERE id = :order_id AND customer_id = :customer_id
            params:
              order_id: {type: integer}
              customer_id: {type: string}
            result: row           # rows | row | value | object
            cache_ttl: 30
            cache_keys: ["order:{order_id}"]

Statements use ``:name`` bind parameters only (values are never formatted into
SQL). Besides declared parameters, ``:user_<claim>`` binds the caller's claim
(``:user_sub`` is the subject; ``:user_subject`` is its deprecated spelling).
One statement per operation. ``write`` is inferred from the statement (DML /
DDL) when not given; a ``read_only`` connector refuses write statements at load
and at call, and its sessions are read-only on the server too (PostgreSQL
``default_transaction_read_only``, MariaDB/MySQL ``SET SESSION TRANSACTION READ
ONLY``, SQLite ``PRAGMA query_only``). Writes run in a transaction that commits;
they return ``{"rowcount": n, "lastrowid": id?, **returned_row}`` (``result:
object``), the ``RETURNING`` row (``result: row``), the returned rows (``rows``)
or the first returned column (``value``). Per-operation ``timeout`` and
``row_limit`` may override the connector's.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import datetime as dt
import decimal
import logging
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from sqlalchemy import event, exc, make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.elements import TextClause

from talkwire.connectors.base import CallContext, Operation
from talkwire.connectors.caller import canonical_field, context_scope
from talkwire.connectors.errors import (
    BackendError,
    ConnectorConfigError,
    ConnectorError,
    ConnectorTimeoutError,
    ConnectorUnavailableError,
    OperationNotFoundError,
    RejectedInputError,
    ResultNotFoundError,
)
from talkwire.connectors.operations import build_operation
from talkwire.connectors.spec import (
    COMMON_OPERATION_KEYS,
    check_keys,
    get_bool,
    get_number,
    parse_operation,
    validate_params,
)

__all__ = ["SqlConnector", "classify_sql"]

log = logging.getLogger(__name__)

_DRIVERS = {
    "sqlite+aiosqlite": "sqlite",
    "postgresql+asyncpg": "postgresql",
    "postgresql+psycopg": "postgresql",
    "postgresql+psycopg_async": "postgresql",
    "mysql+aiomysql": "mysql",
    "mysql+asyncmy": "mysql",
    "mariadb+aiomysql": "mysql",
    "mariadb+asyncmy": "mysql",
}
_CONNECTOR_KEYS = frozenset(
    {
        "type",
        "url",
        "read_only",
        "row_limit",
        "statement_timeout",
        "pool",
        "operations",
        "description",
        "echo",
    }
)
_SQL_OP_KEYS = COMMON_OPERATION_KEYS | {"sql", "timeout", "row_limit"}
_POOL_KEYS = frozenset({"size", "max_overflow", "timeout", "recycle", "pre_ping"})

# Mirrors sqlalchemy.sql.elements.TextClause's bind regex.
_BIND = re.compile(r"(?<![:\w\x5c]):(\w+)(?!:)", re.UNICODE)
_LITERALS = re.compile(
    r"'(?:[^'\\]|\\.|'')*'|\"(?:[^\"]|\"\")*\"|`(?:[^`]|``)*`|--[^\n]*|#[^\n]*|/\*.*?\*/",
    re.S,
)
_FIRST_WORD = re.compile(r"\s*\(*\s*([A-Za-z]+)")
_READ_FIRST = frozenset({"SELECT", "WITH", "VALUES", "SHOW", "EXPLAIN", "TABLE", "DESCRIBE"})
_WRITE_WORDS = re.compile(
    r"\b(INSERT|UPDATE|DELETE|MERGE|UPSERT|CREATE|DROP|ALTER|TRUNCATE|GRANT|REVOKE|RENAME|"
    r"COPY|CALL|EXEC|EXECUTE|LOCK|VACUUM|ATTACH|DETACH|REINDEX|HANDLER|LOAD|REPLACE|INTO)\b"
    r"(?!\s*\()",
    re.I,
)


def classify_sql(sql: str) -> tuple[bool, bool]:
    """``(is_write, has_multiple_statements)`` of a statement (literals and comments ignored)."""
    stripped = _LITERALS.sub(" '' ", sql)
    body = stripped.strip().rstrip(";").strip()
    multiple = ";" in body
    m = _FIRST_WORD.match(body)
    first = m.group(1).upper() if m else ""
    is_write = first not in _READ_FIRST or _WRITE_WORDS.search(body) is not None
    return is_write, multiple


def _jsonable(value: Any) -> Any:
    t = type(value)
    if t is str or t is int or t is float or value is None or t is bool:
        return value
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def _row_dict(keys: Sequence[str], row: Sequence[Any]) -> dict[str, Any]:
    return {k: _jsonable(v) for k, v in zip(keys, row, strict=False)}


@dataclass(frozen=True, slots=True)
class _SqlOp:
    op: Operation
    statement: TextClause
    binds: tuple[str, ...]
    user_binds: tuple[tuple[str, str], ...]
    timeout: float
    row_limit: int
    is_insert: bool


class SqlConnector:
    """Named SQL statements; see the module docstring for the configuration."""

    type = "sql"

    def __init__(self, name: str, config: Mapping[str, Any]) -> None:
        self.name = name
        where = f"connectors.{name}"
        check_keys(config, _CONNECTOR_KEYS, where)
        raw_url = config.get("url")
        if not isinstance(raw_url, str | URL):
            raise ConnectorConfigError(f"{where}.url", "a SQLAlchemy async URL is required")
        try:
            url = make_url(raw_url)
        except exc.ArgumentError as e:
            raise ConnectorConfigError(f"{where}.url", f"invalid URL: {e}") from None
        family = _DRIVERS.get(url.drivername)
        if family is None:
            raise ConnectorConfigError(
                f"{where}.url",
                f"unsupported driver {url.drivername!r}; use one of {', '.join(sorted(_DRIVERS))}",
            )
        self.dialect = family
        self.read_only = get_bool(config, "read_only", False, where)
        self.row_limit = int(get_number(config, "row_limit", 1000, where, minimum=1, integer=True))
        self.statement_timeout = get_number(config, "statement_timeout", 30.0, where)
        if self.statement_timeout <= 0:
            raise ConnectorConfigError(f"{where}.statement_timeout", "must be > 0")
        self._ops: dict[str, _SqlOp] = {}
        self._operations: dict[str, Operation] = {}
        ops = config.get("operations") or {}
        if not isinstance(ops, Mapping) or not ops:
            raise ConnectorConfigError(f"{where}.operations", "at least one operation is required")
        for op_name, section in ops.items():
            self._add(str(op_name), section, f"{where}.operations.{op_name}")
        max_timeout = max(s.timeout for s in self._ops.values())
        self._engine = self._make_engine(url, config, where, max_timeout)
        self._closed = False

    # -- configuration -------------------------------------------------------

    def _add(self, name: str, section: Mapping[str, Any], where: str) -> None:
        check_keys(section, _SQL_OP_KEYS, where)
        sql = section.get("sql")
        if not isinstance(sql, str) or not sql.strip():
            raise ConnectorConfigError(f"{where}.sql", "a SQL statement is required")
        is_write, multiple = classify_sql(sql)
        if multiple:
            raise ConnectorConfigError(f"{where}.sql", "exactly one statement per operation")
        base = parse_operation(name, section, where, write_default=is_write)
        if is_write and not base.write:
            raise ConnectorConfigError(
                f"{where}.write", "the statement modifies data: declare write: true"
            )
        if self.read_only and (is_write or base.write):
            raise ConnectorConfigError(
                f"{where}.sql", "connector is read_only: DML/DDL statements are refused"
            )
        declared = {p.name for p in base.parameters}
        binds: list[str] = []
        user_binds: list[tuple[str, str]] = []
        claims: set[str] = set()
        for bind in dict.fromkeys(_BIND.findall(sql)):
            if bind in declared:
                binds.append(bind)
            elif bind.startswith("user_") and len(bind) > 5:
                claim = canonical_field(f"user.{bind[5:]}").partition(".")[2]
                user_binds.append((bind, claim))
                claims.add(claim)
            else:
                raise ConnectorConfigError(
                    f"{where}.sql", f"bind :{bind} is not a declared parameter (or :user_<claim>)"
                )
        op = build_operation(base, {}, where, claims=claims)
        timeout = get_number(section, "timeout", self.statement_timeout, where)
        if timeout <= 0:
            raise ConnectorConfigError(f"{where}.timeout", "must be > 0")
        row_limit = int(
            get_number(section, "row_limit", self.row_limit, where, minimum=1, integer=True)
        )
        self._operations[name] = op
        self._ops[name] = _SqlOp(
            op=op,
            statement=text(sql),
            binds=tuple(binds),
            user_binds=tuple(user_binds),
            timeout=timeout,
            row_limit=row_limit,
            is_insert=sql.lstrip().upper().startswith(("INSERT", "REPLACE")),
        )

    def _make_engine(
        self, url: URL, config: Mapping[str, Any], where: str, max_timeout: float
    ) -> AsyncEngine:
        pool = config.get("pool") or {}
        check_keys(pool, _POOL_KEYS, f"{where}.pool")
        kwargs: dict[str, Any] = {"echo": get_bool(config, "echo", False, where)}
        memory = self.dialect == "sqlite" and url.database in (None, "", ":memory:")
        if not memory:
            pw = f"{where}.pool"
            kwargs["pool_size"] = int(get_number(pool, "size", 5, pw, minimum=1, integer=True))
            kwargs["max_overflow"] = int(get_number(pool, "max_overflow", 10, pw, integer=True))
            kwargs["pool_timeout"] = get_number(pool, "timeout", 10.0, pw)
            kwargs["pool_recycle"] = int(get_number(pool, "recycle", 1800, pw, integer=True))
            kwargs["pool_pre_ping"] = get_bool(pool, "pre_ping", False, pw)
        server_timeout = max_timeout + 0.5  # the client deadline normally fires first
        setup: list[str] = []
        if url.drivername == "postgresql+asyncpg":
            settings = {"statement_timeout": str(int(server_timeout * 1000))}
            if self.read_only:
                settings["default_transaction_read_only"] = "on"
            kwargs["connect_args"] = {"server_settings": settings}
        elif self.dialect == "postgresql":
            setup.append(f"SET statement_timeout = {int(server_timeout * 1000)}")
            if self.read_only:
                setup.append("SET default_transaction_read_only = on")
        elif self.dialect == "mysql":
            setup.append(f"SET SESSION max_statement_time = {server_timeout:.3f}")
            if self.read_only:
                setup.append("SET SESSION TRANSACTION READ ONLY")
        elif self.read_only:
            setup.append("PRAGMA query_only = ON")
        engine = create_async_engine(url, **kwargs)
        if setup:
            event.listen(engine.sync_engine, "connect", _session_setup(setup))
        return engine

    # -- lifecycle -----------------------------------------------------------

    @property
    def operations(self) -> Mapping[str, Operation]:
        return self._operations

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: builtins.type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await self._engine.dispose()

    # -- calls -----------------------------------------------------------------

    async def invoke(
        self, operation: str, params: Mapping[str, Any], ctx: CallContext | None = None
    ) -> Any:
        spec = self._ops.get(operation)
        if spec is None:
            raise OperationNotFoundError(
                f"connector '{self.name}' has no operation '{operation}'",
                connector=self.name,
                operation=operation,
            )
        if self._closed:
            raise ConnectorUnavailableError(
                f"connector '{self.name}' is closed", connector=self.name, operation=operation
            )
        if self.read_only and spec.op.write:  # pragma: no cover - refused at load already
            raise RejectedInputError("connector is read-only", connector=self.name)
        values = validate_params(spec.op, params)
        binds = {b: values[b] for b in spec.binds}
        user = context_scope(ctx) if spec.user_binds else {}
        for bind, claim in spec.user_binds:
            value = user.get(claim)
            if value is None:
                raise RejectedInputError(
                    f"caller claim '{claim}' is required", connector=self.name, operation=operation
                )
            binds[bind] = value
        budget = spec.timeout
        if ctx is not None and ctx.deadline is not None:
            budget = min(budget, ctx.deadline - time.monotonic())
        if budget <= 0:
            raise ConnectorTimeoutError(
                "deadline already expired", connector=self.name, operation=operation
            )
        try:
            return await self._run(spec, binds, budget)
        except ConnectorError as e:
            e.connector, e.operation = self.name, operation
            raise
        except exc.SQLAlchemyError as e:
            raise self._map_error(e, operation) from None
        except OSError as e:
            raise ConnectorUnavailableError(
                f"database unreachable ({type(e).__name__})",
                connector=self.name,
                operation=operation,
            ) from None

    async def _run(self, spec: _SqlOp, binds: dict[str, Any], budget: float) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        try:
            async with asyncio.timeout_at(deadline):
                conn = await self._engine.connect()
        except TimeoutError:
            raise ConnectorTimeoutError(f"no database connection within {budget:.3g}s") from None
        interrupt: asyncio.TimerHandle | None = None
        try:
            if self.dialect == "sqlite":
                interrupt = await self._arm_sqlite_interrupt(conn, deadline)
            async with asyncio.timeout_at(deadline):
                if spec.op.write:
                    result = await self._write(conn, spec, binds)
                else:
                    result = await self._read(conn, spec, binds)
        except TimeoutError:
            await _discard(conn)
            raise ConnectorTimeoutError(f"statement exceeded {budget:.3g}s") from None
        except BaseException:
            await _discard(conn)
            raise
        finally:
            if interrupt is not None:
                interrupt.cancel()
        await conn.close()
        return result

    async def _arm_sqlite_interrupt(
        self, conn: AsyncConnection, deadline: float
    ) -> asyncio.TimerHandle | None:
        """SQLite runs in a worker thread: interrupt the statement when the deadline hits."""
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection
        sqlite_conn = getattr(driver, "_connection", None)
        interrupt = getattr(sqlite_conn, "interrupt", None)
        if interrupt is None:  # pragma: no cover - aiosqlite internals changed
            return None
        return asyncio.get_running_loop().call_at(deadline, interrupt)

    async def _read(self, conn: AsyncConnection, spec: _SqlOp, binds: dict[str, Any]) -> Any:
        shape = spec.op.result
        if shape == "rows":
            stream = await conn.stream(spec.statement, binds)
            try:
                keys = list(stream.keys())
                rows = await stream.fetchmany(spec.row_limit)
            finally:
                await stream.close()
            return [_row_dict(keys, r) for r in rows]
        res = await conn.execute(spec.statement, binds)
        keys = list(res.keys())
        row = res.fetchone()
        res.close()
        if shape == "value":
            return None if row is None else _jsonable(row[0])
        if row is None:
            if shape == "object":
                raise ResultNotFoundError("no matching record")
            return None
        return _row_dict(keys, row)

    async def _write(self, conn: AsyncConnection, spec: _SqlOp, binds: dict[str, Any]) -> Any:
        res = await conn.execute(spec.statement, binds)
        rowcount = res.rowcount
        returned: list[dict[str, Any]] = []
        if res.returns_rows:
            keys = list(res.keys())
            returned = [_row_dict(keys, r) for r in res.fetchmany(spec.row_limit)]
        lastrowid: Any = None
        if spec.is_insert and not returned and self.dialect != "postgresql":
            try:
                lastrowid = res.lastrowid or None
            except (exc.InvalidRequestError, AttributeError):  # pragma: no cover
                lastrowid = None
        res.close()
        await conn.commit()
        shape = spec.op.result
        if shape == "rows":
            return returned
        if shape == "value":
            return returned[0][next(iter(returned[0]))] if returned else rowcount
        info: dict[str, Any] = {"rowcount": rowcount}
        if lastrowid is not None:
            info["lastrowid"] = lastrowid
        if shape == "row":
            return returned[0] if returned else info
        if returned:
            info.update(returned[0])
        return info

    def _map_error(self, e: exc.SQLAlchemyError, operation: str) -> ConnectorError:
        orig = getattr(e, "orig", None)
        detail = str(orig if orig is not None else e).strip().splitlines()
        first = detail[0][:200] if detail else type(e).__name__
        kw = {"connector": self.name, "operation": operation}
        log.debug("sql connector %s.%s failed", self.name, operation, exc_info=e)
        lowered = first.lower()
        code = _sqlstate(orig)
        if code in ("57014",) or "max_statement_time" in lowered or "interrupted" in lowered:
            return ConnectorTimeoutError(f"statement timed out: {first}", **kw)
        if isinstance(e, exc.TimeoutError):
            return ConnectorUnavailableError("no free database connection (pool timeout)", **kw)
        if isinstance(e, exc.DBAPIError) and e.connection_invalidated:
            return ConnectorUnavailableError(f"database connection lost: {first}", **kw)
        if code == "25006" or "read-only" in lowered or "read only" in lowered:
            return RejectedInputError(f"refused by the read-only session: {first}", **kw)
        if isinstance(e, exc.IntegrityError):
            return BackendError(f"conflicts with existing data: {first}", **kw)
        if isinstance(e, exc.DataError):
            return RejectedInputError(f"invalid value: {first}", **kw)
        if isinstance(e, exc.OperationalError | exc.InterfaceError | exc.DisconnectionError):
            transient = (
                "connect",
                "lost",
                "gone away",
                "refused",
                "locked",
                "closed",
                "reset",
                "terminat",
                "timeout",
            )
            if any(t in lowered for t in transient):
                return ConnectorUnavailableError(f"database unavailable: {first}", **kw)
        return BackendError(f"database error: {first}", **kw)


def _sqlstate(orig: Any) -> str:
    for attr in ("sqlstate", "pgcode"):
        value = getattr(orig, attr, None)
        if isinstance(value, str):
            return value
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int):
        return {1969: "57014", 3024: "57014", 1792: "25006"}.get(args[0], "")
    return ""


async def _discard(conn: AsyncConnection) -> None:
    """Drop a connection whose state is unknown (cancelled mid-statement)."""
    try:
        await conn.invalidate()
    except Exception:
        log.debug("invalidate failed", exc_info=True)
    try:
        await conn.close()
    except Exception:
        log.debug("close failed", exc_info=True)


def _session_setup(statements: list[str]) -> Callable[[Any, Any], None]:
    def setup(dbapi_connection: Any, connection_record: Any) -> None:
        for statement in statements:
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute(statement)
            except Exception:
                log.debug("session setup %r failed", statement, exc_info=True)
                if "max_statement_time" in statement:
                    ms = int(float(statement.rsplit("=", 1)[1]) * 1000)
                    try:
                        cursor.execute(f"SET SESSION max_execution_time = {ms}")
                    except Exception:
                        log.debug("max_execution_time not supported", exc_info=True)
            finally:
                cursor.close()

    return setup
