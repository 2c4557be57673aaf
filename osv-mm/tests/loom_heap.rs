//! loom model of the heap's cross-CPU free queue: objects of one CPU's slab freed on two
//! other CPUs at once go onto the owner pool's lock-free MPSC stack, while the owner keeps
//! allocating (and collects the stack when it sees it non-empty).
//!
//! Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release -p osv-mm --test loom_heap`.
#![cfg(loom)]

use std::alloc::Layout;
use std::cell::Cell;
use std::ptr::NonNull;

use loom::sync::{Arc, Mutex};
use loom::thread;
use osv_mm::heap::{Heap, HeapPages};
use osv_mm::CpuLocal;

loom::thread_local! {
    static CPU: Cell<usize> = Cell::new(usize::MAX);
}

/// Each model thread says which CPU it is before it starts.
struct ModelCpus;

// SAFETY: each model thread sets a distinct index (the main thread takes one only after the
// thread that had it was joined), and loom threads have no interrupts.
unsafe impl CpuLocal for ModelCpus {
    fn max_cpus(&self) -> usize {
        3
    }
    fn with_cpu<R>(&self, f: impl FnOnce(usize) -> R) -> R {
        f(CPU.with(Cell::get))
    }
}

fn be_cpu(i: usize) {
    CPU.with(|c| c.set(i));
}

#[repr(C, align(4096))]
struct Page([u8; 4096]);

/// Four pages; which are in use is loom-visible state.
struct Pool {
    pages: Box<[std::cell::UnsafeCell<Page>]>,
    used: Mutex<u8>,
}

// SAFETY: a page is handed to one user at a time (the `used` mask under the mutex).
unsafe impl Sync for Pool {}

const PAGES: usize = 4;

// SAFETY: single pages only, 4096 aligned, each handed out once until freed.
unsafe impl HeapPages for Pool {
    fn alloc_pages(&self, pages: usize, align: usize) -> Option<NonNull<u8>> {
        if pages != 1 || align > 4096 {
            return None;
        }
        let mut used = self.used.lock().unwrap();
        let i = (0..PAGES).find(|i| *used & (1 << i) == 0)?;
        *used |= 1 << i;
        NonNull::new(self.pages[i].get().cast())
    }
    unsafe fn free_pages(&self, ptr: NonNull<u8>, _pages: usize) {
        let i = (0..PAGES).find(|&i| self.pages[i].get().cast() == ptr.as_ptr()).expect("not ours");
        let mut used = self.used.lock().unwrap();
        assert!(*used & (1 << i) != 0, "double free of page {i}");
        *used &= !(1 << i);
    }
    fn free_page_count(&self) -> u64 {
        PAGES as u64 - u64::from(self.used.lock().unwrap().count_ones())
    }
}

type ModelHeap = Heap<Pool, ModelCpus, 3>;

/// Sends a raw pointer to another model thread.
struct Obj(*mut u8);
// SAFETY: the object is handed over whole; only the receiver uses it afterwards.
unsafe impl Send for Obj {}

#[test]
fn two_cpus_free_into_a_third_cpus_pool() {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(|| {
        let pool = Pool {
            pages: (0..PAGES).map(|_| std::cell::UnsafeCell::new(Page([0; 4096]))).collect(),
            used: Mutex::new(0),
        };
        let heap: Arc<ModelHeap> = Arc::new(Heap::new(pool, ModelCpus));
        let l = Layout::from_size_align(16, 8).unwrap();
        be_cpu(0);
        let a = heap.allocate(l);
        let b = heap.allocate(l);
        assert!(!a.is_null() && !b.is_null() && a != b);
        // SAFETY: our objects.
        unsafe {
            a.write_bytes(0xa, 16);
            b.write_bytes(0xb, 16);
        }
        let freer = |cpu: usize, obj: Obj| {
            let heap = heap.clone();
            thread::spawn(move || {
                be_cpu(cpu);
                let obj = obj;
                // SAFETY: handed over to us, from this heap with layout `l`.
                unsafe { heap.deallocate(obj.0, l) };
            })
        };
        let t1 = freer(1, Obj(a));
        let t2 = freer(2, Obj(b));
        // The owner allocates while the others free into its pool: it may get a
        // remotely freed object back (collected from the stack) or a fresh one.
        let c = heap.allocate(l);
        assert!(!c.is_null());
        // SAFETY: our object; a reused one is ours only after its free completed.
        unsafe { c.write_bytes(0xc, 16) };
        t1.join().unwrap();
        t2.join().unwrap();
        let s = heap.stats();
        assert_eq!(s.classes[0].objects, 1, "two freed, one live");
        // SAFETY: from this heap with layout `l`.
        unsafe { heap.deallocate(c, l) };
        heap.trim();
        let s = heap.stats();
        assert_eq!(
            (s.bytes_in_use, s.slab_pages, s.free_pages),
            (0, 0, PAGES as u64),
            "every object collected"
        );
    });
}
