-- Echo journal schema for SQLite (the embedded default). Same tables and columns as the
-- Postgres schema (../0001_echo_journal.sql, ../0002_echo_open_position.sql); SQLite has no
-- schemas, so the tables carry no `echo.` prefix, and timestamps are INTEGER milliseconds
-- since the Unix epoch. Opened with journal_mode=WAL and synchronous=FULL.

CREATE TABLE IF NOT EXISTS trade_intent (
    intent_id        TEXT PRIMARY KEY,
    trade_id         TEXT NOT NULL,
    master_account   TEXT NOT NULL,
    kind             TEXT NOT NULL CHECK (kind IN ('OPEN','MODIFY','PARTIAL_CLOSE','CLOSE')),
    symbol           TEXT NOT NULL,
    side             TEXT NOT NULL CHECK (side IN ('BUY','SELL')),
    volume           REAL NOT NULL,
    price            REAL NOT NULL,
    stop_loss        REAL NOT NULL,
    take_profit      REAL NOT NULL,
    master_ticket    INTEGER NOT NULL,
    master_seq       INTEGER NOT NULL,
    emitted_at_ms    INTEGER NOT NULL,
    accepted_at      INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER))
);

CREATE TABLE IF NOT EXISTS delivery_journal (
    command_id       TEXT PRIMARY KEY,
    intent_id        TEXT NOT NULL REFERENCES trade_intent(intent_id),
    trade_id         TEXT NOT NULL,
    master_account   TEXT NOT NULL,
    slave_account    TEXT NOT NULL,
    kind             TEXT NOT NULL,
    symbol           TEXT NOT NULL,
    side             TEXT NOT NULL,
    volume           REAL NOT NULL,
    price            REAL NOT NULL,
    stop_loss        REAL NOT NULL,
    take_profit      REAL NOT NULL,
    master_seq       INTEGER NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('inflight','acked','failed')),
    stage            TEXT NOT NULL CHECK (stage IN ('CORE_ACCEPTED','AGENT_BUFFERED','PIPE_DELIVERED','EA_CONFIRMED')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    slave_ticket     INTEGER,
    reason           TEXT,
    next_retry_at    INTEGER,
    updated_at       INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER))
);

CREATE INDEX IF NOT EXISTS delivery_journal_status_next_retry
    ON delivery_journal (status, next_retry_at);
CREATE INDEX IF NOT EXISTS delivery_journal_trade
    ON delivery_journal (trade_id);

CREATE TABLE IF NOT EXISTS delivery_retry_event (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    command_id       TEXT NOT NULL,
    attempt          INTEGER NOT NULL,
    stage            TEXT NOT NULL,
    reason           TEXT NOT NULL,
    at               INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER))
);

CREATE INDEX IF NOT EXISTS delivery_retry_event_command
    ON delivery_retry_event (command_id);

CREATE TABLE IF NOT EXISTS router_rejection (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    intent_id        TEXT NOT NULL,
    trade_id         TEXT NOT NULL,
    worker_id        INTEGER NOT NULL,
    reason           TEXT NOT NULL,
    at               INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER))
);

CREATE INDEX IF NOT EXISTS router_rejection_trade
    ON router_rejection (trade_id);
CREATE INDEX IF NOT EXISTS trade_intent_trade
    ON trade_intent (trade_id);

CREATE TABLE IF NOT EXISTS open_position (
    trade_id         TEXT NOT NULL,
    slave_account    TEXT NOT NULL,
    slave_ticket     INTEGER NOT NULL,
    open_seq         INTEGER NOT NULL,
    PRIMARY KEY (trade_id, slave_account)
);
