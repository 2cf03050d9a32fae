//! The SQLite journal's one-write-at-a-time SQL for `FinishDelivery` (with the open-position
//! bookkeeping), `UpdateStage`, `RecordRetry`, `RecordRejection` and `Probe`.
//!
//! Postgres writes the same rows with the same rules in bulk (`pg_bulk.rs`); the journal suite
//! runs the same behaviour tests against both, which is what keeps the two in step. It stays a
//! macro over the table prefix and the "now" expression so a second one-by-one backend costs
//! nothing. It must never decide about a trade: a final row is never changed again, a stage
//! never goes backwards, and that is the whole of its logic.

/// Expands to `apply_shared(tx, w)` for one backend; `AcceptIntent` is refused (the backend
/// handles it before calling this).
macro_rules! shared_writes {
    ($db:ty, $prefix:literal, $now:literal) => {
        async fn apply_shared(
            tx: &mut sqlx::Transaction<'static, $db>,
            w: &JournalWrite,
        ) -> Result<JournalReply, JournalError> {
            let (p, now) = ($prefix, $now);
            match w {
                JournalWrite::AcceptIntent { .. } => Err(JournalError::Corrupt {
                    column: "batch",
                    value: "AcceptIntent reached the shared writes".into(),
                }),
                JournalWrite::FinishDelivery {
                    command_id,
                    status,
                    stage,
                    attempts,
                    slave_ticket,
                    reason,
                    ..
                } => {
                    let row = sqlx::query(&format!(
                        "UPDATE {p}delivery_journal SET status = $2, stage = $3, attempts = $4, \
                         slave_ticket = $5, reason = $6, updated_at = {now} \
                         WHERE command_id = $1 AND status = 'inflight' \
                         RETURNING kind, trade_id, slave_account, master_seq"
                    ))
                    .bind(command_id.as_str())
                    .bind(codec::status_str(*status))
                    .bind(codec::stage_str(*stage))
                    .bind(codec::count_to_sql(*attempts))
                    .bind(*slave_ticket)
                    .bind(reason.map(codec::reason_str))
                    .fetch_optional(&mut **tx)
                    .await?;
                    let Some(row) = row else {
                        // Already final (never regressed) or unknown: nothing to change.
                        return Ok(JournalReply::Done);
                    };
                    if *status != DeliveryStatus::Acked {
                        return Ok(JournalReply::Done);
                    }
                    let kind = codec::kind_from(&row.try_get::<String, _>("kind")?)?;
                    let trade: String = row.try_get("trade_id")?;
                    let slave: String = row.try_get("slave_account")?;
                    let seq: i64 = row.try_get("master_seq")?;
                    match (kind.ticket_effect(), slave_ticket) {
                        // An open or a pending placement records the slave's ticket; a partial
                        // close may leave the rest under a new ticket (MT4 does) and a
                        // trigger names the position's: the latest fill's ticket is the
                        // trade's (`IntentKind::ticket_effect`, as the core's own map).
                        (TicketEffect::Set, Some(ticket)) if *ticket > 0 => {
                            sqlx::query(&format!(
                                "INSERT INTO {p}open_position (trade_id, slave_account, slave_ticket, \
                                 open_seq) VALUES ($1, $2, $3, $4) \
                                 ON CONFLICT (trade_id, slave_account) DO UPDATE \
                                 SET slave_ticket = EXCLUDED.slave_ticket, open_seq = EXCLUDED.open_seq \
                                 WHERE {p}open_position.open_seq <= EXCLUDED.open_seq"
                            ))
                            .bind(&trade)
                            .bind(&slave)
                            .bind(*ticket)
                            .bind(seq)
                            .execute(&mut **tx)
                            .await?;
                        }
                        (TicketEffect::Remove, _) => {
                            sqlx::query(&format!(
                                "DELETE FROM {p}open_position \
                                 WHERE trade_id = $1 AND slave_account = $2 AND open_seq < $3"
                            ))
                            .bind(&trade)
                            .bind(&slave)
                            .bind(seq)
                            .execute(&mut **tx)
                            .await?;
                        }
                        _ => {}
                    }
                    Ok(JournalReply::Done)
                }
                JournalWrite::UpdateStage {
                    command_id,
                    stage,
                    attempts,
                } => {
                    sqlx::query(&format!(
                        "UPDATE {p}delivery_journal SET stage = $2, \
                         attempts = CASE WHEN attempts > $3 THEN attempts ELSE $3 END, updated_at = {now} \
                         WHERE command_id = $1 AND status = 'inflight' AND (CASE stage \
                         WHEN 'CORE_ACCEPTED' THEN 0 WHEN 'AGENT_BUFFERED' THEN 1 \
                         WHEN 'PIPE_DELIVERED' THEN 2 ELSE 3 END) < $4"
                    ))
                    .bind(command_id.as_str())
                    .bind(codec::stage_str(*stage))
                    .bind(codec::count_to_sql(*attempts))
                    .bind(codec::stage_rank(*stage))
                    .execute(&mut **tx)
                    .await?;
                    Ok(JournalReply::Done)
                }
                JournalWrite::RecordRetry {
                    command_id,
                    attempt,
                    stage,
                    reason,
                } => {
                    sqlx::query(&format!(
                        "INSERT INTO {p}delivery_retry_event (command_id, attempt, stage, reason) \
                         VALUES ($1, $2, $3, $4)"
                    ))
                    .bind(command_id.as_str())
                    .bind(codec::count_to_sql(*attempt))
                    .bind(codec::stage_str(*stage))
                    .bind(codec::reason_str(*reason))
                    .execute(&mut **tx)
                    .await?;
                    Ok(JournalReply::Done)
                }
                JournalWrite::RecordRejection {
                    intent_id,
                    trade_id,
                    worker,
                    reason,
                } => {
                    sqlx::query(&format!(
                        "INSERT INTO {p}router_rejection (intent_id, trade_id, worker_id, reason) \
                         VALUES ($1, $2, $3, $4)"
                    ))
                    .bind(intent_id.as_str())
                    .bind(trade_id.as_str())
                    .bind(codec::count_to_sql(*worker))
                    .bind(codec::reason_str(*reason))
                    .execute(&mut **tx)
                    .await?;
                    Ok(JournalReply::Done)
                }
                JournalWrite::Probe => {
                    sqlx::query("SELECT 1").execute(&mut **tx).await?;
                    Ok(JournalReply::Done)
                }
            }
        }
    };
}
pub(crate) use shared_writes;
