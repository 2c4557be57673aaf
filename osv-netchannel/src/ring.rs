//! The net channel itself: a fixed-capacity, lock-free single-producer
//! single-consumer ring with a sleep/wake handshake (OSv's `net_channel`).
//!
//! # Indices
//!
//! `head` is the next slot the consumer reads and `tail` the next slot the
//! producer writes. Both run freely (wrapping `usize`) and are reduced modulo
//! `N` (a power of two) only to index the buffer, so `tail - head` is the
//! number of items and no slot is wasted to tell "full" from "empty".
//! Each index is written by one side only and sits on its own cache line; each
//! handle keeps a private copy of the *other* side's index and re-reads the
//! shared one only when its copy says full (producer) or empty (consumer).
//!
//! * The producer writes a slot, then publishes it with `tail.store(Release)`;
//!   the consumer's `tail.load(Acquire)` makes the slot's contents visible.
//! * The consumer moves an item out, then frees its slot with
//!   `head.store(Release)`; the producer's `head.load(Acquire)` orders that
//!   read before it overwrites the slot.
//!
//! # Sleep/wake protocol (no lost wakeup)
//!
//! One flag, `parked`, says "the consumer has announced it is about to sleep".
//! Every access to it is a read-modify-write (`swap`, `AcqRel`), so all of them
//! fall into one total modification order and each reads the one before it.
//!
//! * Consumer ([`Consumer::prepare_park`]): `parked.swap(true)`, then re-check
//!   the ring. Non-empty: `parked.swap(false)` and go on consuming
//!   ([`Park::Retry`]). Empty: sleep ([`Park::Sleep`]).
//! * Producer ([`Producer::notify`]): after pushing, `parked.swap(false)`; if it
//!   read `true`, the consumer may be asleep and must be woken ([`Notify::Wake`]).
//!
//! Why nothing is lost: take a push and the consumer's announcement. If the
//! producer's swap comes after the announcement in `parked`'s order, it reads
//! `true` (or a later cancellation, in which case the consumer is awake) and
//! wakes the consumer. If it comes before, the announcement reads from it (or
//! from a later RMW in its release sequence), so the push happens-before the
//! consumer's re-check, which therefore sees the item and does not sleep.
//! A plain `load` on either side would break this (the classic store-buffer
//! race); `tests/loom_ring.rs` checks the protocol as written.
//!
//! The sleep primitive itself belongs to the kernel and must be *sticky*: a
//! wake that arrives between [`Park::Sleep`] and actually blocking must make
//! the block return at once (a park token, a semaphore, OSv's
//! `wait_until`/`wake`). Spurious wakeups are harmless: the consumer drains the
//! ring and parks again.

// The ring is the one place in the crate that needs `unsafe`: uninitialised
// slots shared between two threads.
#![allow(unsafe_code)]

use core::fmt;
use core::mem::MaybeUninit;
use core::ops::Deref;
use core::ptr;

use crossbeam_utils::CachePadded;

use crate::sync::{AtomicBool, AtomicUsize, Ordering, UnsafeCell};

/// A lock-free single-producer single-consumer ring of capacity `N`.
///
/// `N` must be a power of two; anything else fails to compile:
///
/// ```compile_fail
/// let ring = osv_netchannel::NetChannel::<u8, 3>::new();
/// ```
///
/// Items are moved in through a [`Producer`] and out through a [`Consumer`],
/// obtained with [`split`](Self::split) (borrowed) or
/// [`new_shared`](Self::new_shared) (`Arc`, with the `alloc` feature). Only
/// one pair of handles exists at a time, which is what makes the ring SPSC.
/// Items still in the ring when it is dropped are dropped with it.
pub struct NetChannel<T, const N: usize> {
    /// Next slot to read; written by the consumer only.
    head: CachePadded<AtomicUsize>,
    /// Next slot to write; written by the producer only.
    tail: CachePadded<AtomicUsize>,
    /// The consumer announced it is going to sleep (see the module docs).
    parked: CachePadded<AtomicBool>,
    /// Slot `i % N` holds an initialised item iff `head <= i < tail`.
    buf: [UnsafeCell<MaybeUninit<T>>; N],
}

// SAFETY: the handles move `T`s between threads, hence `T: Send`. A shared
// `&NetChannel` only reads the atomic indices; the slots are touched through
// the unique `Producer` (slots outside `head..tail`) and the unique `Consumer`
// (slots inside `head..tail`), and the Release/Acquire pairs on the indices
// order every slot access of one side before the other side's.
unsafe impl<T: Send, const N: usize> Sync for NetChannel<T, N> {}

impl<T, const N: usize> NetChannel<T, N> {
    /// Compile-time check that `N` is a usable capacity.
    const CAPACITY_OK: () =
        assert!(N.is_power_of_two(), "NetChannel capacity N must be a non-zero power of two");
    const MASK: usize = N - 1;

    /// An empty ring.
    #[cfg(not(loom))]
    #[must_use]
    pub const fn new() -> Self {
        let () = Self::CAPACITY_OK;
        Self {
            head: CachePadded::new(AtomicUsize::new(0)),
            tail: CachePadded::new(AtomicUsize::new(0)),
            parked: CachePadded::new(AtomicBool::new(false)),
            buf: [const { UnsafeCell::new(MaybeUninit::uninit()) }; N],
        }
    }

    /// An empty ring (loom's cells are not `const`-constructible).
    #[cfg(loom)]
    #[must_use]
    pub fn new() -> Self {
        let () = Self::CAPACITY_OK;
        Self {
            head: CachePadded::new(AtomicUsize::new(0)),
            tail: CachePadded::new(AtomicUsize::new(0)),
            parked: CachePadded::new(AtomicBool::new(false)),
            buf: core::array::from_fn(|_| UnsafeCell::new(MaybeUninit::uninit())),
        }
    }

    /// The number of slots, `N`.
    #[must_use]
    pub const fn capacity(&self) -> usize {
        N
    }

    /// The number of items in the ring.
    ///
    /// Exact when neither side is running; otherwise a snapshot that may
    /// already be stale, but always within `0..=N`.
    #[must_use]
    pub fn len(&self) -> usize {
        // Head first: `tail` read afterwards is at least this `head`.
        let head = self.head.load(Ordering::Acquire);
        let tail = self.tail.load(Ordering::Acquire);
        tail.wrapping_sub(head).min(N)
    }

    /// Whether the ring holds no items (a snapshot, like [`len`](Self::len)).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Splits the ring into its two handles, borrowed for `'_`.
    ///
    /// The `&mut` borrow guarantees these are the only handles while they live.
    /// The producer may then move to the classifier's thread and the consumer
    /// to the socket's (e.g. with `std::thread::scope`).
    pub fn split(&mut self) -> (Producer<T, N, &Self>, Consumer<T, N, &Self>) {
        let this: &Self = self;
        (Producer::new(this), Consumer::new(this))
    }

    /// A new ring on the heap, already split into its two handles.
    #[cfg(any(feature = "alloc", loom))]
    #[must_use]
    pub fn new_shared() -> (SharedProducer<T, N>, SharedConsumer<T, N>) {
        let chan = crate::sync::Arc::new(Self::new());
        (Producer::new(crate::sync::Arc::clone(&chan)), Consumer::new(chan))
    }

    #[inline]
    fn slot(&self, index: usize) -> &UnsafeCell<MaybeUninit<T>> {
        &self.buf[index & Self::MASK]
    }
}

impl<T, const N: usize> Default for NetChannel<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T, const N: usize> fmt::Debug for NetChannel<T, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NetChannel").field("len", &self.len()).field("capacity", &N).finish_non_exhaustive()
    }
}

impl<T, const N: usize> Drop for NetChannel<T, N> {
    fn drop(&mut self) {
        let head = self.head.load(Ordering::Relaxed);
        let tail = self.tail.load(Ordering::Relaxed);
        let mut i = head;
        while i != tail {
            self.slot(i).with_mut(|p| {
                // SAFETY: `&mut self` means no handle is alive, and slots in
                // `head..tail` hold initialised items that nobody has moved out.
                unsafe { ptr::drop_in_place((*p).as_mut_ptr()) }
            });
            i = i.wrapping_add(1);
        }
    }
}

/// A `Producer` that owns its ring through an `Arc`.
#[cfg(any(feature = "alloc", loom))]
pub type SharedProducer<T, const N: usize> = Producer<T, N, crate::sync::Arc<NetChannel<T, N>>>;
/// A `Consumer` that owns its ring through an `Arc`.
#[cfg(any(feature = "alloc", loom))]
pub type SharedConsumer<T, const N: usize> = Consumer<T, N, crate::sync::Arc<NetChannel<T, N>>>;

/// [`Producer::push`] on a full ring: the item comes back.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Full<T>(pub T);

impl<T> Full<T> {
    /// The item that did not fit.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> fmt::Debug for Full<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Full(..)")
    }
}

impl<T> fmt::Display for Full<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("net channel is full")
    }
}

impl<T> core::error::Error for Full<T> {}

/// What the producer must do after [`Producer::notify`].
#[must_use = "if the consumer announced it is asleep, it must be woken"]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notify {
    /// The consumer announced it is going to sleep: wake its thread.
    Wake,
    /// The consumer is running and will see the new items by itself.
    Skip,
}

impl Notify {
    /// Whether the consumer must be woken.
    #[must_use]
    pub fn is_wake(self) -> bool {
        self == Self::Wake
    }
}

/// What the consumer must do after [`Consumer::prepare_park`].
#[must_use = "the consumer must either sleep or consume again"]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Park {
    /// The ring was empty after the announcement: block until woken.
    Sleep,
    /// An item arrived meanwhile: the announcement is withdrawn, consume again.
    Retry,
}

/// Wakes a sleeping consumer (OSv's `net_channel::wake`).
///
/// Implementations must be *sticky*: a `wake` that arrives after the consumer
/// got [`Park::Sleep`] but before it actually blocked must keep it from
/// blocking (a park token, a semaphore permit, a scheduler's "woken" state).
/// Closures implement it, so `&|| {}` is a valid waker for a polling consumer.
pub trait Wake {
    /// Makes the consumer's thread runnable.
    fn wake(&self);
}

impl<F: Fn() + ?Sized> Wake for F {
    fn wake(&self) {
        self()
    }
}

/// The producing end of a [`NetChannel`] (the classifier's side).
///
/// `R` is how the handle reaches the ring: `&NetChannel` from
/// [`NetChannel::split`] or an `Arc` from [`NetChannel::new_shared`].
pub struct Producer<T, const N: usize, R: Deref<Target = NetChannel<T, N>>> {
    chan: R,
    /// Our own `tail` (only we write it).
    tail: usize,
    /// The consumer's `head` as last seen; only ever behind the real one.
    head: usize,
}

impl<T, const N: usize, R: Deref<Target = NetChannel<T, N>>> Producer<T, N, R> {
    fn new(chan: R) -> Self {
        let tail = chan.tail.load(Ordering::Relaxed);
        let head = chan.head.load(Ordering::Acquire);
        Self { chan, tail, head }
    }

    /// Appends `item`, or gives it back in [`Full`] if the ring has no room.
    ///
    /// Never blocks and never wakes the consumer: call [`notify`](Self::notify)
    /// (or [`wake`](Self::wake)) after one or a batch of pushes.
    pub fn push(&mut self, item: T) -> Result<(), Full<T>> {
        if self.tail.wrapping_sub(self.head) == N {
            self.head = self.chan.head.load(Ordering::Acquire);
            if self.tail.wrapping_sub(self.head) == N {
                return Err(Full(item));
            }
        }
        self.chan.slot(self.tail).with_mut(|p| {
            // SAFETY: `tail - head < N`, so slot `tail` is outside `head..tail`:
            // the consumer does not touch it, and its previous item (if any)
            // was moved out before the `head` store our Acquire load saw.
            // Writing a `MaybeUninit` through the cell pointer is always valid.
            unsafe { p.write(MaybeUninit::new(item)) }
        });
        self.tail = self.tail.wrapping_add(1);
        self.chan.tail.store(self.tail, Ordering::Release);
        Ok(())
    }

    /// Tells the consumer about the pushes so far; see the [module
    /// docs](self) for the protocol. [`Notify::Wake`] means the caller must
    /// wake the consumer's thread.
    pub fn notify(&self) -> Notify {
        if self.chan.parked.swap(false, Ordering::AcqRel) {
            Notify::Wake
        } else {
            Notify::Skip
        }
    }

    /// [`notify`](Self::notify), then `waker.wake()` if needed. Returns
    /// whether it woke the consumer.
    pub fn wake<W: Wake + ?Sized>(&self, waker: &W) -> bool {
        let wake = self.notify().is_wake();
        if wake {
            waker.wake();
        }
        wake
    }

    /// Free slots right now (a lower bound: the consumer may free more).
    #[must_use]
    pub fn free(&self) -> usize {
        N - self.chan.len()
    }

    /// The ring this handle feeds.
    #[must_use]
    pub fn channel(&self) -> &NetChannel<T, N> {
        &self.chan
    }
}

impl<T, const N: usize, R: Deref<Target = NetChannel<T, N>>> fmt::Debug for Producer<T, N, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer").field("channel", &*self.chan).finish()
    }
}

/// The consuming end of a [`NetChannel`] (the socket's thread).
pub struct Consumer<T, const N: usize, R: Deref<Target = NetChannel<T, N>>> {
    chan: R,
    /// Our own `head` (only we write it).
    head: usize,
    /// The producer's `tail` as last seen; only ever behind the real one.
    tail: usize,
}

impl<T, const N: usize, R: Deref<Target = NetChannel<T, N>>> Consumer<T, N, R> {
    fn new(chan: R) -> Self {
        let head = chan.head.load(Ordering::Relaxed);
        let tail = chan.tail.load(Ordering::Acquire);
        Self { chan, head, tail }
    }

    /// Removes the oldest item, or `None` if the ring is empty. Never blocks.
    pub fn pop(&mut self) -> Option<T> {
        if self.head == self.tail {
            self.tail = self.chan.tail.load(Ordering::Acquire);
            if self.head == self.tail {
                return None;
            }
        }
        let item = self.chan.slot(self.head).with(|p| {
            // SAFETY: `head < tail` (as seen by an Acquire load of `tail`), so
            // the slot holds an item the producer initialised before its
            // Release store of `tail`, and the producer will not touch the
            // slot again until our `head` store below. We move the item out
            // exactly once: the slot leaves `head..tail` right after.
            unsafe { (*p).assume_init_read() }
        });
        self.head = self.head.wrapping_add(1);
        self.chan.head.store(self.head, Ordering::Release);
        Some(item)
    }

    /// Pops until the ring is empty (OSv's `process_queue`).
    pub fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        core::iter::from_fn(move || self.pop())
    }

    /// Announces that the consumer is going to sleep and re-checks the ring;
    /// see the [module docs](self) for the protocol.
    ///
    /// On [`Park::Sleep`] block on a sticky sleep primitive until the
    /// producer's [`Wake`]; on [`Park::Retry`] consume again.
    pub fn prepare_park(&mut self) -> Park {
        self.chan.parked.swap(true, Ordering::AcqRel);
        self.tail = self.chan.tail.load(Ordering::Acquire);
        if self.head == self.tail {
            Park::Sleep
        } else {
            self.cancel_park();
            Park::Retry
        }
    }

    /// Withdraws an announcement from [`prepare_park`](Self::prepare_park),
    /// e.g. when the consumer woke for another reason (a timeout). Saves the
    /// producer a needless wake.
    pub fn cancel_park(&self) {
        self.chan.parked.swap(false, Ordering::AcqRel);
    }

    /// Items ready to pop right now (a lower bound: the producer may add more).
    #[must_use]
    pub fn len(&self) -> usize {
        self.chan.len()
    }

    /// Whether nothing is ready to pop right now.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.chan.is_empty()
    }

    /// The ring this handle drains.
    #[must_use]
    pub fn channel(&self) -> &NetChannel<T, N> {
        &self.chan
    }
}

impl<T, const N: usize, R: Deref<Target = NetChannel<T, N>>> fmt::Debug for Consumer<T, N, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer").field("channel", &*self.chan).finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::cell::Cell;
    use std::collections::VecDeque;
    use std::rc::Rc;

    #[test]
    fn push_pop_fifo_and_full() {
        let mut ring = NetChannel::<u32, 4>::new();
        assert_eq!(ring.capacity(), 4);
        let (mut p, mut c) = ring.split();
        assert_eq!(c.pop(), None);
        for i in 0..4 {
            p.push(i).unwrap();
        }
        assert_eq!(p.push(9), Err(Full(9)));
        assert_eq!(p.free(), 0);
        assert_eq!(c.len(), 4);
        assert_eq!(c.pop(), Some(0));
        p.push(4).unwrap();
        assert_eq!(c.drain().collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert!(c.is_empty());
        assert!(ring.is_empty());
    }

    #[test]
    fn split_again_resumes_where_it_left() {
        let mut ring = NetChannel::<u8, 2>::new();
        {
            let (mut p, _c) = ring.split();
            p.push(1).unwrap();
        }
        let (mut p, mut c) = ring.split();
        p.push(2).unwrap();
        assert_eq!(p.push(3), Err(Full(3)));
        assert_eq!(c.pop(), Some(1));
        assert_eq!(c.pop(), Some(2));
        assert_eq!(c.pop(), None);
    }

    struct Counted(Rc<Cell<usize>>);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.set(self.0.get() + 1);
        }
    }

    #[test]
    fn drop_releases_items_left_in_ring() {
        let drops = Rc::new(Cell::new(0));
        let mut ring = NetChannel::<Counted, 4>::new();
        {
            let (mut p, mut c) = ring.split();
            for _ in 0..3 {
                p.push(Counted(drops.clone())).ok().unwrap();
            }
            drop(c.pop());
            assert_eq!(drops.get(), 1);
            // A rejected item comes back and is dropped by its owner, not the ring.
            for _ in 0..2 {
                p.push(Counted(drops.clone())).ok().unwrap();
            }
            let back = p.push(Counted(drops.clone())).unwrap_err().into_inner();
            drop(back);
            assert_eq!(drops.get(), 2);
        }
        drop(ring);
        assert_eq!(drops.get(), 6);
    }

    #[test]
    fn park_protocol_single_thread() {
        let mut ring = NetChannel::<u8, 2>::new();
        let (mut p, mut c) = ring.split();
        let woken = Cell::new(0);
        let waker = || woken.set(woken.get() + 1);
        // Nobody asleep: no wake.
        p.push(1).unwrap();
        assert!(!p.wake(&waker));
        // Non-empty ring: the consumer must not sleep.
        assert_eq!(c.prepare_park(), Park::Retry);
        assert_eq!(p.notify(), Notify::Skip);
        assert_eq!(c.pop(), Some(1));
        // Empty ring: sleep, and the next push wakes it exactly once.
        assert_eq!(c.prepare_park(), Park::Sleep);
        p.push(2).unwrap();
        assert!(p.wake(&waker));
        assert!(!p.wake(&waker));
        assert_eq!(woken.get(), 1);
        // A cancelled announcement saves the producer a wake.
        assert_eq!(c.pop(), Some(2));
        assert_eq!(c.prepare_park(), Park::Sleep);
        c.cancel_park();
        assert_eq!(p.notify(), Notify::Skip);
    }

    #[test]
    fn two_threads_move_everything_in_order() {
        const ITEMS: u32 = 100_000;
        let mut ring = NetChannel::<u32, 64>::new();
        let (mut p, mut c) = ring.split();
        std::thread::scope(|s| {
            s.spawn(move || {
                for i in 0..ITEMS {
                    let mut item = i;
                    while let Err(Full(back)) = p.push(item) {
                        item = back;
                        std::thread::yield_now();
                    }
                }
            });
            let mut next = 0;
            while next < ITEMS {
                match c.pop() {
                    Some(v) => {
                        assert_eq!(v, next);
                        next += 1;
                    }
                    None => std::thread::yield_now(),
                }
            }
        });
    }

    #[cfg(feature = "alloc")]
    #[test]
    fn shared_handles_wake_sleeping_consumer() {
        let (mut p, mut c) = NetChannel::<u32, 8>::new_shared();
        let consumer = std::thread::spawn(move || {
            let mut got = Vec::new();
            while got.len() < 1000 {
                got.extend(c.drain());
                if got.len() < 1000 && c.prepare_park() == Park::Sleep {
                    std::thread::park();
                }
            }
            got
        });
        let handle = consumer.thread().clone();
        let waker = move || handle.unpark();
        for i in 0..1000 {
            let mut item = i;
            while let Err(Full(back)) = p.push(item) {
                item = back;
                p.wake(&waker);
                std::thread::yield_now();
            }
            p.wake(&waker);
        }
        assert_eq!(consumer.join().unwrap(), (0..1000).collect::<Vec<_>>());
    }

    #[derive(Clone, Debug)]
    enum Op {
        Push(u16),
        Pop,
        Park,
        Notify,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => any::<u16>().prop_map(Op::Push),
            4 => Just(Op::Pop),
            1 => Just(Op::Park),
            1 => Just(Op::Notify),
        ]
    }

    proptest! {
        /// The ring behaves like a bounded `VecDeque`, and the park flag like
        /// a boolean the producer clears.
        #[test]
        fn ring_matches_vecdeque(ops in proptest::collection::vec(op(), 0..256)) {
            let mut ring = NetChannel::<u16, 8>::new();
            let (mut p, mut c) = ring.split();
            let mut model = VecDeque::new();
            let mut asleep = false;
            for op in ops {
                match op {
                    Op::Push(v) => {
                        let r = p.push(v);
                        if model.len() == 8 {
                            prop_assert_eq!(r, Err(Full(v)));
                        } else {
                            prop_assert_eq!(r, Ok(()));
                            model.push_back(v);
                        }
                    }
                    Op::Pop => prop_assert_eq!(c.pop(), model.pop_front()),
                    Op::Park => {
                        let want = if model.is_empty() { Park::Sleep } else { Park::Retry };
                        prop_assert_eq!(c.prepare_park(), want);
                        asleep = want == Park::Sleep;
                    }
                    Op::Notify => {
                        prop_assert_eq!(p.notify().is_wake(), asleep);
                        asleep = false;
                    }
                }
                prop_assert_eq!(c.len(), model.len());
                prop_assert_eq!(p.free(), 8 - model.len());
            }
        }
    }
}
