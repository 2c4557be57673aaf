//! The virtio-fs driver against the fake FUSE server (`fs::fake`), over the
//! real virtio-mmio transport and virtqueue.
#![allow(unsafe_code)]

use std::vec;
use std::vec::Vec;

use proptest::prelude::*;

use super::device::{FsError, VirtIOFs};
use super::fake::{fuzz_fuse_reply, FuseBackend, FuseMisbehave};
use super::proto::{
    self, open_flags, DirentIter, FileHandle, FileType, NodeId, ProtoError, SetattrIn, ROOT_ID,
};
use crate::fake::FakeMmioRegs;
use crate::fake::{FakeDevice, FakeHal, Misbehave};
use crate::queue::QueueError;
use crate::transport::mmio::MmioTransport;

type Fs = VirtIOFs<FakeHal, MmioTransport<FakeMmioRegs>>;

fn setup() -> (FakeHal, FakeDevice, FuseBackend, Fs) {
    let hal = FakeHal::new();
    let server = FuseBackend::new("host");
    let dev = server.device(&hal, 32);
    let t = MmioTransport::new(FakeMmioRegs::new(&dev)).unwrap();
    let fs = VirtIOFs::new(&hal, t).unwrap();
    (hal, dev, server, fs)
}

const EBADF: u32 = 9;
const ENOENT: u32 = 2;

#[test]
fn init_and_config() {
    let (_hal, dev, server, fs) = setup();
    assert_eq!(dev.status(), 0x0f);
    assert_eq!(fs.tag().as_str(), Some("host"));
    assert_eq!(fs.num_request_queues(), 1);
    assert_eq!(fs.init_out().minor, proto::KERNEL_MINOR_VERSION);
    assert_eq!(fs.max_write(), 64 * 1024);
    assert_eq!(fs.max_read(), 128 * 1024);
    assert!(fs.readdirplus());
    assert_eq!(server.ops(), vec![26]);
    assert_eq!(dev.faults(), 0);
}

#[test]
fn bad_config_and_versions() {
    let hal = FakeHal::new();
    let server = FuseBackend::new("");
    let dev = server.device(&hal, 8);
    let t = MmioTransport::new(FakeMmioRegs::new(&dev)).unwrap();
    assert_eq!(VirtIOFs::new(&hal, t).unwrap_err(), FsError::BadConfig("empty tag"));
    let server = FuseBackend::new("x");
    server.set_num_request_queues(0);
    let dev = server.device(&hal, 8);
    let t = MmioTransport::new(FakeMmioRegs::new(&dev)).unwrap();
    assert_eq!(VirtIOFs::new(&hal, t).unwrap_err(), FsError::BadConfig("no request queues"));
    let server = FuseBackend::new("a tag that fills all 36 bytes exactly");
    let dev = server.device(&hal, 8);
    let t = MmioTransport::new(FakeMmioRegs::new(&dev)).unwrap();
    let fs = VirtIOFs::new(&hal, t).unwrap();
    assert_eq!(fs.tag().as_bytes(), b"a tag that fills all 36 bytes exactl");
    drop(fs);
    let server = FuseBackend::new("old");
    server.set_minor(22);
    let dev = server.device(&hal, 8);
    let t = MmioTransport::new(FakeMmioRegs::new(&dev)).unwrap();
    assert!(matches!(VirtIOFs::new(&hal, t), Err(FsError::Proto(ProtoError::BadValue(_)))));
    assert_eq!(hal.memory().live_allocations(), 0);
}

#[test]
fn operations_round_trip() {
    let (_hal, dev, server, mut fs) = setup();
    let d = fs.mkdir(ROOT_ID, b"dir", 0o750).unwrap();
    assert_eq!(d.attr.file_type(), Some(FileType::Directory));
    assert_eq!(d.attr.mode & 0o7777, 0o750);
    let (f, o) = fs
        .create(d.nodeid, b"f.txt", open_flags::RDWR | open_flags::CREAT | open_flags::EXCL, 0o100644)
        .unwrap();
    assert_eq!(f.attr.file_type(), Some(FileType::Regular));
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
    let mut off = 0;
    for chunk in data.chunks(fs.max_write() as usize) {
        assert_eq!(fs.write(f.nodeid, o.fh, off, chunk).unwrap(), chunk.len());
        off += chunk.len() as u64;
    }
    assert_eq!(server.file("dir/f.txt").unwrap(), data);
    let mut back = vec![0u8; 70_000];
    assert_eq!(fs.read(f.nodeid, o.fh, 40_000, &mut back).unwrap(), 60_000);
    assert_eq!(&back[..60_000], &data[40_000..]);
    assert_eq!(fs.getattr(f.nodeid, Some(o.fh)).unwrap().size, 100_000);
    let a =
        fs.setattr(f.nodeid, SetattrIn { size: Some(10), mode: Some(0o600), ..Default::default() }).unwrap();
    assert_eq!((a.size, a.mode & 0o7777), (10, 0o600));
    fs.fsync(f.nodeid, o.fh, false, false).unwrap();
    fs.flush(f.nodeid, o.fh).unwrap();
    fs.release(f.nodeid, o.fh, open_flags::RDWR, false).unwrap();
    assert_eq!(fs.read(f.nodeid, o.fh, 0, &mut back[..10]), Err(FsError::Server(EBADF)));
    // Directory listing, plain and plus.
    let dh = fs.open(d.nodeid, 0, true).unwrap().fh;
    let mut buf = vec![0u8; 4096];
    let n = fs.readdir(d.nodeid, dh, 0, &mut buf, false).unwrap();
    let names: Vec<Vec<u8>> = DirentIter::new(&buf[..n], false).map(|e| e.unwrap().name.to_vec()).collect();
    assert_eq!(names, vec![b".".to_vec(), b"..".to_vec(), b"f.txt".to_vec()]);
    let n = fs.readdir(d.nodeid, dh, 2, &mut buf, true).unwrap();
    let plus: Vec<_> = DirentIter::new(&buf[..n], true).map(|e| e.unwrap()).collect();
    assert_eq!(plus.len(), 1);
    assert_eq!(plus[0].entry.map(|e| e.nodeid), Some(f.nodeid));
    let n = fs.readdir(d.nodeid, dh, 3, &mut buf, false).unwrap();
    assert_eq!(n, 0, "end of directory");
    fs.fsync(d.nodeid, dh, false, true).unwrap();
    fs.release(d.nodeid, dh, 0, true).unwrap();
    // Rename, lookup, unlink, rmdir.
    fs.rename(d.nodeid, b"f.txt", ROOT_ID, b"g", 0).unwrap();
    assert_eq!(fs.lookup(d.nodeid, b"f.txt"), Err(FsError::Server(ENOENT)));
    let g = fs.lookup(ROOT_ID, b"g").unwrap();
    assert_eq!(g.nodeid, f.nodeid);
    assert_eq!(fs.rename(ROOT_ID, b"g", d.nodeid, b"h", 1), Ok(()));
    assert_eq!(fs.remove(ROOT_ID, b"dir", true), Err(FsError::Server(39)));
    fs.remove(d.nodeid, b"h", false).unwrap();
    fs.remove(ROOT_ID, b"dir", true).unwrap();
    assert_eq!(server.list("").unwrap(), Vec::<Vec<u8>>::new());
    let st = fs.statfs(ROOT_ID).unwrap();
    assert_eq!((st.blocks, st.bsize, st.namelen), (1000, 4096, 255));
    // Lookup counts: mkdir 1, create 1, lookup 1, readdirplus 1; give them back.
    let mut counts = server.lookups();
    counts.sort();
    assert_eq!(counts, vec![(d.nodeid.0, 1), (f.nodeid.0, 3)]);
    fs.forget(d.nodeid, 1).unwrap();
    fs.forget(f.nodeid, 3).unwrap();
    assert_eq!(server.lookups(), vec![]);
    assert_eq!(server.bad_forgets(), 0);
    assert_eq!(server.open_handles(), 0);
    fs.destroy().unwrap();
    assert!(server.destroyed());
    assert_eq!(dev.faults(), 0);
}

#[test]
fn several_requests_in_flight_and_stashed_completions() {
    let (_hal, dev, server, mut fs) = setup();
    let mut files = Vec::new();
    for i in 0..6u8 {
        let name = [b'a' + i];
        server.put_file(std::str::from_utf8(&name).unwrap(), &vec![i; 100 + usize::from(i)]);
        let e = fs.lookup(ROOT_ID, &name).unwrap();
        let o = fs.open(e.nodeid, open_flags::RDONLY, false).unwrap();
        files.push((e.nodeid, o.fh));
    }
    dev.set_auto(false);
    let mut bufs: Vec<Vec<u8>> = (0..6).map(|_| vec![0u8; 200]).collect();
    let mut tokens = Vec::new();
    for ((node, fh), buf) in files.iter().zip(bufs.iter_mut()) {
        let req =
            proto::Request::Read { op: proto::ReadOp::Data, node: *node, fh: *fh, offset: 0, size: 200 };
        // SAFETY: `bufs` outlives the requests: they are all polled below.
        tokens.push(unsafe { fs.submit(&req, &[], Some(buf.as_mut_slice())) }.unwrap());
    }
    assert_eq!(fs.poll().map(|r| r.is_ok()), None, "nothing processed yet");
    dev.process(1);
    let mut done = Vec::new();
    while let Some(c) = fs.poll() {
        let c = c.unwrap();
        let i = tokens.iter().position(|&t| t == c.token).unwrap();
        assert_eq!(c.result.unwrap().data_len(), 100 + i);
        done.push(i);
    }
    done.sort();
    assert_eq!(done, vec![0, 1, 2, 3, 4, 5]);
    for (i, b) in bufs.iter().enumerate() {
        assert!(b[..100 + i].iter().all(|&x| x == i as u8));
    }
    // A blocking call while others are in flight stashes their completions.
    dev.set_auto(true);
    let req = proto::Request::Getattr { node: files[0].0, fh: None };
    // SAFETY: no caller buffers.
    let t1 = unsafe { fs.submit(&req, &[], None) }.unwrap();
    let req = proto::Request::Getattr { node: files[1].0, fh: None };
    // SAFETY: as above.
    let t2 = unsafe { fs.submit(&req, &[], None) }.unwrap();
    assert_eq!(fs.getattr(files[2].0, None).unwrap().size, 102);
    let mut got = [fs.poll().unwrap().unwrap(), fs.poll().unwrap().unwrap()];
    got.sort_by_key(|c| c.token != t1);
    assert_eq!(got[0].token, t1);
    assert_eq!(got[1].token, t2);
    let size = |c: &super::device::Completion| {
        proto::parse_attr_out(c.result.unwrap().payload(), proto::Opcode::Getattr).unwrap().size
    };
    assert_eq!((size(&got[0]), size(&got[1])), (100, 101));
    assert!(fs.poll().is_none());
    // Busy when every slot is taken.
    dev.set_auto(false);
    let mut n = 0;
    loop {
        let req = proto::Request::Statfs { node: ROOT_ID };
        // SAFETY: no caller buffers.
        match unsafe { fs.submit(&req, &[], None) } {
            Ok(_) => n += 1,
            Err(e) => {
                assert_eq!(e, FsError::Busy);
                break;
            }
        }
    }
    assert_eq!(n, super::device::SLOTS);
    dev.process(1);
    while let Some(c) = fs.poll() {
        c.unwrap().result.unwrap();
    }
}

#[test]
fn adversarial_replies_fail_only_their_request() {
    let (_hal, dev, server, mut fs) = setup();
    server.put_file("f", b"0123456789");
    type Check = fn(&FsError) -> bool;
    let cases: Vec<(FuseMisbehave, Check)> = vec![
        (FuseMisbehave::Unique, |e| matches!(e, FsError::Proto(ProtoError::BadUnique { .. }))),
        (FuseMisbehave::Short(10), |e| matches!(e, FsError::Proto(ProtoError::ShortReply { len: 10 }))),
        (FuseMisbehave::HeaderLen(17), |e| {
            matches!(e, FsError::Proto(ProtoError::LengthMismatch { header: 17, .. }))
        }),
        (FuseMisbehave::ErrorWithPayload, |e| {
            matches!(e, FsError::Proto(ProtoError::ErrorWithPayload { errno: 5, .. }))
        }),
        (FuseMisbehave::Errno(3), |e| matches!(e, FsError::Proto(ProtoError::BadErrno(3)))),
        (FuseMisbehave::Errno(-5000), |e| matches!(e, FsError::Proto(ProtoError::BadErrno(-5000)))),
        (FuseMisbehave::Truncate(1), |e| matches!(e, FsError::Proto(ProtoError::BadPayloadLength { .. }))),
        // A mode with no file type in the entry's attributes.
        (FuseMisbehave::Corrupt { at: 40 + 61, value: 0xf0 }, |e| {
            matches!(e, FsError::Proto(ProtoError::BadValue(_)))
        }),
    ];
    for (m, want) in cases {
        server.misbehave(m);
        let r = fs.lookup(ROOT_ID, b"f");
        assert!(r.as_ref().is_err_and(want), "{m:?}: {r:?}");
        assert!(!fs.is_broken());
        // The driver stays usable.
        let e = fs.lookup(ROOT_ID, b"f").unwrap();
        fs.forget(e.nodeid, 1).unwrap();
    }
    // Bogus dirent records arrive as bytes; the iterator rejects them.
    let dh = fs.open(ROOT_ID, 0, true).unwrap().fh;
    let mut buf = vec![0u8; 4096];
    for (at, value) in [(16u32, 0xffu8), (16, 0), (24, b'/'), (20, 3)] {
        server.misbehave(FuseMisbehave::Corrupt { at, value });
        let n = fs.readdir(ROOT_ID, dh, 0, &mut buf, false).unwrap();
        let r: Vec<_> = DirentIter::new(&buf[..n], false).collect();
        assert!(matches!(r.first(), Some(Err(ProtoError::BadDirent { at: 0 }))), "{at}: {r:?}");
        let n = fs.readdir(ROOT_ID, dh, 0, &mut buf, false).unwrap();
        assert!(DirentIter::new(&buf[..n], false).all(|d| d.is_ok()));
    }
    // A write reply claiming more than was sent.
    let e = fs.lookup(ROOT_ID, b"f").unwrap();
    let fh = fs.open(e.nodeid, open_flags::RDWR, false).unwrap().fh;
    server.misbehave(FuseMisbehave::Corrupt { at: 0, value: 200 });
    assert!(matches!(fs.write(e.nodeid, fh, 0, b"abc"), Err(FsError::Proto(ProtoError::BadValue(_)))));
    assert_eq!(fs.write(e.nodeid, fh, 0, b"abc"), Ok(3));
    // A read reply longer than asked cannot happen (the device's buffer is
    // exactly the size), but one with an error payload on data is caught.
    server.misbehave(FuseMisbehave::ErrorWithPayload);
    assert!(matches!(fs.read(e.nodeid, fh, 0, &mut buf[..5]), Err(FsError::Proto(_))));
    assert_eq!(fs.read(e.nodeid, fh, 0, &mut buf[..5]), Ok(5));
    assert_eq!(&buf[..5], b"abc34");
    assert_eq!(dev.faults(), 0);
}

#[test]
fn queue_violations_break_and_reset_the_device() {
    let (hal, dev, server, mut fs) = setup();
    server.put_file("f", b"x");
    // Claims more bytes than the reply buffer has.
    dev.misbehave(Misbehave::ExtraLen(4096));
    let r = fs.lookup(ROOT_ID, b"f");
    assert!(matches!(r, Err(FsError::Queue(QueueError::UsedLenTooLong { .. }))), "{r:?}");
    assert!(fs.is_broken());
    assert_eq!(dev.status(), 0, "device reset");
    assert_eq!(fs.lookup(ROOT_ID, b"f"), Err(FsError::Broken));
    assert_eq!(fs.forget(NodeId(2), 1), Err(FsError::Broken));
    drop(fs);
    assert_eq!(hal.memory().live_allocations(), 0);
}

#[test]
fn forget_goes_to_hiprio_without_a_reply() {
    let (_hal, dev, server, mut fs) = setup();
    server.put_file("f", b"x");
    let e = fs.lookup(ROOT_ID, b"f").unwrap();
    let e2 = fs.lookup(ROOT_ID, b"f").unwrap();
    assert_eq!(e.nodeid, e2.nodeid);
    assert_eq!(server.lookups(), vec![(e.nodeid.0, 2)]);
    // Many more forgets than hiprio slots: completed ones are reaped.
    dev.set_auto(true);
    for _ in 0..40 {
        let _ = fs.lookup(ROOT_ID, b"f").unwrap();
        fs.forget(e.nodeid, 1).unwrap();
    }
    fs.forget(e.nodeid, 2).unwrap();
    assert_eq!(server.lookups(), vec![]);
    assert_eq!(server.forgets().len(), 41);
    assert_eq!(server.bad_forgets(), 0);
    // FORGET is not a request-queue operation.
    assert!(!server.ops().contains(&2));
    // A device that stops returning hiprio buffers: once every slot waits,
    // the wait hook runs, and giving up resets the device.
    dev.set_auto(false);
    for _ in 0..super::device::HIPRIO_QUEUE_SIZE {
        fs.forget_with(e.nodeid, 0, &mut || panic!("a slot was free")).unwrap();
    }
    assert_eq!(fs.forgets_in_flight(), super::device::HIPRIO_QUEUE_SIZE);
    let mut waits = 0;
    let r = fs.forget_with(e.nodeid, 0, &mut || {
        waits += 1;
        waits < 10
    });
    assert_eq!((r, waits), (Err(FsError::TimedOut), 10));
    assert!(fs.is_broken());
    assert_eq!(dev.status(), 0);
}

#[test]
fn requests_that_cannot_be_sent() {
    let (_hal, _dev, _server, mut fs) = setup();
    let req = proto::Request::Forget { node: NodeId(2), nlookup: 1 };
    // SAFETY: no buffers; refused before anything is queued.
    assert_eq!(unsafe { fs.submit(&req, &[], None) }, Err(FsError::InvalidArgument));
    let w = proto::Request::Write { node: NodeId(2), fh: FileHandle(1), offset: 0, size: 3 };
    // SAFETY: as above.
    assert_eq!(unsafe { fs.submit(&w, b"ab", None) }, Err(FsError::InvalidArgument));
    let mut big = vec![0u8; fs.max_read() as usize + 1];
    assert_eq!(fs.read(NodeId(2), FileHandle(1), 0, &mut big), Err(FsError::InvalidArgument));
    assert_eq!(fs.mkdir(ROOT_ID, b"a/b", 0o755), Err(FsError::Proto(ProtoError::InvalidName)));
    assert!(!fs.is_broken());
}

#[test]
fn fuzz_seed_corpus() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/virtio_fuse_reply");
    let mut n = 0;
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            fuzz_fuse_reply(&std::fs::read(e.path()).unwrap());
            n += 1;
        }
    }
    assert!(n > 0, "no seeds in {}", dir.display());
}

proptest! {
    /// Arbitrary reply bytes never panic the parsers or break the driver.
    #[test]
    fn arbitrary_replies(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        fuzz_fuse_reply(&data);
    }

    /// A plausible header with random payload bytes, unique patched in.
    #[test]
    fn arbitrary_payloads(payload in proptest::collection::vec(any::<u8>(), 0..300), error in prop_oneof![Just(0i32), -5000i32..5000]) {
        let mut d = vec![1u8; 16];
        d[4..8].copy_from_slice(&error.to_le_bytes());
        d.extend_from_slice(&payload);
        fuzz_fuse_reply(&d);
    }
}
