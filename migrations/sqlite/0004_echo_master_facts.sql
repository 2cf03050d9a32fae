-- Echo journal for SQLite, step 4: the master's facts journaled with the intent (as
-- ../0006_echo_master_facts.sql). Rows written before read as "not reported".

ALTER TABLE trade_intent ADD COLUMN magic INTEGER NOT NULL DEFAULT 0;
ALTER TABLE trade_intent ADD COLUMN comment TEXT NOT NULL DEFAULT '';
ALTER TABLE trade_intent ADD COLUMN order_type TEXT NOT NULL DEFAULT 'MARKET';
ALTER TABLE trade_intent ADD COLUMN master_balance REAL NOT NULL DEFAULT 0;
ALTER TABLE trade_intent ADD COLUMN master_equity REAL NOT NULL DEFAULT 0;
