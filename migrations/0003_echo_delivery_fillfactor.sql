-- Echo journal, step 3: room on every delivery_journal page for the row's next versions.
--
-- A delivery row is updated a few times in its short life (stage updates, then its final
-- state). With full pages every update is a non-HOT update: a new tuple on another page and new
-- entries in all three indexes. Stage updates change no indexed column, so with free space on
-- the page Postgres makes them HOT updates (same page, no index writes). Applies to pages
-- written from now on; a VACUUM FULL or pg_repack rewrites older ones if an operator wants.

ALTER TABLE echo.delivery_journal SET (fillfactor = 70);
