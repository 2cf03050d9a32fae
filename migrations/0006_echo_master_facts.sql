-- Echo journal, step 6: the master's facts journaled with the intent (SPEC.md §5.2).
--
-- A TradeIntent carries what the master EA reported with it (`TradeIntent.origin`): magic
-- number, comment, order type (the subscription filters) and the master's balance and equity
-- when it traded (balance/equity-ratio sizing). They are journaled with the intent so that an
-- open read back after a core restart is planned with the same facts as before the crash
-- (`core.delivery.T28`): without them a ratio-sized open was refused ACCOUNT_FACTS_UNKNOWN by
-- the slave only because the core had restarted. Rows written before this step read as
-- "not reported" (0, '', MARKET), exactly what they were to a restarted core before. Adding
-- columns with constant defaults rewrites no row.

ALTER TABLE echo.trade_intent
    ADD COLUMN IF NOT EXISTS magic BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS comment TEXT NOT NULL DEFAULT '',
    ADD COLUMN IF NOT EXISTS order_type TEXT NOT NULL DEFAULT 'MARKET',
    ADD COLUMN IF NOT EXISTS master_balance DOUBLE PRECISION NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS master_equity DOUBLE PRECISION NOT NULL DEFAULT 0;
