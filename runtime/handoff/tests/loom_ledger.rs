//! Loom models of the agent ledger thread's protocol ([`echo_handoff::ledger_batches::run`], the
//! code `runtime/src/ledger` runs on its OS thread in production): every persist is answered
//! exactly once — by the ledger thread, or by its submitter when the queue was already
//! closed —, never `Committed` unless the commit holding it returned `Ok`, always `Failed`
//! when it did not; a load and a shutdown are served only after every write queued before
//! them was answered; a close leaves no write unanswered and no thread blocked (loom reports
//! a thread left waiting as a deadlock).
//!
//! Run with `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test -p echo-handoff --test loom_ledger --release`.
#![cfg(loom)]

use std::collections::VecDeque;

use echo_handoff::ledger_batches::{run, Op, Outcome, Queue, Request, Store};
use loom::sync::{Arc, Condvar, Mutex};

/// A shutdown: the writes its caller queued before it, and where the caller waits.
type Shutdown = (Vec<usize>, Arc<Ack>);
/// persist id, delete id, load (writes its caller queued before it), shutdown.
type Req = Request<usize, usize, Vec<usize>, Shutdown>;

/// What happened to each write, checked as it happens and at the end.
#[derive(Default)]
struct Ledger {
    answers: Vec<Vec<Outcome>>,
    /// The result of the one commit that held the write.
    committed: Vec<Option<Result<(), bool>>>,
    loads: u32,
    closed: bool,
}

struct Book(Mutex<Ledger>);

impl Book {
    fn new(writes: usize) -> Arc<Book> {
        Arc::new(Book(Mutex::new(Ledger {
            answers: vec![Vec::new(); writes],
            committed: vec![None; writes],
            ..Ledger::default()
        })))
    }

    fn answer(&self, id: usize, outcome: Outcome) {
        let mut l = self.0.lock().unwrap();
        if outcome == Outcome::Committed {
            assert_eq!(
                l.committed[id],
                Some(Ok(())),
                "write {id} answered Committed before its commit succeeded"
            );
        }
        l.answers[id].push(outcome);
    }

    /// Each write answered exactly once, consistently with its commit.
    fn check(&self) {
        let l = self.0.lock().unwrap();
        for (id, answers) in l.answers.iter().enumerate() {
            assert_eq!(answers.len(), 1, "write {id} answered {answers:?}");
            match l.committed[id] {
                Some(Ok(())) => assert_eq!(answers[0], Outcome::Committed, "write {id}"),
                _ => assert!(
                    matches!(answers[0], Outcome::Failed { .. }),
                    "write {id} answered {answers:?} without a successful commit"
                ),
            }
        }
    }

    fn assert_answered(&self, before: &[usize], what: &str) {
        let l = self.0.lock().unwrap();
        for id in before {
            assert!(
                !l.answers[*id].is_empty(),
                "{what} served before write {id} queued ahead of it was answered"
            );
        }
    }
}

/// Where a closer waits for its acknowledgement (`Ledger::close` awaiting its oneshot).
#[derive(Default)]
struct Ack {
    done: Mutex<bool>,
    cv: Condvar,
}

impl Ack {
    fn wait(&self) {
        let mut d = self.done.lock().unwrap();
        while !*d {
            d = self.cv.wait(d).unwrap();
        }
    }
}

/// The unbounded queue as tokio's `mpsc` behaves for the ledger: senders may be cloned; the
/// receiver sees `None` once it closed it or every sender is gone, and it is empty.
struct Chan {
    items: VecDeque<Req>,
    closed: bool,
    senders: usize,
}

struct Shared {
    chan: Mutex<Chan>,
    ready: Condvar,
}

struct Sender(Arc<Shared>);
struct Receiver(Arc<Shared>);

fn channel() -> (Sender, Receiver) {
    let s = Arc::new(Shared {
        chan: Mutex::new(Chan {
            items: VecDeque::new(),
            closed: false,
            senders: 1,
        }),
        ready: Condvar::new(),
    });
    (Sender(s.clone()), Receiver(s))
}

impl Clone for Sender {
    fn clone(&self) -> Sender {
        self.0.chan.lock().unwrap().senders += 1;
        Sender(self.0.clone())
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.0.chan.lock().unwrap().senders -= 1;
        self.0.ready.notify_all();
    }
}

impl Sender {
    fn send(&self, r: Req) -> Result<(), Req> {
        let mut c = self.0.chan.lock().unwrap();
        if c.closed {
            return Err(r);
        }
        c.items.push_back(r);
        self.0.ready.notify_all();
        Ok(())
    }

    /// `Ledger::submit`: queue it, or answer it `Failed` at once.
    fn submit(&self, id: usize, book: &Book) {
        if self.send(Request::Persist(id)).is_err() {
            book.answer(id, Outcome::Failed { retryable: true });
        }
    }

    /// `Ledger::close`: returns once the shutdown is acknowledged (or the queue was closed).
    fn close(&self, before: Vec<usize>, book: &Book) {
        let ack = Arc::new(Ack::default());
        if self
            .send(Request::Shutdown((before.clone(), ack.clone())))
            .is_ok()
        {
            ack.wait();
            book.assert_answered(&before, "close");
        }
    }
}

impl Queue<Req> for Receiver {
    fn recv(&mut self) -> Option<Req> {
        let mut c = self.0.chan.lock().unwrap();
        loop {
            if let Some(r) = c.items.pop_front() {
                return Some(r);
            }
            if c.closed || c.senders == 0 {
                return None;
            }
            c = self.0.ready.wait(c).unwrap();
        }
    }
    fn try_recv(&mut self) -> Option<Req> {
        self.0.chan.lock().unwrap().items.pop_front()
    }
    fn close(&mut self) {
        self.0.chan.lock().unwrap().closed = true;
    }
}

/// Storage whose commits succeed or fail as scripted, recording each write's commit.
struct Scripted {
    book: Arc<Book>,
    /// Results of the next commits, in order; `Ok` once empty.
    commits: VecDeque<Result<(), bool>>,
    /// Results of the next reopens after a retryable failure; `Ok` once empty.
    reopens: VecDeque<Result<(), bool>>,
    needs_reopen: bool,
    /// Writes that can never be stored.
    unstorable: Vec<usize>,
}

impl Scripted {
    fn new(book: &Arc<Book>) -> Scripted {
        Scripted {
            book: book.clone(),
            commits: VecDeque::new(),
            reopens: VecDeque::new(),
            needs_reopen: false,
            unstorable: Vec::new(),
        }
    }
}

impl Store for Scripted {
    type Write = usize;
    type Delete = usize;
    type Load = Vec<usize>;
    type Shutdown = Shutdown;

    fn ready(&mut self) -> Result<(), bool> {
        assert!(!self.book.0.lock().unwrap().closed, "batch after close");
        if !self.needs_reopen {
            return Ok(());
        }
        let r = self.reopens.pop_front().unwrap_or(Ok(()));
        self.needs_reopen = r.is_err();
        r
    }
    fn admit(&mut self, write: &mut usize) -> bool {
        !self.unstorable.contains(write)
    }
    fn commit(&mut self, batch: &[Op<usize, usize>]) -> Result<(), bool> {
        let r = self.commits.pop_front().unwrap_or(Ok(()));
        self.needs_reopen = r == Err(true);
        let mut l = self.book.0.lock().unwrap();
        assert!(!l.closed, "commit after close");
        for op in batch {
            if let Op::Persist(id) = op {
                assert!(l.committed[*id].is_none(), "write {id} committed twice");
                l.committed[*id] = Some(r);
            }
        }
        r
    }
    fn answer(&mut self, write: usize, outcome: Outcome) {
        self.book.answer(write, outcome);
    }
    fn load(&mut self, before: Vec<usize>) {
        self.book.assert_answered(&before, "load");
        self.book.0.lock().unwrap().loads += 1;
    }
    fn refuse_load(&mut self, _: Vec<usize>) {
        self.book.0.lock().unwrap().loads += 1;
    }
    fn close(&mut self) {
        self.book.0.lock().unwrap().closed = true;
    }
    fn ack(&mut self, (before, ack): Shutdown) {
        assert!(
            self.book.0.lock().unwrap().closed,
            "shutdown acknowledged before close"
        );
        self.book.assert_answered(&before, "shutdown");
        *ack.done.lock().unwrap() = true;
        ack.cv.notify_all();
    }
}

fn ledger_thread(mut rx: Receiver, mut store: Scripted) -> loom::thread::JoinHandle<()> {
    loom::thread::spawn(move || run(&mut rx, 2, &mut store))
}

/// The second submitting thread, with its own sender (dropped when it ends).
fn client(
    tx: &Sender,
    book: &Arc<Book>,
    work: impl FnOnce(&Sender, &Book) + 'static,
) -> loom::thread::JoinHandle<()> {
    let (tx, book) = (tx.clone(), book.clone());
    loom::thread::spawn(move || work(&tx, &book))
}

/// A client submits two writes while the main thread submits one and closes: a write queued
/// after the shutdown must still be answered (`Failed`), the close must return, the ledger
/// thread must stop.
#[test]
fn close_racing_submits_leaves_no_write_unanswered() {
    loom::model(|| {
        let book = Book::new(3);
        let (tx, rx) = channel();
        let ledger = ledger_thread(rx, Scripted::new(&book));
        let client = client(&tx, &book, |tx, book| {
            tx.submit(0, book);
            tx.submit(1, book);
        });
        tx.submit(2, &book);
        tx.close(vec![2], &book);
        client.join().unwrap();
        ledger.join().unwrap();
        book.check();
    });
}

/// The first commit fails (retryably) and the reopen after it fails once too; a load and a
/// delete ride along. Every write of a failed commit is answered `Failed`, never `Committed`;
/// the load sees the writes queued before it answered.
#[test]
fn failed_commit_answers_each_of_its_writes_failed() {
    loom::model(|| {
        let book = Book::new(3);
        let (tx, rx) = channel();
        let mut store = Scripted::new(&book);
        store.commits = VecDeque::from([Err(true)]);
        store.reopens = VecDeque::from([Err(true)]);
        let ledger = ledger_thread(rx, store);
        let client = client(&tx, &book, |tx, book| {
            tx.submit(0, book);
            let _ = tx.send(Request::Delete(0));
            tx.submit(1, book);
        });
        tx.submit(2, &book);
        assert!(tx.send(Request::Load(vec![2])).is_ok());
        client.join().unwrap();
        drop(tx);
        ledger.join().unwrap();
        book.check();
        assert_eq!(book.0.lock().unwrap().loads, 1);
    });
}

/// A write that can never be stored is answered `Failed` on its own; the others of its batch
/// commit. Every handle dropped (no close) stops the thread after answering everything.
#[test]
fn refused_write_fails_alone_and_dropping_every_handle_stops_the_thread() {
    loom::model(|| {
        let book = Book::new(3);
        let (tx, rx) = channel();
        let mut store = Scripted::new(&book);
        store.unstorable = vec![1];
        let ledger = ledger_thread(rx, store);
        let client = client(&tx, &book, |tx, book| {
            tx.submit(0, book);
            tx.submit(1, book);
        });
        tx.submit(2, &book);
        drop(tx);
        client.join().unwrap();
        ledger.join().unwrap();
        book.check();
        let l = book.0.lock().unwrap();
        assert_eq!(l.answers[1], vec![Outcome::Failed { retryable: false }]);
        assert_eq!(l.answers[0], vec![Outcome::Committed]);
        assert_eq!(l.answers[2], vec![Outcome::Committed]);
    });
}
