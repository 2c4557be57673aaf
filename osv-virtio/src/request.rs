//! Request tracking shared by the drivers that keep several requests in
//! flight on one queue (virtio-blk, virtio-fs): what each token in flight
//! is, completions a blocking call found for other tokens (stashed until
//! their owner asks), and the blocking wait itself.

use crate::irq::Wait;
use crate::queue::Token;

/// Per token: the driver's record of the request in flight (`R`), and a
/// completion found while waiting for another token (`C`).
#[derive(Debug)]
pub(crate) struct Tracker<R: Copy, C: Copy, const N: usize> {
    in_flight: [Option<R>; N],
    stashed: [Option<C>; N],
}

impl<R: Copy, C: Copy, const N: usize> Tracker<R, C, N> {
    /// Nothing in flight.
    pub(crate) const fn new() -> Self {
        Self { in_flight: [None; N], stashed: [None; N] }
    }

    /// Records `req` as the request behind `token`.
    pub(crate) fn insert(&mut self, token: Token, req: R) {
        if let Some(e) = self.in_flight.get_mut(usize::from(token.index())) {
            *e = Some(req);
        }
    }

    /// The request behind `token`, which the device just returned (`None`:
    /// not ours).
    pub(crate) fn complete(&mut self, token: Token) -> Option<R> {
        self.in_flight.get_mut(usize::from(token.index()))?.take()
    }

    /// Keeps `token`'s completion for whoever waits for it.
    pub(crate) fn stash(&mut self, token: Token, c: C) {
        if let Some(e) = self.stashed.get_mut(usize::from(token.index())) {
            *e = Some(c);
        }
    }

    /// `token`'s stashed completion.
    pub(crate) fn take_stashed(&mut self, token: Token) -> Option<C> {
        self.stashed.get_mut(usize::from(token.index()))?.take()
    }

    /// Any stashed completion (for `poll`).
    pub(crate) fn pop_stashed(&mut self) -> Option<(Token, C)> {
        let i = self.stashed.iter().position(Option::is_some)?;
        Some((Token::from_index(i as u16), self.stashed[i].take()?))
    }

    /// Forgets everything (the device was reset).
    pub(crate) fn clear(&mut self) {
        self.in_flight = [None; N];
        self.stashed = [None; N];
    }
}

/// A driver [`wait_for`] can wait on.
pub(crate) trait Requests {
    /// What a successful request returns.
    type Output;
    /// The driver's error.
    type Error;
    /// `token`'s stashed completion.
    fn take_stashed(&mut self, token: Token) -> Option<Result<Self::Output, Self::Error>>;
    /// Keeps a completion found for another token.
    fn stash(&mut self, token: Token, result: Result<Self::Output, Self::Error>);
    /// The next completion from the device: `None` if the used ring is
    /// empty, `Some(Err)` if the device broke the queue (reset done).
    #[allow(clippy::type_complexity)]
    fn poll_device(&mut self) -> Option<Result<(Token, Result<Self::Output, Self::Error>), Self::Error>>;
    /// The waiter gave up: reset the device (so it releases the buffers)
    /// and return the timeout error.
    fn give_up(&mut self) -> Self::Error;
}

/// Waits for `token`: [`Wait::prepare`], poll, and [`Wait::wait`] while the
/// used ring is empty (see [`crate::irq`] for why `prepare` comes before the
/// poll). Completions for other tokens are stashed.
pub(crate) fn wait_for<D: Requests>(
    d: &mut D,
    token: Token,
    w: &mut dyn Wait,
) -> Result<D::Output, D::Error> {
    if let Some(r) = d.take_stashed(token) {
        return r;
    }
    let r = loop {
        w.prepare();
        match d.poll_device() {
            Some(Ok((t, r))) if t == token => break r,
            Some(Ok((t, r))) => d.stash(t, r),
            Some(Err(e)) => break Err(e),
            None => {
                if !w.wait() {
                    break Err(d.give_up());
                }
            }
        }
    };
    w.done();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_round_trip() {
        let mut t: Tracker<u8, u32, 4> = Tracker::new();
        let (a, b) = (Token::from_index(1), Token::from_index(3));
        t.insert(a, 10);
        t.insert(b, 30);
        t.insert(Token::from_index(9), 90); // out of range: ignored, no panic
        assert_eq!(t.complete(a), Some(10));
        assert_eq!(t.complete(a), None);
        t.stash(b, 7);
        assert_eq!(t.pop_stashed(), Some((b, 7)));
        assert_eq!(t.pop_stashed(), None);
        t.stash(a, 1);
        assert_eq!(t.take_stashed(a), Some(1));
        t.stash(a, 2);
        t.clear();
        assert_eq!((t.take_stashed(a), t.complete(b)), (None, None));
    }
}
