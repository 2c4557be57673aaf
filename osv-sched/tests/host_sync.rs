//! The mutex, condition variable and semaphore on host threads (`StdPark`):
//! many threads ping-ponging with checked final counts. The same code runs in
//! the kernel over its scheduler's `Park`.
#![cfg(all(feature = "std", not(loom)))]

use osv_sched::condvar::Condvar;
use osv_sched::mutex::Mutex;
use osv_sched::park::StdPark;
use osv_sched::semaphore::Semaphore;
use std::sync::Arc;

#[test]
fn many_threads_count_through_the_mutex() {
    const THREADS: usize = 12;
    const EACH: u64 = 4_000;
    let m: Arc<Mutex<(u64, u64), StdPark>> = Arc::new(Mutex::new((0, 0)));
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                for _ in 0..EACH {
                    let mut g = m.lock();
                    // Two fields updated non-atomically: torn if exclusion fails.
                    g.0 += 1;
                    std::hint::black_box(&mut *g);
                    g.1 += 1;
                }
            });
        }
    });
    let g = m.lock();
    assert_eq!(*g, (THREADS as u64 * EACH, THREADS as u64 * EACH));
}

/// A ring of threads passing a turn through one mutex and condvar; every
/// thread must see exactly its turns, in order.
#[test]
fn condvar_ping_pong_ring() {
    const THREADS: u64 = 6;
    const ROUNDS: u64 = 1_000;
    let shared: Arc<(Mutex<u64, StdPark>, Condvar<StdPark>)> = Arc::new(Default::default());
    std::thread::scope(|s| {
        for i in 0..THREADS {
            let shared = &shared;
            s.spawn(move || {
                let (m, cv) = &**shared;
                for round in 0..ROUNDS {
                    let mut g = cv.wait_while(m.lock(), |n| *n % THREADS != i);
                    assert_eq!(*g, round * THREADS + i);
                    *g += 1;
                    drop(g);
                    cv.notify_all();
                }
            });
        }
    });
    assert_eq!(*shared.0.lock(), THREADS * ROUNDS);
}

/// Two threads alternating strictly through two semaphores.
#[test]
fn semaphore_ping_pong() {
    const ROUNDS: u64 = 5_000;
    let ping: Semaphore<StdPark> = Semaphore::new(1);
    let pong: Semaphore<StdPark> = Semaphore::new(0);
    let count: Mutex<u64, StdPark> = Mutex::new(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            for _ in 0..ROUNDS {
                ping.acquire();
                let mut c = count.lock();
                assert_eq!(*c % 2, 0);
                *c += 1;
                drop(c);
                pong.release();
            }
        });
        s.spawn(|| {
            for _ in 0..ROUNDS {
                pong.acquire();
                let mut c = count.lock();
                assert_eq!(*c % 2, 1);
                *c += 1;
                drop(c);
                ping.release();
            }
        });
    });
    assert_eq!(count.into_inner(), 2 * ROUNDS);
}
