//! Group commit's queue protocol: writers share one request queue; each takes everything
//! queued (up to `max_batch`) as one batch, commits it, and repeats; a shutdown request closes
//! the queue, the writer that took it drains what was queued before it, then acknowledges it.
//!
//! Owns batch composition and the shutdown drain. It must never answer a write itself (the
//! `commit` callback answers every write of its batch, exactly once) and never drop a request
//! it took off the queue.

use std::future::Future;

/// One entry of the shared queue.
pub enum Request<W, A> {
    /// A write to commit; `W` carries its own reply.
    Write(W),
    /// Stop after answering everything queued before this; `A` is told when done.
    Shutdown(A),
}

/// Exclusive access to the shared queue: one writer at a time composes a batch.
pub trait QueueGuard<W, A> {
    /// The next request, waiting for one; `None` once the queue is closed and empty.
    fn recv(&mut self) -> impl Future<Output = Option<Request<W, A>>>;
    /// The next request if one is queued now.
    fn try_recv(&mut self) -> Option<Request<W, A>>;
    /// Refuse new requests from now on (senders see the queue closed); queued ones stay.
    fn close(&mut self);
}

/// The queue shared by every writer.
pub trait SharedQueue<W, A> {
    type Guard<'a>: QueueGuard<W, A>
    where
        Self: 'a;
    fn lock(&self) -> impl Future<Output = Self::Guard<'_>>;
}

/// Where a writer's batches go.
pub trait Committer<W, A> {
    /// Commit `batch` and answer every write in it, exactly once, whatever storage did.
    fn commit(&mut self, batch: Vec<W>) -> impl Future<Output = ()>;
    /// Tell whoever asked for the shutdown that it is done.
    fn ack(&mut self, shutdown: A);
}

/// One writer: runs until the queue is closed and drained, or it took a shutdown request.
pub async fn run_writer<W, A, Q, C>(queue: &Q, max_batch: usize, committer: &mut C)
where
    Q: SharedQueue<W, A>,
    C: Committer<W, A>,
{
    let max_batch = max_batch.max(1);
    loop {
        let mut batch = Vec::new();
        let mut shutdown = None;
        {
            let mut rx = queue.lock().await;
            match rx.recv().await {
                None => return,
                Some(Request::Shutdown(a)) => shutdown = Some(a),
                Some(Request::Write(w)) => batch.push(w),
            }
            while shutdown.is_none() && batch.len() < max_batch {
                match rx.try_recv() {
                    Some(Request::Write(w)) => batch.push(w),
                    Some(Request::Shutdown(a)) => shutdown = Some(a),
                    None => break,
                }
            }
            if shutdown.is_some() {
                // No new writes from now on; whatever is still queued is drained below.
                rx.close();
            }
        }
        if !batch.is_empty() {
            committer.commit(batch).await;
        }
        if let Some(a) = shutdown {
            loop {
                let next = queue.lock().await.recv().await;
                match next {
                    Some(Request::Write(w)) => committer.commit(vec![w]).await,
                    Some(Request::Shutdown(other)) => committer.ack(other),
                    None => break,
                }
            }
            committer.ack(a);
            return;
        }
    }
}
