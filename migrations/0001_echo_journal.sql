-- Echo journal schema (SPEC.md §4). Rows map 1:1 onto echo_statemachine::core::journal.
-- Applied in order by echo-runtime (runtime/src/journal/postgres.rs), each once, under an
-- advisory lock; the schema is fixed here so the
-- machines' record shapes and the tables are reviewed together.

CREATE SCHEMA IF NOT EXISTS echo;

CREATE TABLE IF NOT EXISTS echo.trade_intent (
    intent_id        TEXT PRIMARY KEY,
    trade_id         TEXT NOT NULL,           -- lower-cased
    master_account   TEXT NOT NULL,
    kind             TEXT NOT NULL CHECK (kind IN ('OPEN','MODIFY','PARTIAL_CLOSE','CLOSE')),
    symbol           TEXT NOT NULL,
    side             TEXT NOT NULL CHECK (side IN ('BUY','SELL')),
    volume           DOUBLE PRECISION NOT NULL,
    price            DOUBLE PRECISION NOT NULL,
    stop_loss        DOUBLE PRECISION NOT NULL,
    take_profit      DOUBLE PRECISION NOT NULL,
    master_ticket    BIGINT NOT NULL,
    master_seq       BIGINT NOT NULL,
    emitted_at_ms    BIGINT NOT NULL,
    accepted_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS echo.delivery_journal (
    command_id       TEXT PRIMARY KEY,        -- "{intent_id}@{slave_account}"
    intent_id        TEXT NOT NULL REFERENCES echo.trade_intent(intent_id),
    trade_id         TEXT NOT NULL,
    master_account   TEXT NOT NULL,
    slave_account    TEXT NOT NULL,
    kind             TEXT NOT NULL,
    symbol           TEXT NOT NULL,           -- the slave's symbol (mapped)
    side             TEXT NOT NULL,
    volume           DOUBLE PRECISION NOT NULL, -- the slave's volume (multiplied)
    price            DOUBLE PRECISION NOT NULL,
    stop_loss        DOUBLE PRECISION NOT NULL,
    take_profit      DOUBLE PRECISION NOT NULL,
    master_seq       BIGINT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('inflight','acked','failed')),
    stage            TEXT NOT NULL CHECK (stage IN ('CORE_ACCEPTED','AGENT_BUFFERED','PIPE_DELIVERED','EA_CONFIRMED')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    slave_ticket     BIGINT,
    reason           TEXT,
    next_retry_at    TIMESTAMPTZ,
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS delivery_journal_status_next_retry
    ON echo.delivery_journal (status, next_retry_at);
CREATE INDEX IF NOT EXISTS delivery_journal_trade
    ON echo.delivery_journal (trade_id);

CREATE TABLE IF NOT EXISTS echo.delivery_retry_event (
    id               BIGSERIAL PRIMARY KEY,
    command_id       TEXT NOT NULL,
    attempt          INTEGER NOT NULL,
    stage            TEXT NOT NULL,
    reason           TEXT NOT NULL,
    at               TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS echo.router_rejection (
    id               BIGSERIAL PRIMARY KEY,
    intent_id        TEXT NOT NULL,
    trade_id         TEXT NOT NULL,
    worker_id        INTEGER NOT NULL,
    reason           TEXT NOT NULL,
    at               TIMESTAMPTZ NOT NULL DEFAULT now()
);
