-- Echo journal, step 4: partial closes by fraction (SPEC.md §5.2).
--
-- A PARTIAL_CLOSE states the master's lots before it (`master_volume_before`); with `volume`
-- (the closed lots) it is the exact fraction each slave closes of its own position. The
-- delivery row keeps both so a restarted core re-sends the same fraction. 0 for every other
-- kind, and for rows written before this step (they were planned in lots).

ALTER TABLE echo.trade_intent
    ADD COLUMN IF NOT EXISTS master_volume_before DOUBLE PRECISION NOT NULL DEFAULT 0;
ALTER TABLE echo.delivery_journal
    ADD COLUMN IF NOT EXISTS master_volume_before DOUBLE PRECISION NOT NULL DEFAULT 0;
