//! The Postgres batch plan for every write but `AcceptIntent`: a batch's `UpdateStage`,
//! `FinishDelivery`, `RecordRetry`, `RecordRejection` and `Probe` writes become a handful of
//! set statements (`UPDATE … FROM UNNEST`, `INSERT … SELECT FROM UNNEST`) instead of one
//! network round trip per write, so a batch costs about the same whether it holds ten writes
//! or a thousand.
//!
//! Owns the grouping and its one rule: the batch must leave the journal exactly as applying
//! its writes one by one, in order, would. Writes on different rows commute (a stage only moves
//! forwards, a final row is never changed again), so only writes on the *same* row are kept in
//! order: the n-th write of a command id goes to round n, rounds run one after another; and a
//! stage update that a later write of the batch supersedes is not sent at all. The
//! open-position bookkeeping of acked deliveries runs after every `FinishDelivery`, in the
//! batch's order, and in bulk only for (trade, slave) pairs the batch touches once. Rows are
//! locked in one order first, so concurrent writers never deadlock on them.
//! It must never decide about a trade, and never leave out a write that could change a row.

use std::collections::BTreeMap;

use echo_statemachine::core::{DeliveryStatus, JournalWrite};
use echo_statemachine::msg::TicketEffect;
use sqlx::{Postgres, Row, Transaction};

use super::codec;
use super::JournalError;

/// Applies every non-`AcceptIntent` write of `writes` inside `tx`; `AcceptIntent`s are skipped
/// (the caller writes them first, in bulk, so they are on disk before anything that names
/// their deliveries). Every write it applies answers `Done`.
pub(super) async fn apply(
    tx: &mut Transaction<'static, Postgres>,
    writes: &[&JournalWrite],
) -> Result<(), JournalError> {
    let mut stage_rounds: Vec<StageColumns> = Vec::new();
    let mut finish_rounds: Vec<FinishColumns> = Vec::new();
    let mut stage_seen: BTreeMap<&str, usize> = BTreeMap::new();
    let mut finish_seen: BTreeMap<&str, usize> = BTreeMap::new();
    let mut retries = RetryColumns::default();
    let mut rejections = RejectionColumns::default();
    let mut probe = false;
    let superseded = superseded_stage_updates(writes);
    for (ord, w) in writes.iter().enumerate() {
        match w {
            JournalWrite::AcceptIntent { .. } => {}
            JournalWrite::UpdateStage { .. } if superseded[ord] => {}
            JournalWrite::UpdateStage {
                command_id,
                stage,
                attempts,
            } => {
                let round = next_round(&mut stage_seen, command_id.as_str());
                if stage_rounds.len() <= round {
                    stage_rounds.push(StageColumns::default());
                }
                let c = &mut stage_rounds[round];
                c.command_id.push(command_id.as_str());
                c.stage.push(codec::stage_str(*stage));
                c.attempts.push(codec::count_to_sql(*attempts));
                c.rank.push(codec::stage_rank(*stage));
            }
            JournalWrite::FinishDelivery {
                command_id,
                status,
                stage,
                attempts,
                slave_ticket,
                reason,
                ..
            } => {
                let round = next_round(&mut finish_seen, command_id.as_str());
                if finish_rounds.len() <= round {
                    finish_rounds.push(FinishColumns::default());
                }
                let c = &mut finish_rounds[round];
                c.ord.push(ord_to_sql(ord)?);
                c.command_id.push(command_id.as_str());
                c.status.push(codec::status_str(*status));
                c.stage.push(codec::stage_str(*stage));
                c.attempts.push(codec::count_to_sql(*attempts));
                c.slave_ticket.push(*slave_ticket);
                c.reason.push(reason.map(codec::reason_str));
            }
            JournalWrite::RecordRetry {
                command_id,
                attempt,
                stage,
                reason,
            } => {
                retries.command_id.push(command_id.as_str());
                retries.attempt.push(codec::count_to_sql(*attempt));
                retries.stage.push(codec::stage_str(*stage));
                retries.reason.push(codec::reason_str(*reason));
            }
            JournalWrite::RecordRejection {
                intent_id,
                trade_id,
                worker,
                reason,
            } => {
                rejections.intent_id.push(intent_id.as_str());
                rejections.trade_id.push(trade_id.as_str());
                rejections.worker.push(codec::count_to_sql(*worker));
                rejections.reason.push(codec::reason_str(*reason));
            }
            JournalWrite::Probe => probe = true,
        }
    }
    lock_in_order(tx, stage_seen.keys().chain(finish_seen.keys())).await?;
    for round in stage_rounds {
        update_stages(tx, round).await?;
    }
    let mut effects: Vec<PositionEffect> = Vec::new();
    for round in finish_rounds {
        finish(tx, round, writes, &mut effects).await?;
    }
    apply_position_effects(tx, effects).await?;
    if !retries.command_id.is_empty() {
        sqlx::query(
            "INSERT INTO echo.delivery_retry_event (command_id, attempt, stage, reason) \
             SELECT * FROM UNNEST($1::text[], $2::int4[], $3::text[], $4::text[])",
        )
        .bind(retries.command_id)
        .bind(retries.attempt)
        .bind(retries.stage)
        .bind(retries.reason)
        .execute(&mut **tx)
        .await?;
    }
    if !rejections.intent_id.is_empty() {
        sqlx::query(
            "INSERT INTO echo.router_rejection (intent_id, trade_id, worker_id, reason) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::int4[], $4::text[])",
        )
        .bind(rejections.intent_id)
        .bind(rejections.trade_id)
        .bind(rejections.worker)
        .bind(rejections.reason)
        .execute(&mut **tx)
        .await?;
    }
    if probe {
        sqlx::query("SELECT 1").execute(&mut **tx).await?;
    }
    Ok(())
}

/// Which `UpdateStage`s a later write of the same batch makes redundant, so they are not sent
/// at all: most of a busy journal's writes are stage updates whose delivery finishes a few
/// milliseconds later, often in the same batch. A stage update is redundant when, later in
/// the batch, the same command is finished (a finish of an in-flight row sets stage and
/// attempts itself; of a final row, both are no-ops), or moved to a strictly higher stage with
/// at least as many attempts (the later update alone gives the same row whatever the row held).
fn superseded_stage_updates(writes: &[&JournalWrite]) -> Vec<bool> {
    let mut out = vec![false; writes.len()];
    // Per command id, what comes later in the batch: finished?, later (rank, attempts).
    let mut later: BTreeMap<&str, Later> = BTreeMap::new();
    for (i, w) in writes.iter().enumerate().rev() {
        match w {
            JournalWrite::FinishDelivery { command_id, .. } => {
                later.entry(command_id.as_str()).or_default().finished = true;
            }
            JournalWrite::UpdateStage {
                command_id,
                stage,
                attempts,
            } => {
                let rank = codec::stage_rank(*stage);
                let l = later.entry(command_id.as_str()).or_default();
                out[i] = l.finished || l.stages.iter().any(|&(r, a)| r > rank && a >= *attempts);
                l.stages.push((rank, *attempts));
            }
            _ => {}
        }
    }
    out
}

/// What the rest of a batch does to one command id.
#[derive(Default)]
struct Later {
    finished: bool,
    /// (stage rank, attempts) of its later stage updates.
    stages: Vec<(i32, u32)>,
}

/// Locks every delivery row the batch will update, in command-id order, before any update.
/// Writers commit batches concurrently and a set statement locks rows in whatever order its
/// plan meets them; two batches touching the same rows in different orders would deadlock
/// (and be answered `Failed`, then retried). One ordered lock statement first makes every
/// writer take the same rows in the same order.
async fn lock_in_order<'a>(
    tx: &mut Transaction<'static, Postgres>,
    ids: impl Iterator<Item = &'a &'a str>,
) -> Result<(), JournalError> {
    let ids: std::collections::BTreeSet<&str> = ids.copied().collect();
    if ids.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = ids.into_iter().collect();
    sqlx::query(
        "SELECT 1 FROM echo.delivery_journal WHERE command_id = ANY($1) \
         ORDER BY command_id FOR UPDATE",
    )
    .bind(ids)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The round a write on `key` belongs to: how many writes on the same row came before it.
fn next_round<'a>(seen: &mut BTreeMap<&'a str, usize>, key: &'a str) -> usize {
    let n = seen.entry(key).or_insert(0);
    let round = *n;
    *n += 1;
    round
}

fn ord_to_sql(ord: usize) -> Result<i32, JournalError> {
    i32::try_from(ord).map_err(|_| JournalError::OutOfRange {
        field: "batch position",
        value: ord.to_string(),
    })
}

#[derive(Default)]
struct StageColumns<'a> {
    command_id: Vec<&'a str>,
    stage: Vec<&'static str>,
    attempts: Vec<i32>,
    rank: Vec<i32>,
}

#[derive(Default)]
struct FinishColumns<'a> {
    ord: Vec<i32>,
    command_id: Vec<&'a str>,
    status: Vec<&'static str>,
    stage: Vec<&'static str>,
    attempts: Vec<i32>,
    slave_ticket: Vec<Option<i64>>,
    reason: Vec<Option<&'static str>>,
}

#[derive(Default)]
struct RetryColumns<'a> {
    command_id: Vec<&'a str>,
    attempt: Vec<i32>,
    stage: Vec<&'static str>,
    reason: Vec<&'static str>,
}

#[derive(Default)]
struct RejectionColumns<'a> {
    intent_id: Vec<&'a str>,
    trade_id: Vec<&'a str>,
    worker: Vec<i32>,
    reason: Vec<&'static str>,
}

/// One round of `UpdateStage`s (distinct command ids) in one statement, with the single
/// write's rule: only an in-flight delivery, only forwards, attempts never lowered.
async fn update_stages(
    tx: &mut Transaction<'static, Postgres>,
    c: StageColumns<'_>,
) -> Result<(), JournalError> {
    sqlx::query(
        "UPDATE echo.delivery_journal AS d SET stage = u.stage, \
         attempts = CASE WHEN d.attempts > u.attempts THEN d.attempts ELSE u.attempts END, \
         updated_at = now() \
         FROM UNNEST($1::text[], $2::text[], $3::int4[], $4::int4[]) \
           AS u(command_id, stage, attempts, rank) \
         WHERE d.command_id = u.command_id AND d.status = 'inflight' AND (CASE d.stage \
         WHEN 'CORE_ACCEPTED' THEN 0 WHEN 'AGENT_BUFFERED' THEN 1 \
         WHEN 'PIPE_DELIVERED' THEN 2 ELSE 3 END) < u.rank",
    )
    .bind(c.command_id)
    .bind(c.stage)
    .bind(c.attempts)
    .bind(c.rank)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// What an acked delivery does to `open_position`: an OPEN (or a PARTIAL_CLOSE that moved the
/// rest to a new ticket) that filled records the slave's
/// ticket; a CLOSE forgets every position opened before it.
struct PositionEffect {
    ord: i32,
    trade: String,
    slave: String,
    seq: i64,
    open_ticket: Option<i64>,
}

/// One round of `FinishDelivery`s (distinct command ids) in one statement: only a delivery
/// still in flight becomes final. The acked ones leave their open-position effect in `effects`.
async fn finish(
    tx: &mut Transaction<'static, Postgres>,
    c: FinishColumns<'_>,
    writes: &[&JournalWrite],
    effects: &mut Vec<PositionEffect>,
) -> Result<(), JournalError> {
    let rows = sqlx::query(
        "UPDATE echo.delivery_journal AS d SET status = u.status, stage = u.stage, \
         attempts = u.attempts, slave_ticket = u.slave_ticket, reason = u.reason, \
         updated_at = now() \
         FROM UNNEST($1::int4[], $2::text[], $3::text[], $4::text[], $5::int4[], \
           $6::int8[], $7::text[]) \
           AS u(ord, command_id, status, stage, attempts, slave_ticket, reason) \
         WHERE d.command_id = u.command_id AND d.status = 'inflight' \
         RETURNING u.ord, d.kind, d.trade_id, d.slave_account, d.master_seq",
    )
    .bind(c.ord)
    .bind(c.command_id)
    .bind(c.status)
    .bind(c.stage)
    .bind(c.attempts)
    .bind(c.slave_ticket)
    .bind(c.reason)
    .fetch_all(&mut **tx)
    .await?;
    for row in rows {
        let ord: i32 = row.try_get("ord")?;
        let write = usize::try_from(ord).ok().and_then(|i| writes.get(i));
        let Some(JournalWrite::FinishDelivery {
            status,
            slave_ticket,
            ..
        }) = write
        else {
            return Err(JournalError::Corrupt {
                column: "batch",
                value: format!("finish row answered for batch position {ord}"),
            });
        };
        if *status != DeliveryStatus::Acked {
            continue;
        }
        let kind = codec::kind_from(&row.try_get::<String, _>("kind")?)?;
        let open_ticket = match (kind.ticket_effect(), slave_ticket) {
            // An open, a placement, a trigger (the position's ticket), a partial close (a
            // broker may move the rest to a new ticket): `IntentKind::ticket_effect`.
            (TicketEffect::Set, Some(ticket)) if *ticket > 0 => Some(*ticket),
            (TicketEffect::Remove, _) => None,
            _ => continue,
        };
        effects.push(PositionEffect {
            ord,
            trade: row.try_get("trade_id")?,
            slave: row.try_get("slave_account")?,
            seq: row.try_get("master_seq")?,
            open_ticket,
        });
    }
    Ok(())
}

/// Applies the open-position effects as one by one in batch order would: a (trade, slave)
/// pair touched once goes into one bulk statement per kind (pairs are independent rows); a
/// pair touched more than once keeps its order, one statement per effect.
async fn apply_position_effects(
    tx: &mut Transaction<'static, Postgres>,
    mut effects: Vec<PositionEffect>,
) -> Result<(), JournalError> {
    if effects.is_empty() {
        return Ok(());
    }
    effects.sort_by_key(|e| e.ord);
    let mut touches: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for e in &effects {
        *touches
            .entry((e.trade.as_str(), e.slave.as_str()))
            .or_insert(0) += 1;
    }
    let mut opens: (Vec<&str>, Vec<&str>, Vec<i64>, Vec<i64>) = Default::default();
    let mut closes: (Vec<&str>, Vec<&str>, Vec<i64>) = Default::default();
    let mut in_order: Vec<&PositionEffect> = Vec::new();
    for e in &effects {
        if touches.get(&(e.trade.as_str(), e.slave.as_str())) != Some(&1) {
            in_order.push(e);
            continue;
        }
        match e.open_ticket {
            Some(ticket) => {
                opens.0.push(&e.trade);
                opens.1.push(&e.slave);
                opens.2.push(ticket);
                opens.3.push(e.seq);
            }
            None => {
                closes.0.push(&e.trade);
                closes.1.push(&e.slave);
                closes.2.push(e.seq);
            }
        }
    }
    if !opens.0.is_empty() {
        sqlx::query(
            "INSERT INTO echo.open_position (trade_id, slave_account, slave_ticket, open_seq) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[]) \
             ON CONFLICT (trade_id, slave_account) DO UPDATE \
             SET slave_ticket = EXCLUDED.slave_ticket, open_seq = EXCLUDED.open_seq \
             WHERE echo.open_position.open_seq <= EXCLUDED.open_seq",
        )
        .bind(opens.0)
        .bind(opens.1)
        .bind(opens.2)
        .bind(opens.3)
        .execute(&mut **tx)
        .await?;
    }
    if !closes.0.is_empty() {
        sqlx::query(
            "DELETE FROM echo.open_position AS o \
             USING UNNEST($1::text[], $2::text[], $3::int8[]) AS u(trade_id, slave_account, seq) \
             WHERE o.trade_id = u.trade_id AND o.slave_account = u.slave_account \
             AND o.open_seq < u.seq",
        )
        .bind(closes.0)
        .bind(closes.1)
        .bind(closes.2)
        .execute(&mut **tx)
        .await?;
    }
    for e in in_order {
        match e.open_ticket {
            Some(ticket) => {
                sqlx::query(
                    "INSERT INTO echo.open_position (trade_id, slave_account, slave_ticket, \
                     open_seq) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (trade_id, slave_account) DO UPDATE \
                     SET slave_ticket = EXCLUDED.slave_ticket, open_seq = EXCLUDED.open_seq \
                     WHERE echo.open_position.open_seq <= EXCLUDED.open_seq",
                )
                .bind(&e.trade)
                .bind(&e.slave)
                .bind(ticket)
                .bind(e.seq)
                .execute(&mut **tx)
                .await?;
            }
            None => {
                sqlx::query(
                    "DELETE FROM echo.open_position \
                     WHERE trade_id = $1 AND slave_account = $2 AND open_seq < $3",
                )
                .bind(&e.trade)
                .bind(&e.slave)
                .bind(e.seq)
                .execute(&mut **tx)
                .await?;
            }
        }
    }
    Ok(())
}
