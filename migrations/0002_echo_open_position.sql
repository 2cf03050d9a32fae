-- Echo journal, step 2: what a restarted core needs beyond the unfinished deliveries.
--
-- open_position: the slave ticket of every position a journaled OPEN filled and no journaled
-- CLOSE has closed yet (CoreDurableState.open_tickets). It is maintained in the same
-- transaction as the FinishDelivery that makes the fill or the close durable, so a restart
-- never scans the whole delivery history for it.

CREATE TABLE IF NOT EXISTS echo.open_position (
    trade_id         TEXT NOT NULL,
    slave_account    TEXT NOT NULL,
    slave_ticket     BIGINT NOT NULL,
    open_seq         BIGINT NOT NULL,          -- master_seq of the OPEN that filled it
    PRIMARY KEY (trade_id, slave_account)
);

-- `echo journal show TRADE` joins retry events to their delivery.
CREATE INDEX IF NOT EXISTS delivery_retry_event_command
    ON echo.delivery_retry_event (command_id);
CREATE INDEX IF NOT EXISTS router_rejection_trade
    ON echo.router_rejection (trade_id);
CREATE INDEX IF NOT EXISTS trade_intent_trade
    ON echo.trade_intent (trade_id);
