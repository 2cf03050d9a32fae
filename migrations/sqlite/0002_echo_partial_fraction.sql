-- Echo journal for SQLite, step 2: partial closes by fraction (as ../0004_echo_partial_fraction.sql).

ALTER TABLE trade_intent ADD COLUMN master_volume_before REAL NOT NULL DEFAULT 0;
ALTER TABLE delivery_journal ADD COLUMN master_volume_before REAL NOT NULL DEFAULT 0;
