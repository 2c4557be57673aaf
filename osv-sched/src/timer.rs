//! Per-CPU timer lists with absolute deadlines (OSv's `timer_list`): insert,
//! cancel by handle, pop expired, and the next deadline to arm the CPU's
//! one-shot timer with. Only the CPU that owns a list touches it; a timer
//! cancelled from another CPU goes through that CPU (a later step of #4).

use crate::time::Instant;
use alloc::collections::BTreeMap;

/// Identifies one armed timer of a [`TimerList`]; never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimerId {
    deadline: Instant,
    seq: u64,
}

impl TimerId {
    /// When the timer fires.
    pub const fn deadline(self) -> Instant {
        self.deadline
    }
}

/// A CPU's armed timers, each carrying a payload `T` (the thread to wake, a
/// callback index), ordered by deadline then arming order.
#[derive(Clone, Debug)]
pub struct TimerList<T> {
    map: BTreeMap<(Instant, u64), T>,
    seq: u64,
}

impl<T> Default for TimerList<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> TimerList<T> {
    /// No timers.
    pub const fn new() -> Self {
        TimerList { map: BTreeMap::new(), seq: 0 }
    }

    /// Arms a timer for `deadline`.
    pub fn insert(&mut self, deadline: Instant, payload: T) -> TimerId {
        let id = TimerId { deadline, seq: self.seq };
        self.seq += 1;
        self.map.insert((deadline, id.seq), payload);
        id
    }

    /// Disarms a timer; `None` if it already fired or was cancelled.
    pub fn cancel(&mut self, id: TimerId) -> Option<T> {
        self.map.remove(&(id.deadline, id.seq))
    }

    /// Takes the earliest timer whose deadline is at or before `now`.
    pub fn pop_expired(&mut self, now: Instant) -> Option<(TimerId, T)> {
        let entry = self.map.first_entry()?;
        if entry.key().0 > now {
            return None;
        }
        let ((deadline, seq), payload) = entry.remove_entry();
        Some((TimerId { deadline, seq }, payload))
    }

    /// The earliest deadline: what to arm the one-shot timer for.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.map.keys().next().map(|k| k.0)
    }

    /// Number of armed timers.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no timer is armed.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_in_order_and_cancels() {
        let mut t = TimerList::new();
        let a = t.insert(Instant(30), 'a');
        t.insert(Instant(10), 'b');
        t.insert(Instant(10), 'c');
        assert_eq!(t.next_deadline(), Some(Instant(10)));
        assert_eq!(t.cancel(a), Some('a'));
        assert_eq!(t.cancel(a), None);
        assert_eq!(t.pop_expired(Instant(9)), None);
        assert_eq!(t.pop_expired(Instant(10)).map(|x| x.1), Some('b'));
        assert_eq!(t.pop_expired(Instant(10)).map(|x| x.1), Some('c'));
        assert!(t.is_empty());
        assert_eq!(t.next_deadline(), None);
    }
}
