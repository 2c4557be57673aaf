//! Address-space tests on page tables in ordinary memory ([`FakeMemory`]), and the proptest
//! model of random map/unmap/protect/fault sequences.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::vec::Vec;

use proptest::prelude::*;

use super::*;
use crate::fake::FakeMemory;

const WIN: u64 = 0x4000_0000;
const WIN_PAGES: u64 = 96;
const FILE_PAGES: u64 = 12;

struct NoTlb;
impl TlbFlush for NoTlb {
    fn flush_range(&self, _: Range<VirtAddr>) {}
    fn flush_all(&self) {}
}

/// A file whose pages are frames of the same fake memory; word 0 of page `i` starts as
/// `0xf11e_0000 + i`.
struct FakeFile {
    pages: Vec<PhysAddr>,
    write_backs: Mutex<Vec<u64>>,
}

impl FakeFile {
    fn new(mem: &FakeMemory) -> Self {
        let pages = (0..FILE_PAGES)
            .map(|i| {
                let f = mem.allocate_frame().unwrap();
                // SAFETY: a fresh frame of ours; 4096 writable bytes.
                unsafe { mem.frame_ptr(f).as_ptr().cast::<u64>().write(0xf11e_0000 + i) };
                f
            })
            .collect();
        Self { pages, write_backs: Mutex::new(Vec::new()) }
    }
    fn word(&self, mem: &FakeMemory, i: u64) -> u64 {
        mem.read_u64(self.pages[i as usize], 0)
    }
}

impl FileBacking for FakeFile {
    fn page(&self, offset: u64) -> Result<PhysAddr, VmError> {
        self.pages.get((offset / PAGE_SIZE) as usize).copied().ok_or(VmError::Io)
    }
    fn write_back(&self, offset: u64) -> Result<(), VmError> {
        self.write_backs.lock().unwrap().push(offset);
        Ok(())
    }
}

type Space<'a> = AddressSpace<&'a FakeMemory, &'a FakeMemory>;

fn space(mem: &FakeMemory) -> Space<'_> {
    space_of(mem, WIN_PAGES)
}

fn space_of(mem: &FakeMemory, pages: u64) -> Space<'_> {
    let mapper = Mapper::new(mem, mem).unwrap();
    AddressSpace::new(mapper, VirtAddr::new(WIN)..VirtAddr::new(WIN + pages * PAGE_SIZE)).unwrap()
}

fn page(i: u64) -> VirtAddr {
    VirtAddr::new(WIN + i * PAGE_SIZE)
}

/// Word 0 of the page mapped at `va`.
fn word(s: &Space<'_>, mem: &FakeMemory, va: VirtAddr) -> Option<u64> {
    s.mapper().translate(va).map(|(pa, _, _)| mem.read_u64(pa.align_down(PAGE_SIZE), 0))
}

fn store(s: &Space<'_>, mem: &FakeMemory, va: VirtAddr, value: u64) {
    let (pa, _, _) = s.mapper().translate(va).unwrap();
    // SAFETY: a mapped page of the fake memory; nobody else touches it.
    unsafe { mem.frame_ptr(pa.align_down(PAGE_SIZE)).as_ptr().cast::<u64>().write(value) };
}

#[test]
fn anon_zero_fill_split_and_unmap() {
    let mem = FakeMemory::new(64);
    let mut s = space(&mem);
    let a = s.mmap(None, 4 * PAGE_SIZE, Flags::RW, Backing::Anon, &NoTlb).unwrap();
    assert_eq!(a, page(0));
    assert_eq!(s.mapper().translate(a), None, "demand paging: nothing mapped yet");
    s.fault(page(1), Access::Write, &NoTlb).unwrap();
    assert_eq!(word(&s, &mem, page(1)), Some(0), "zero filled");
    assert_eq!(s.fault(page(1), Access::Exec, &NoTlb), Err(Fault::Protection { addr: page(1) }));
    assert_eq!(s.fault(page(9), Access::Read, &NoTlb), Err(Fault::Unmapped { addr: page(9) }));
    // Read-only middle page: three VMAs.
    s.mprotect(page(1), PAGE_SIZE, Flags::READ, &NoTlb).unwrap();
    assert_eq!(s.vmas().count(), 3);
    assert_eq!(s.mapper().translate(page(1)).unwrap().1, Flags::READ);
    assert_eq!(s.fault(page(1), Access::Write, &NoTlb), Err(Fault::Protection { addr: page(1) }));
    // Unmap the middle: two VMAs and the page is back.
    let before = mem.in_use();
    s.munmap(page(1), PAGE_SIZE, &NoTlb).unwrap();
    assert_eq!(s.vmas().count(), 2);
    assert!(mem.in_use() < before);
    assert_eq!(s.mprotect(page(0), 3 * PAGE_SIZE, Flags::READ, &NoTlb), Err(VmError::NoMemory), "hole");
    assert_eq!(s.mmap(Some(page(0)), 0, Flags::RW, Backing::Anon, &NoTlb), Err(VmError::Invalid));
    assert_eq!(s.mmap(None, PAGE_SIZE, Flags::empty(), Backing::Anon, &NoTlb), Err(VmError::Invalid));
    assert_eq!(
        s.mmap(None, (WIN_PAGES + 1) * PAGE_SIZE, Flags::RW, Backing::Anon, &NoTlb),
        Err(VmError::NoMemory)
    );
    s.munmap(page(0), WIN_PAGES * PAGE_SIZE, &NoTlb).unwrap();
    assert_eq!(mem.in_use(), 1, "only the root table is left");
}

#[test]
fn private_file_copy_on_write_and_shared_msync() {
    let mem = FakeMemory::new(64);
    let file = Arc::new(FakeFile::new(&mem));
    let mut s = space(&mem);
    let backing = Backing::File { file: file.clone(), offset: 2 * PAGE_SIZE, shared: false };
    let p = s.mmap(None, 2 * PAGE_SIZE, Flags::RW, backing, &NoTlb).unwrap();
    s.fault(p, Access::Read, &NoTlb).unwrap();
    let (pa, flags, _) = s.mapper().translate(p).unwrap();
    assert_eq!(pa, file.pages[2], "a read maps the file's own page");
    assert_eq!(flags, Flags::READ, "read-only until written");
    s.fault(p, Access::Write, &NoTlb).unwrap();
    let (copy, flags, _) = s.mapper().translate(p).unwrap();
    assert_ne!(copy, file.pages[2]);
    assert_eq!(flags, Flags::RW);
    assert_eq!(word(&s, &mem, p), Some(0xf11e_0002), "the copy has the file's contents");
    store(&s, &mem, p, 77);
    assert_eq!(file.word(&mem, 2), 0xf11e_0002, "the file is untouched");

    let shared = Backing::File { file: file.clone(), offset: 0, shared: true };
    let q = s.mmap(None, PAGE_SIZE, Flags::RW, shared, &NoTlb).unwrap();
    s.fault(q, Access::Write, &NoTlb).unwrap();
    store(&s, &mem, q, 99);
    assert_eq!(file.word(&mem, 0), 99, "shared writes reach the file page");
    s.msync(q, PAGE_SIZE).unwrap();
    assert_eq!(*file.write_backs.lock().unwrap(), [0]);
    // Beyond the end of the file.
    let far = Backing::File { file: file.clone(), offset: FILE_PAGES * PAGE_SIZE, shared: false };
    let r = s.mmap(None, PAGE_SIZE, Flags::READ, far, &NoTlb).unwrap();
    assert_eq!(s.fault(r, Access::Read, &NoTlb), Err(Fault::Io));
    s.munmap(page(0), WIN_PAGES * PAGE_SIZE, &NoTlb).unwrap();
    assert_eq!(mem.in_use(), 1 + FILE_PAGES as usize, "the copy went back, the file's pages stay");
}

#[test]
fn stack_guard_reports_overflow() {
    let mem = FakeMemory::new(64);
    let mut s = space(&mem);
    let stack = s.alloc_stack(8 * PAGE_SIZE, StackId(7), "worker-7", &NoTlb).unwrap();
    assert_eq!(stack.end.as_u64() - stack.start.as_u64(), 8 * PAGE_SIZE);
    let top = VirtAddr::new(stack.end.as_u64() - 8);
    s.fault(top, Access::Write, &NoTlb).unwrap();
    let below = VirtAddr::new(stack.start.as_u64() - 8);
    assert_eq!(
        s.fault(below, Access::Write, &NoTlb),
        Err(Fault::StackOverflow { addr: below, stack: StackId(7), name: "worker-7" })
    );
    assert_eq!(s.mapper().translate(below), None);
    assert_eq!(
        s.mprotect(VirtAddr::new(stack.start.as_u64() - PAGE_SIZE), PAGE_SIZE, Flags::RW, &NoTlb),
        Err(VmError::NoMemory)
    );
    s.free_stack(stack, &NoTlb).unwrap();
    assert_eq!(s.vmas().count(), 0);
    assert_eq!(mem.in_use(), 1);
}

/// A page of the model address space.
#[derive(Clone, Copy, Debug, PartialEq)]
enum MPage {
    Anon {
        perm: Flags,
        data: u64,
    },
    /// Private file page `fpage`; `copy` is the private copy's word once written.
    Private {
        perm: Flags,
        fpage: u64,
        copy: Option<u64>,
    },
    Shared {
        perm: Flags,
        fpage: u64,
    },
    Guard {
        id: u64,
    },
}

#[derive(Clone, Debug)]
enum Op {
    MapAnon {
        at: Option<u64>,
        pages: u64,
        perm: u8,
    },
    MapFile {
        at: Option<u64>,
        pages: u64,
        perm: u8,
        fpage: u64,
        shared: bool,
    },
    Unmap {
        at: u64,
        pages: u64,
    },
    Protect {
        at: u64,
        pages: u64,
        perm: u8,
    },
    Touch {
        at: u64,
        write: bool,
        tag: u64,
    },
    Stack {
        pages: u64,
    },
    /// An anonymous mapping of whole 2 MiB ranges at 2 MiB range `chunk` of the window.
    MapAnonBig {
        chunk: u64,
        chunks: u64,
        perm: u8,
    },
}

fn perm_of(bits: u8) -> Flags {
    // READ, RW, RX, RWX.
    [Flags::READ, Flags::RW, Flags::RX, Flags::RW | Flags::EXEC][usize::from(bits % 4)]
}

fn op(win: u64) -> impl Strategy<Value = Op> {
    let at = prop_oneof![Just(None), (0..win).prop_map(Some)];
    let chunks = win / 512;
    // Windows without a whole 2 MiB range get a one-page anonymous mapping instead.
    let big = (0..chunks.max(1), 1..=chunks.max(1), any::<u8>()).prop_map(move |(chunk, n, perm)| {
        if chunks == 0 {
            Op::MapAnon { at: None, pages: 1, perm }
        } else {
            Op::MapAnonBig { chunk, chunks: n.min(chunks - chunk), perm }
        }
    });
    prop_oneof![
        2 => big,
        3 => (at.clone(), 1u64..12, any::<u8>()).prop_map(|(at, pages, perm)| Op::MapAnon { at, pages, perm }),
        2 => (at, 1u64..8, any::<u8>(), 0..FILE_PAGES + 2, any::<bool>())
            .prop_map(|(at, pages, perm, fpage, shared)| Op::MapFile { at, pages, perm, fpage, shared }),
        2 => (0..win, 1u64..16).prop_map(|(at, pages)| Op::Unmap { at, pages }),
        2 => (0..win, 1u64..8, any::<u8>()).prop_map(|(at, pages, perm)| Op::Protect { at, pages, perm }),
        8 => (0..win, any::<bool>(), any::<u64>()).prop_map(|(at, write, tag)| Op::Touch { at, write, tag }),
        1 => (1u64..4).prop_map(|pages| Op::Stack { pages }),
    ]
}

struct Model {
    pages: BTreeMap<u64, MPage>,
    file: Vec<u64>,
    win: u64,
}

impl Model {
    fn perm(&self, p: u64) -> Option<Flags> {
        match self.pages.get(&p)? {
            MPage::Anon { perm, .. } | MPage::Private { perm, .. } | MPage::Shared { perm, .. } => {
                Some(*perm)
            }
            MPage::Guard { .. } => None,
        }
    }
    /// The word a read of page `p` sees.
    fn word(&self, p: u64) -> Option<u64> {
        match *self.pages.get(&p)? {
            MPage::Anon { data, .. } => Some(data),
            MPage::Private { copy: Some(c), .. } => Some(c),
            MPage::Private { fpage, .. } | MPage::Shared { fpage, .. } => {
                self.file.get(fpage as usize).copied()
            }
            MPage::Guard { .. } => None,
        }
    }
    fn first_fit(&self, pages: u64) -> Option<u64> {
        (0..=self.win.checked_sub(pages)?).find(|&s| (s..s + pages).all(|p| !self.pages.contains_key(&p)))
    }
}

fn check(s: &Space<'_>, mem: &FakeMemory, file: &FakeFile, m: &Model) -> Result<(), TestCaseError> {
    let mut ours = BTreeSet::new();
    for i in 0..m.win {
        let va = page(i);
        let Some(mp) = m.pages.get(&i) else {
            prop_assert_eq!(s.mapper().translate(va), None, "page {} is mapped but not in the model", i);
            prop_assert!(s.find(va).is_none());
            continue;
        };
        prop_assert!(s.find(va).is_some(), "page {} has no VMA", i);
        let Some((pa, flags, _)) = s.mapper().translate(va) else { continue };
        let expected = match *mp {
            MPage::Anon { perm, .. }
            | MPage::Shared { perm, .. }
            | MPage::Private { perm, copy: Some(_), .. } => perm,
            MPage::Private { perm, .. } => (perm - Flags::WRITE).normalized(),
            MPage::Guard { .. } => return Err(TestCaseError::fail(format!("guard page {i} is mapped"))),
        };
        prop_assert_eq!(flags, expected, "permissions of page {}", i);
        prop_assert_eq!(Some(mem.read_u64(pa, 0)), m.word(i), "contents of page {}", i);
        let is_file_page = file.pages.contains(&pa);
        match mp {
            MPage::Anon { .. } | MPage::Private { copy: Some(_), .. } => {
                prop_assert!(!is_file_page, "a private page maps the file");
                prop_assert!(ours.insert(pa), "frame {:?} mapped twice", pa);
            }
            _ => prop_assert!(is_file_page),
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Random mmap/munmap/mprotect/fault/stack sequences against a page-by-page model: every
    /// page of the window is mapped exactly as the model says (permissions, contents, file
    /// page or private frame), nothing else is mapped, no frame is mapped twice, faults
    /// resolve or fail exactly as the model predicts, and unmapping everything gives every
    /// page and table back.
    #[test]
    fn matches_model(ops in proptest::collection::vec(op(WIN_PAGES), 1..80)) {
        run_space_model(ops, WIN_PAGES, 512)?;
    }

    /// The same over four 2 MiB ranges with whole-range anonymous mappings among the
    /// operations, so faults map 2 MiB pages (when the allocator has a run) that later
    /// operations split, protect, merge and unmap in part.
    #[test]
    fn matches_model_with_2m_pages(ops in proptest::collection::vec(op(4 * 512), 1..80)) {
        run_space_model(ops, 4 * 512, 4096)?;
    }
}

fn run_space_model(ops: Vec<Op>, win: u64, frames: usize) -> Result<(), TestCaseError> {
    {
        let mem = FakeMemory::new(frames);
        let file = Arc::new(FakeFile::new(&mem));
        let mut s = space_of(&mem, win);
        let mut m =
            Model { pages: BTreeMap::new(), file: (0..FILE_PAGES).map(|i| 0xf11e_0000 + i).collect(), win };
        let mut next_stack = 0;
        for op in ops {
            let op = match op {
                Op::MapAnonBig { chunk, chunks, perm } => {
                    Op::MapAnon { at: Some(chunk * 512), pages: chunks * 512, perm }
                }
                other => other,
            };
            match op {
                Op::MapAnon { at, pages, perm } | Op::MapFile { at, pages, perm, .. } => {
                    let perm = perm_of(perm);
                    let (backing, fpage, shared) = match op {
                        Op::MapFile { fpage, shared, .. } => (
                            Backing::File { file: file.clone(), offset: fpage * PAGE_SIZE, shared },
                            Some(fpage),
                            shared,
                        ),
                        _ => (Backing::Anon, None, false),
                    };
                    let want = match at {
                        Some(a) if a + pages <= win => Ok(a),
                        Some(_) => Err(VmError::Invalid),
                        None => m.first_fit(pages).ok_or(VmError::NoMemory),
                    };
                    let got = s.mmap(at.map(page), pages * PAGE_SIZE, perm, backing, &NoTlb);
                    prop_assert_eq!(got, want.map(page));
                    if let Ok(start) = want {
                        for i in 0..pages {
                            let mp = match fpage {
                                None => MPage::Anon { perm, data: 0 },
                                Some(f) if shared => MPage::Shared { perm, fpage: f + i },
                                Some(f) => MPage::Private { perm, fpage: f + i, copy: None },
                            };
                            m.pages.insert(start + i, mp);
                        }
                    }
                }
                Op::Unmap { at, pages } => {
                    prop_assert_eq!(s.munmap(page(at), pages * PAGE_SIZE, &NoTlb), Ok(()));
                    for i in at..at + pages {
                        m.pages.remove(&i);
                    }
                }
                Op::Protect { at, pages, perm } => {
                    let perm = perm_of(perm);
                    let covered = (at..at + pages).all(|i| m.perm(i).is_some());
                    let r = s.mprotect(page(at), pages * PAGE_SIZE, perm, &NoTlb);
                    if covered {
                        prop_assert_eq!(r, Ok(()));
                        for i in at..at + pages {
                            match m.pages.get_mut(&i) {
                                Some(
                                    MPage::Anon { perm: p, .. }
                                    | MPage::Private { perm: p, .. }
                                    | MPage::Shared { perm: p, .. },
                                ) => *p = perm,
                                _ => unreachable!(),
                            }
                        }
                    } else {
                        prop_assert_eq!(r, Err(VmError::NoMemory));
                    }
                }
                Op::Touch { at, write, tag } => {
                    let va = VirtAddr::new(page(at).as_u64() + 8 * (tag % 512));
                    let access = if write { Access::Write } else { Access::Read };
                    let r = s.fault(va, access, &NoTlb);
                    match m.pages.get(&at).copied() {
                        None => prop_assert_eq!(r, Err(Fault::Unmapped { addr: va })),
                        Some(MPage::Guard { id }) => {
                            prop_assert_eq!(
                                r,
                                Err(Fault::StackOverflow { addr: va, stack: StackId(id), name: "stack" })
                            );
                        }
                        Some(mp) => {
                            let perm = m.perm(at).unwrap();
                            let beyond = matches!(mp, MPage::Private { fpage, copy: None, .. } | MPage::Shared { fpage, .. } if fpage >= FILE_PAGES);
                            if write && !perm.contains(Flags::WRITE) {
                                prop_assert_eq!(r, Err(Fault::Protection { addr: va }));
                            } else if beyond {
                                prop_assert_eq!(r, Err(Fault::Io));
                            } else {
                                prop_assert_eq!(r, Ok(()));
                                prop_assert_eq!(word(&s, &mem, page(at)), m.word(at), "read after fault");
                                if write {
                                    store(&s, &mem, page(at), tag);
                                    let slot = m.pages.get_mut(&at).unwrap();
                                    match slot {
                                        MPage::Anon { data, .. } => *data = tag,
                                        MPage::Private { copy, .. } => *copy = Some(tag),
                                        MPage::Shared { fpage, .. } => m.file[*fpage as usize] = tag,
                                        MPage::Guard { .. } => unreachable!(),
                                    }
                                }
                            }
                        }
                    }
                }
                Op::MapAnonBig { .. } => unreachable!("turned into MapAnon above"),
                Op::Stack { pages } => {
                    next_stack += 1;
                    let want = m.first_fit(pages + 1);
                    let r = s.alloc_stack(pages * PAGE_SIZE, StackId(next_stack), "stack", &NoTlb);
                    match want {
                        Some(base) => {
                            prop_assert_eq!(r, Ok(page(base + 1)..page(base + 1 + pages)));
                            m.pages.insert(base, MPage::Guard { id: next_stack });
                            for i in 1..=pages {
                                m.pages.insert(base + i, MPage::Anon { perm: Flags::RW, data: 0 });
                            }
                        }
                        None => prop_assert_eq!(r, Err(VmError::NoMemory)),
                    }
                }
            }
            check(&s, &mem, &file, &m)?;
        }
        s.munmap(page(0), win * PAGE_SIZE, &NoTlb).unwrap();
        prop_assert_eq!(s.vmas().count(), 0);
        prop_assert_eq!(mem.in_use(), 1 + FILE_PAGES as usize, "root table and the file's pages only");
    }
    Ok(())
}

// ---- 2 MiB pages for anonymous memory ----

const M2: u64 = 2 << 20;

fn big_space(mem: &FakeMemory) -> Space<'_> {
    let mapper = Mapper::new(mem, mem).unwrap();
    AddressSpace::new(mapper, VirtAddr::new(WIN)..VirtAddr::new(WIN + 4 * M2)).unwrap()
}

fn at(a: VirtAddr, off: u64) -> VirtAddr {
    VirtAddr::new(a.as_u64() + off)
}

#[test]
fn anon_fault_maps_a_2m_page_and_partial_changes_split_it() {
    let mem = FakeMemory::new(2048);
    let mut s = big_space(&mem);
    let a = s.mmap(None, 2 * M2, Flags::RW, Backing::Anon, &NoTlb).unwrap();
    assert!(a.is_aligned(M2));
    s.fault(at(a, 0x1234), Access::Write, &NoTlb).unwrap();
    let (pa, flags, size) = s.mapper().translate(a).unwrap();
    assert_eq!((flags, size), (Flags::RW, PageSize::Size2M), "one fault, one 2 MiB page");
    assert!(pa.is_aligned(M2));
    assert_eq!(mem.in_use(), 3 + 512, "root, PDPT, PD and the 2 MiB run");
    for i in 0..512 {
        assert_eq!(word(&s, &mem, at(a, i * PAGE_SIZE)), Some(0), "zero filled");
        store(&s, &mem, at(a, i * PAGE_SIZE), 0x100 + i);
    }
    // A fault elsewhere in the same large page changes nothing.
    s.fault(at(a, M2 - 8), Access::Write, &NoTlb).unwrap();
    assert_eq!(mem.in_use(), 3 + 512);
    // mprotect of one page splits it; the rest stays writable, contents are kept.
    s.mprotect(at(a, 7 * PAGE_SIZE), PAGE_SIZE, Flags::READ, &NoTlb).unwrap();
    assert_eq!(s.mapper().translate(at(a, 7 * PAGE_SIZE)).unwrap().1, Flags::READ);
    assert_eq!(s.mapper().translate(at(a, 7 * PAGE_SIZE)).unwrap().2, PageSize::Size4K);
    assert_eq!(s.mapper().translate(at(a, 8 * PAGE_SIZE)).unwrap().1, Flags::RW);
    assert_eq!(
        s.fault(at(a, 7 * PAGE_SIZE), Access::Write, &NoTlb),
        Err(Fault::Protection { addr: at(a, 7 * PAGE_SIZE) })
    );
    assert_eq!(mem.in_use(), 3 + 512 + 1, "one page table for the split");
    // Back to RW: the run is contiguous again and merges into one 2 MiB page.
    s.mprotect(at(a, 7 * PAGE_SIZE), PAGE_SIZE, Flags::RW, &NoTlb).unwrap();
    assert_eq!(s.mapper().translate(at(a, 7 * PAGE_SIZE)).unwrap().2, PageSize::Size2M);
    assert_eq!(mem.in_use(), 3 + 512);
    // munmap of pages 10..20 splits again and frees exactly those ten frames.
    s.munmap(at(a, 10 * PAGE_SIZE), 10 * PAGE_SIZE, &NoTlb).unwrap();
    assert_eq!(mem.in_use(), 3 + 512 - 10 + 1);
    for i in 0..512 {
        let want = (!(10..20).contains(&i)).then_some(0x100 + i);
        assert_eq!(word(&s, &mem, at(a, i * PAGE_SIZE)), want, "page {i}");
    }
    assert_eq!(
        s.fault(at(a, 15 * PAGE_SIZE), Access::Read, &NoTlb),
        Err(Fault::Unmapped { addr: at(a, 15 * PAGE_SIZE) })
    );
    // The second 2 MiB range when the allocator has no 2 MiB run: one 4 KiB page.
    mem.set_huge(false);
    s.fault(at(a, M2 + 5 * PAGE_SIZE), Access::Read, &NoTlb).unwrap();
    assert_eq!(s.mapper().translate(at(a, M2 + 5 * PAGE_SIZE)).unwrap().2, PageSize::Size4K);
    assert_eq!(s.mapper().translate(at(a, M2)), None, "only the faulting page");
    mem.set_huge(true);
    // Already partly mapped: 4 KiB again, even with runs available.
    s.fault(at(a, M2), Access::Read, &NoTlb).unwrap();
    assert_eq!(s.mapper().translate(at(a, M2)).unwrap().2, PageSize::Size4K);
    s.munmap(a, 2 * M2, &NoTlb).unwrap();
    assert_eq!(mem.in_use(), 1, "every page and table back");
}

#[test]
fn anon_vma_not_covering_an_aligned_2m_range_uses_4k_pages() {
    let mem = FakeMemory::new(2048);
    let mut s = big_space(&mem);
    // [WIN + 4 KiB, WIN + 2 MiB + 4 KiB): no aligned 2 MiB range inside.
    s.mmap(Some(VirtAddr::new(WIN + PAGE_SIZE)), M2, Flags::RW, Backing::Anon, &NoTlb).unwrap();
    s.fault(VirtAddr::new(WIN + M2), Access::Write, &NoTlb).unwrap();
    s.fault(VirtAddr::new(WIN + 8 * PAGE_SIZE), Access::Write, &NoTlb).unwrap();
    assert_eq!(s.mapper().translate(VirtAddr::new(WIN + M2)).unwrap().2, PageSize::Size4K);
    assert_eq!(s.mapper().translate(VirtAddr::new(WIN + 8 * PAGE_SIZE)).unwrap().2, PageSize::Size4K);
    assert_eq!(s.mapper().mapped_pages(VirtAddr::new(WIN)..VirtAddr::new(WIN + 4 * M2)).unwrap(), 2);
    s.munmap(VirtAddr::new(WIN), 4 * M2, &NoTlb).unwrap();
    assert_eq!(mem.in_use(), 1);
}

/// Records each shootdown batch: every operation makes at most one, naming its range.
#[derive(Default)]
struct Batches(Mutex<Vec<(bool, Vec<Range<VirtAddr>>)>>);

impl TlbFlush for Batches {
    fn flush_range(&self, _: Range<VirtAddr>) {
        unreachable!("shootdown is overridden")
    }
    fn flush_all(&self) {
        unreachable!("shootdown is overridden")
    }
    fn shootdown(&self, batch: &MapperFlush) {
        self.0.lock().unwrap().push((batch.is_all(), batch.ranges().collect()));
    }
}

impl Batches {
    fn take(&self) -> Vec<(bool, Vec<Range<VirtAddr>>)> {
        core::mem::take(&mut *self.0.lock().unwrap())
    }
}

#[test]
fn each_operation_is_one_shootdown_naming_its_range() {
    let mem = FakeMemory::new(2048);
    let file = Arc::new(FakeFile::new(&mem));
    let mut s = space(&mem);
    let tlb = Batches::default();
    let a = s.mmap(None, 8 * PAGE_SIZE, Flags::RW, Backing::Anon, &tlb).unwrap();
    for i in [1, 2, 5] {
        s.fault(page(i), Access::Write, &tlb).unwrap();
    }
    assert_eq!(tlb.take(), vec![], "filling empty entries needs no invalidation");
    s.mprotect(page(1), 2 * PAGE_SIZE, Flags::READ, &tlb).unwrap();
    assert_eq!(tlb.take(), vec![(false, vec![page(1)..page(3)])]);
    s.munmap(a, 8 * PAGE_SIZE, &tlb).unwrap();
    // Pages 1, 2 and 5, then the tables that became empty (over the range the walk covered).
    assert_eq!(tlb.take(), vec![(false, vec![page(1)..page(3), page(5)..page(6), a..page(8)])]);
    // Copy-on-write replaces a read-only file page: one shootdown for that page.
    let f = Backing::File { file: file.clone(), offset: 0, shared: false };
    let b = s.mmap(None, 2 * PAGE_SIZE, Flags::RW, f, &tlb).unwrap();
    s.fault(b, Access::Read, &tlb).unwrap();
    s.fault(b, Access::Write, &tlb).unwrap();
    assert_eq!(tlb.take(), vec![(false, vec![b..VirtAddr::new(b.as_u64() + PAGE_SIZE)])]);
    s.munmap(b, 2 * PAGE_SIZE, &tlb).unwrap();
    assert_eq!(mem.in_use(), 1 + FILE_PAGES as usize);
}
