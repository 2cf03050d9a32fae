//! The agent ledger thread's protocol: it takes every queued request (up to `max_batch`) as one
//! batch, commits the batch's persists and deletes in one transaction, and only then answers
//! each persist; a load or a shutdown ends a batch, so it sees every write queued before it
//! committed; a shutdown closes the queue and answers what was queued after it `Failed`, so no
//! write is ever left unanswered.
//!
//! Owns batch composition, the order commit → answer, and the shutdown drain. It must never
//! touch storage itself (the [`Store`] does), never answer a persist `Committed` unless the
//! [`Store::commit`] holding it returned `Ok`, and never drop a request it took off the queue.
//! It is synchronous because the ledger runs on its own OS thread (blocking storage calls).

/// One entry of the ledger's queue.
pub enum Request<W, D, L, A> {
    /// A record to store; `W` carries its own reply.
    Persist(W),
    /// A record to remove; nobody waits for it.
    Delete(D),
    /// Read everything back; `L` carries the reply.
    Load(L),
    /// Answer everything queued before this, close the store, then tell `A`.
    Shutdown(A),
}

/// What a persist is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The transaction holding it committed (and synced).
    Committed,
    /// It is not stored: the transaction failed, the store could not be reopened, the record
    /// can never be stored (`retryable: false`), or the ledger was shut down.
    Failed { retryable: bool },
}

/// One operation of a batch, in arrival order (a delete after a persist of the same record
/// must stay after it).
pub enum Op<W, D> {
    Persist(W),
    Delete(D),
}

/// The ledger's request queue, as the ledger thread sees it.
pub trait Queue<R> {
    /// The next request, blocking until one comes; `None` once the queue is closed and empty,
    /// or every sender is gone and it is empty.
    fn recv(&mut self) -> Option<R>;
    /// The next request if one is queued now.
    fn try_recv(&mut self) -> Option<R>;
    /// Refuse new requests from now on (senders see the queue closed); queued ones stay.
    fn close(&mut self);
}

/// The storage a batch goes to, and where answers go.
pub trait Store {
    type Write;
    type Delete;
    type Load;
    type Shutdown;
    /// Makes the store usable for the next batch (e.g. reopens it after a failed commit);
    /// `Err(retryable)` fails the whole batch.
    fn ready(&mut self) -> Result<(), bool>;
    /// Whether the record can be stored at all; a refused write is answered
    /// `Failed { retryable: false }` and left out of the batch.
    fn admit(&mut self, write: &mut Self::Write) -> bool;
    /// Commits the batch as one transaction; `Err(retryable)` when nothing of it is stored.
    fn commit(&mut self, batch: &[Op<Self::Write, Self::Delete>]) -> Result<(), bool>;
    /// Delivers a persist's answer.
    fn answer(&mut self, write: Self::Write, outcome: Outcome);
    /// Answers a load from storage.
    fn load(&mut self, load: Self::Load);
    /// Answers a load that cannot be served (the store is unusable or shut down).
    fn refuse_load(&mut self, load: Self::Load);
    /// Releases the storage (closes the file); called once, before any shutdown is told.
    fn close(&mut self);
    /// Tells whoever asked for a shutdown that it is done.
    fn ack(&mut self, shutdown: Self::Shutdown);
}

type RequestOf<S> =
    Request<<S as Store>::Write, <S as Store>::Delete, <S as Store>::Load, <S as Store>::Shutdown>;

/// The ledger thread: runs until every sender is gone or a shutdown was served.
pub fn run<S, Q>(queue: &mut Q, max_batch: usize, store: &mut S)
where
    S: Store,
    Q: Queue<RequestOf<S>>,
{
    let max_batch = max_batch.max(1);
    while let Some(first) = queue.recv() {
        let mut batch = Vec::new();
        let mut tail = None;
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(r) = next.take() {
            taken += 1;
            match r {
                Request::Persist(w) => batch.push(Op::Persist(w)),
                Request::Delete(d) => batch.push(Op::Delete(d)),
                stop => {
                    tail = Some(stop);
                    break;
                }
            }
            if taken < max_batch {
                next = queue.try_recv();
            }
        }
        if let Err(retryable) = store.ready() {
            fail(store, batch, retryable);
            match tail {
                Some(Request::Load(l)) => store.refuse_load(l),
                Some(Request::Shutdown(a)) => return shut_down(queue, store, a),
                _ => {}
            }
            continue;
        }
        let mut admitted = Vec::with_capacity(batch.len());
        for op in batch {
            match op {
                Op::Persist(mut w) => {
                    if store.admit(&mut w) {
                        admitted.push(Op::Persist(w));
                    } else {
                        store.answer(w, Outcome::Failed { retryable: false });
                    }
                }
                delete => admitted.push(delete),
            }
        }
        if !admitted.is_empty() {
            match store.commit(&admitted) {
                Ok(()) => {
                    for op in admitted {
                        if let Op::Persist(w) = op {
                            store.answer(w, Outcome::Committed);
                        }
                    }
                }
                Err(retryable) => fail(store, admitted, retryable),
            }
        }
        match tail {
            Some(Request::Load(l)) => store.load(l),
            Some(Request::Shutdown(a)) => return shut_down(queue, store, a),
            _ => {}
        }
    }
}

fn fail<S: Store>(store: &mut S, batch: Vec<Op<S::Write, S::Delete>>, retryable: bool) {
    for op in batch {
        if let Op::Persist(w) = op {
            store.answer(w, Outcome::Failed { retryable });
        }
    }
}

/// Closes the queue and the store, answers whatever was queued after the shutdown (a write
/// queued there would otherwise be dropped with the queue, its waiter never told), then
/// acknowledges every shutdown.
fn shut_down<S, Q>(queue: &mut Q, store: &mut S, first: S::Shutdown)
where
    S: Store,
    Q: Queue<RequestOf<S>>,
{
    queue.close();
    store.close();
    let mut acks = vec![first];
    while let Some(r) = queue.recv() {
        match r {
            Request::Persist(w) => store.answer(w, Outcome::Failed { retryable: true }),
            Request::Delete(_) => {}
            Request::Load(l) => store.refuse_load(l),
            Request::Shutdown(a) => acks.push(a),
        }
    }
    for a in acks {
        store.ack(a);
    }
}
