//! Between the client library and the runner.
//!
//! grammers drops updates once its own 100-entry channel is full, which
//! happens whenever nobody reads it: so one task reads every update the
//! moment it arrives, sorts it, and queues it here for the runner, which
//! may be busy with a command for a while. Only a command from an operator
//! takes a place in the queue; everything else (a stranger's message, a
//! group, our own echoes, a non-message update) is *state only*: the
//! runner just commits its update state, and consecutive state-only
//! updates of one message box fold into one. A stranger flood therefore
//! costs no etcd write, no Vault call and no queue space, and never pushes
//! an operator's command out of grammers' channel (an adversarial test
//! lost 1,777 of 6,000 updates that way, an operator's `/kv put` among
//! them). Strangers are counted for one audit summary a minute instead.
//!
//! **When an update's state may be committed.** A `getDifference` batch
//! hands its messages over with the batch's *final* state (Telegram does
//! not say where each message was), after its other updates with their
//! own: committing any of them before the whole batch is handled moves the
//! stored state past messages still waiting, and a stop then loses them.
//! grammers buffers a batch and hands it out at once; so the reader marks
//! an update *settled* when, right after it, the stream has nothing more
//! at once (the next read would wait for the network): everything up to
//! it has been read. The runner commits only settled positions
//! ([`IntakeRx::settled`]).

use std::collections::{BTreeSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::chat::ChatError;
use super::grammers::UpdateMark;
use super::route::Incoming;

/// An update's own state, persisted only after the runner finished with
/// it (so a failover neither skips nor refetches).
pub(crate) enum Mark {
    Grammers(UpdateMark),
    /// An inbox position (the stand-in's line after the update).
    #[cfg_attr(not(feature = "telegram-standin"), allow(dead_code))]
    Position(usize),
}

impl Mark {
    /// Folds the state of a `later` update into this one when it belongs
    /// to the same message box (committing the later state alone says all
    /// that committing both would), or gives it back.
    pub(crate) fn absorb(&mut self, later: Mark) -> Result<(), Mark> {
        match (self, later) {
            (Mark::Position(a), Mark::Position(b)) => {
                *a = (*a).max(b);
                Ok(())
            }
            (Mark::Grammers(a), Mark::Grammers(b)) => a.absorb(b).map_err(Mark::Grammers),
            (_, later) => Err(later),
        }
    }
}

/// One update as the client library hands it over: a new message, or
/// anything else (`msg: None`), with its state.
pub(crate) struct Delivery {
    pub msg: Option<Incoming>,
    pub mark: Mark,
}

/// An update stream (grammers' `UpdateStream`, or the stand-in's).
pub(crate) trait Source: Send + 'static {
    fn next(&mut self) -> impl Future<Output = Result<Delivery, ChatError>> + Send;
}

/// Operator commands waiting for the runner, at most; past this the
/// reader waits (state-only updates never take a place).
pub const INTAKE_CAPACITY: usize = 4096;

/// Distinct stranger ids remembered between two summaries (the count of
/// messages is exact; the count of senders saturates here).
const MAX_SENDERS: usize = 1000;

/// What the intake does with one new message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sort {
    /// A command from an operator: the runner claims and runs it.
    Forward,
    /// Not for us: only its update state moves on. `stranger`: a private
    /// message from someone who is not an operator (counted).
    Drop { stranger: Option<i64> },
}

/// Strangers' messages dropped since the last summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StrangerSummary {
    pub messages: u64,
    /// Distinct senders (saturating at 1000).
    pub senders: usize,
    /// One of them, for the audit record.
    pub example: i64,
}

/// Settled positions remembered for the runner (it asks about the one it
/// just handled, so only the newest few matter).
const SETTLED_KEPT: usize = 1024;

#[derive(Default)]
struct Queue {
    /// `(position, delivery)`: positions count every update read.
    items: VecDeque<(u64, Delivery)>,
    /// The last position pushed.
    last: u64,
    /// Positions after which the stream had nothing more at once.
    settled: VecDeque<u64>,
    /// How many of `items` carry a message (the bounded part).
    commands: usize,
    closed: bool,
    strangers: u64,
    senders: BTreeSet<i64>,
}

#[derive(Default)]
struct Shared {
    q: Mutex<Queue>,
    /// Something was queued, or the reader stopped.
    readable: Notify,
    /// The runner took a command.
    writable: Notify,
}

impl Shared {
    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.q.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn close(&self) {
        self.queue().closed = true;
        self.readable.notify_one();
    }
}

/// The runner's end.
pub(crate) struct IntakeRx(Arc<Shared>);

impl IntakeRx {
    /// The next update with its position, in arrival order; `None` once
    /// the reader stopped and everything was taken. Cancel-safe: an update
    /// is only taken by a call that returns it.
    pub async fn recv(&mut self) -> Option<(u64, Delivery)> {
        loop {
            let readable = self.0.readable.notified();
            tokio::pin!(readable);
            readable.as_mut().enable();
            {
                let mut q = self.0.queue();
                if let Some((n, d)) = q.items.pop_front() {
                    if d.msg.is_some() {
                        q.commands -= 1;
                        drop(q);
                        self.0.writable.notify_one();
                    }
                    return Some((n, d));
                }
                if q.closed {
                    return None;
                }
            }
            readable.await;
        }
    }

    /// Whether position `n` is settled: everything up to it has been
    /// read, so once it is handled its state may be committed.
    pub fn settled(&self, n: u64) -> bool {
        let mut q = self.0.queue();
        while q.settled.front().is_some_and(|&s| s < n) {
            q.settled.pop_front();
        }
        q.settled.front() == Some(&n)
    }

    /// Strangers' messages dropped since the last call, if any.
    pub fn take_strangers(&self) -> Option<StrangerSummary> {
        let mut q = self.0.queue();
        if q.strangers == 0 {
            return None;
        }
        let s = StrangerSummary {
            messages: std::mem::take(&mut q.strangers),
            senders: q.senders.len(),
            example: q.senders.first().copied().unwrap_or(0),
        };
        q.senders.clear();
        Some(s)
    }

    /// Updates waiting (commands and state-only entries).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.queue().items.len()
    }
}

/// A new intake: the reader's end (for [`read`]) and the runner's.
pub(crate) fn channel() -> (Intake, IntakeRx) {
    let shared = Arc::new(Shared::default());
    (Intake(shared.clone()), IntakeRx(shared))
}

/// The reader's end.
pub(crate) struct Intake(Arc<Shared>);

impl Drop for Intake {
    fn drop(&mut self) {
        self.0.close();
    }
}

impl Intake {
    /// Queues one update. State-only updates fold into a state-only entry
    /// at the back when they belong to the same message box (committing
    /// the later state alone says all that committing both would).
    fn push(&self, d: Delivery, sort: Sort) {
        let mut q = self.0.queue();
        q.last += 1;
        let n = q.last;
        if sort == Sort::Forward {
            q.items.push_back((n, d));
            q.commands += 1;
        } else {
            if let Sort::Drop { stranger: Some(id) } = sort {
                q.strangers += 1;
                if q.senders.len() < MAX_SENDERS {
                    q.senders.insert(id);
                }
            }
            let mark = d.mark;
            let rest = match q.items.back_mut() {
                Some((at, back)) if back.msg.is_none() => match back.mark.absorb(mark) {
                    Ok(()) => {
                        // The folded entry now stands at the later position.
                        *at = n;
                        None
                    }
                    Err(mark) => Some(mark),
                },
                _ => Some(mark),
            };
            if let Some(mark) = rest {
                q.items.push_back((n, Delivery { msg: None, mark }));
            }
        }
        drop(q);
        self.0.readable.notify_one();
    }

    /// The stream has nothing more at once: the last position pushed is
    /// settled.
    fn settle(&self) {
        let mut q = self.0.queue();
        let n = q.last;
        if n > 0 && q.settled.back() != Some(&n) {
            if q.settled.len() >= SETTLED_KEPT {
                q.settled.pop_front();
            }
            q.settled.push_back(n);
        }
    }

    /// Waits while the queue holds [`INTAKE_CAPACITY`] commands; `false`
    /// when `stop` fired meanwhile.
    async fn room(&self, stop: &CancellationToken) -> bool {
        loop {
            let writable = self.0.writable.notified();
            tokio::pin!(writable);
            writable.as_mut().enable();
            if self.0.queue().commands < INTAKE_CAPACITY {
                return true;
            }
            tokio::select! {
                biased;
                _ = stop.cancelled() => return false,
                _ = writable => {}
            }
        }
    }
}

/// Reads `source` until `stop` (or its end), sorting each new message with
/// `sort`. The read itself is raced only against `stop` (grammers' update
/// stream is not cancel-safe: a read cut short can lose what it fetched),
/// and nothing else is ever awaited between two reads but room for one
/// more command.
pub(crate) async fn read<S: Source>(
    mut source: S,
    intake: Intake,
    stop: CancellationToken,
    sort: impl Fn(&Incoming) -> Sort + Send + 'static,
) {
    loop {
        if stop.is_cancelled() || !intake.room(&stop).await {
            return;
        }
        let next = source.next();
        tokio::pin!(next);
        // One poll first: a batch is handed out at once, so a read that
        // must wait means everything received so far has been read.
        let ready = std::future::poll_fn(|cx| std::task::Poll::Ready(next.as_mut().poll(cx))).await;
        let d = match ready {
            std::task::Poll::Ready(d) => d,
            std::task::Poll::Pending => {
                intake.settle();
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => return,
                    d = &mut next => d,
                }
            }
        };
        let d = match d {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "telegram: update stream failed");
                return;
            }
        };
        let sorted = d.msg.as_ref().map_or(Sort::Drop { stranger: None }, &sort);
        intake.push(d, sorted);
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::time::Duration;

    use zeroize::Zeroizing;

    use super::super::chat::ChatError;
    use super::Mark;
    use super::*;

    /// A source that always has another update at once, like a busy
    /// account (`stranger_every`: every n-th is a stranger's message, the
    /// rest state only; `command_at`: these positions are commands).
    struct Flood {
        n: usize,
        end: usize,
        commands: Vec<usize>,
    }

    fn message(id: usize, sender: i64) -> Incoming {
        Incoming {
            id: id as i32,
            chat: sender,
            sender: Some(sender),
            private: true,
            channel: false,
            outgoing: false,
            reply_to: None,
            text: Zeroizing::new(if sender == 1 { "/whoami" } else { "hi" }.into()),
            date: 0,
            origin: super::super::route::Origin::Typed,
        }
    }

    impl Source for Flood {
        fn next(&mut self) -> impl Future<Output = Result<Delivery, ChatError>> + Send {
            self.n += 1;
            let n = self.n;
            let done = n > self.end;
            let msg = if self.commands.contains(&n) {
                Some(message(n, 1))
            } else {
                Some(message(n, 1000 + (n % 7) as i64))
            };
            async move {
                if done {
                    std::future::pending::<()>().await;
                }
                Ok(Delivery {
                    msg,
                    mark: Mark::Position(n),
                })
            }
        }
    }

    fn sort(m: &Incoming) -> Sort {
        if m.sender == Some(1) {
            Sort::Forward
        } else {
            Sort::Drop { stranger: m.sender }
        }
    }

    /// 20,000 strangers' messages while the runner reads nothing: the
    /// reader takes every update at once (none would be left for grammers
    /// to drop), the three commands wait in order, and the strangers'
    /// updates fold into one state entry between them.
    #[tokio::test]
    async fn a_stranger_flood_never_waits_for_the_runner() {
        let (tx, mut rx) = channel();
        let stop = CancellationToken::new();
        let h = tokio::spawn(read(
            Flood {
                n: 0,
                end: 20_000,
                commands: vec![5, 10_000, 19_999],
            },
            tx,
            stop.clone(),
            sort,
        ));
        let t = std::time::Instant::now();
        loop {
            if rx.0.queue().strangers == 20_000 - 3 {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(10), "the reader stalled");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // mark 1-4, cmd 5, marks 6-9999, cmd 10000, marks, cmd 19999, mark 20000
        assert_eq!(rx.len(), 7);
        let mut got = Vec::new();
        while rx.len() > 0 {
            let (_, d) = rx.recv().await.unwrap();
            let Mark::Position(n) = d.mark else { panic!() };
            got.push((d.msg.is_some(), n));
        }
        assert_eq!(
            got,
            [
                (false, 4),
                (true, 5),
                (false, 9_999),
                (true, 10_000),
                (false, 19_998),
                (true, 19_999),
                (false, 20_000)
            ]
        );
        let s = rx.take_strangers().unwrap();
        assert_eq!((s.messages, s.senders), (20_000 - 3, 7));
        assert!(rx.take_strangers().is_none());
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(2), h)
            .await
            .unwrap()
            .unwrap();
        assert!(rx.recv().await.is_none(), "closed after the reader stopped");
    }

    /// A source that hands out batches (as grammers does a difference):
    /// every update of a batch at once, then nothing until the next.
    struct Batches(
        std::collections::VecDeque<Vec<usize>>,
        std::collections::VecDeque<usize>,
    );

    impl Source for Batches {
        fn next(&mut self) -> impl Future<Output = Result<Delivery, ChatError>> + Send {
            if self.1.is_empty() {
                if let Some(b) = self.0.pop_front() {
                    self.1.extend(b);
                }
            }
            let next = self.1.pop_front();
            async move {
                match next {
                    Some(mark) => Ok(Delivery {
                        msg: Some(message(mark, 1)),
                        mark: Mark::Position(mark),
                    }),
                    // Waits for the network (a fresh batch never comes).
                    None => std::future::pending().await,
                }
            }
        }
    }

    /// A catch-up batch of three commands, all carrying the batch's final
    /// state (40): only the last is settled, so no state is committed past
    /// a command still waiting (issue 29: a stop mid-batch lost the rest).
    #[tokio::test]
    async fn only_the_end_of_a_batch_is_settled() {
        let (tx, mut rx) = channel();
        let stop = CancellationToken::new();
        let h = tokio::spawn(read(
            Batches(vec![vec![40, 40, 40]].into(), Default::default()),
            tx,
            stop.clone(),
            sort,
        ));
        let mut seen = Vec::new();
        for _ in 0..3 {
            let (n, _) = rx.recv().await.unwrap();
            // Give the reader its chance to settle what it read.
            tokio::time::sleep(Duration::from_millis(20)).await;
            seen.push(rx.settled(n));
        }
        assert_eq!(seen, [false, false, true]);
        stop.cancel();
        h.await.unwrap();
    }

    /// Commands fill the queue and the runner reads nothing: stopping the
    /// reader still ends it (the hang of a shutdown or a fence while
    /// updates keep arriving).
    #[tokio::test]
    async fn the_reader_stops_while_the_queue_is_full_and_unread() {
        let (tx, rx) = channel();
        let stop = CancellationToken::new();
        let h = tokio::spawn(read(
            Flood {
                n: 0,
                end: usize::MAX,
                commands: (1..=INTAKE_CAPACITY + 10).collect(),
            },
            tx,
            stop.clone(),
            sort,
        ));
        let t = std::time::Instant::now();
        while rx.len() < INTAKE_CAPACITY {
            assert!(t.elapsed() < Duration::from_secs(10), "queue not filled");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(rx.len(), INTAKE_CAPACITY, "bounded for commands");
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(2), h)
            .await
            .expect("the reader did not stop within 2 s")
            .unwrap();
        drop(rx);
    }
}
