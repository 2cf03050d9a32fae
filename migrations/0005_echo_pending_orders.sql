-- Echo journal, step 5: pending orders (SPEC.md §5.2 "Pending orders").
--
-- A master's pending order is a trade like a position: PLACE_LIMIT / PLACE_STOP,
-- PENDING_MODIFY, PENDING_CANCEL and PENDING_TRIGGER intents share its trade_id with the
-- position's later MODIFY / PARTIAL_CLOSE / CLOSE. The delivery rows already take any kind
-- (`delivery_journal.kind` has no check); the intent table's check is widened. Ticket
-- correlation needs no new table: `open_position` keeps the slave's pending ticket from its
-- filled placement, the trigger replaces it by the position's ticket (the same one when the
-- slave's pending filled on its own) and a cancel deletes the row — in the same transaction as
-- the FinishDelivery, exactly as for opens and closes.

ALTER TABLE echo.trade_intent DROP CONSTRAINT IF EXISTS trade_intent_kind_check;
ALTER TABLE echo.trade_intent ADD CONSTRAINT trade_intent_kind_check CHECK (kind IN (
    'OPEN', 'MODIFY', 'PARTIAL_CLOSE', 'CLOSE',
    'PLACE_LIMIT', 'PLACE_STOP', 'PENDING_MODIFY', 'PENDING_CANCEL', 'PENDING_TRIGGER'));
