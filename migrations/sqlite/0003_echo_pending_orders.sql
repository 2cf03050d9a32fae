-- Echo journal for SQLite, step 3: pending orders (as ../0005_echo_pending_orders.sql).
--
-- SQLite cannot alter a CHECK constraint, so `trade_intent` is rebuilt with the widened kind
-- check by SQLite's documented procedure (ALTER TABLE, "making other kinds of table schema
-- changes"): new table, copy, drop the old one, rename the new one into its place. The runner
-- applies migrations with foreign keys off (they would make the drop delete-check
-- `delivery_journal`, and the rename rewrite its REFERENCES clause) and runs
-- `PRAGMA foreign_key_check` before it commits (runtime/src/journal/sqlite.rs).

CREATE TABLE trade_intent_v3 (
    intent_id        TEXT PRIMARY KEY,
    trade_id         TEXT NOT NULL,
    master_account   TEXT NOT NULL,
    kind             TEXT NOT NULL CHECK (kind IN ('OPEN','MODIFY','PARTIAL_CLOSE','CLOSE',
                         'PLACE_LIMIT','PLACE_STOP','PENDING_MODIFY','PENDING_CANCEL','PENDING_TRIGGER')),
    symbol           TEXT NOT NULL,
    side             TEXT NOT NULL CHECK (side IN ('BUY','SELL')),
    volume           REAL NOT NULL,
    price            REAL NOT NULL,
    stop_loss        REAL NOT NULL,
    take_profit      REAL NOT NULL,
    master_ticket    INTEGER NOT NULL,
    master_seq       INTEGER NOT NULL,
    emitted_at_ms    INTEGER NOT NULL,
    accepted_at      INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
    master_volume_before REAL NOT NULL DEFAULT 0
);

INSERT INTO trade_intent_v3 (intent_id, trade_id, master_account, kind, symbol, side, volume,
    price, stop_loss, take_profit, master_ticket, master_seq, emitted_at_ms, accepted_at,
    master_volume_before)
SELECT intent_id, trade_id, master_account, kind, symbol, side, volume, price, stop_loss,
    take_profit, master_ticket, master_seq, emitted_at_ms, accepted_at, master_volume_before
FROM trade_intent;

DROP TABLE trade_intent;
ALTER TABLE trade_intent_v3 RENAME TO trade_intent;
CREATE INDEX IF NOT EXISTS trade_intent_trade ON trade_intent (trade_id);
