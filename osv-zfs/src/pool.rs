//! Opening a pool and reading it: blocks, objsets, dnodes, ZAPs, datasets.
//!
//! [`BlockReader`] reads a block through its block pointer
//! (module/zfs/zio.c, the read pipeline): embedded payloads and holes need
//! no I/O; otherwise each DVA is tried in turn (ditto copies) through its
//! top-level vdev ([`crate::vdev`]) until one passes the block's checksum
//! (fletcher2/4, SHA-256, `zio_checksum_error_impl`); a gang DVA is read as
//! a gang header (`zio_gbh_phys_t`: three block pointers, verified by its
//! embedded SHA-256) whose children's data is concatenated. The physical
//! bytes are then decompressed ([`crate::compress`]) to the logical size.
//!
//! [`Pool`] opens the pool from its vdev devices (labels, the vdev tree, the
//! active uberblock), reads the MOS (`objset_phys_t` behind the uberblock's
//! root block pointer), refuses active read features it does not know
//! (`features_for_read`), and lists datasets by walking the DSL from the
//! object directory's `root_dataset`.

use crate::blkptr::{BlockPointer, Dva, BLKPTR_SIZE, BPE_PAYLOAD_SIZE};
use crate::bytes::Endian;
use crate::checksum::{self, func as ck, Checksum};
use crate::compress;
use crate::device::BlockDevice;
use crate::dnode::{ost, ot, DnodePhys, ObjsetPhys, DNODE_SIZE};
use crate::dsl::{DslDataset, DslDir};
use crate::feature::{self, FeatureName};
use crate::label::VdevLabels;
use crate::nvlist::NvList;
use crate::uberblock::Uberblock;
use crate::vdev::{most_telling, ScrubFindings, Vdev};
use crate::zap::{self, FatHeader, Leaf, ZapValue};
use crate::{Error, Result};
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

/// `SPA_GANGBLOCKSIZE` (include/sys/spa.h): a gang header is 512 bytes.
pub const SPA_GANGBLOCKSIZE: usize = 512;
/// `SPA_GBH_NBLKPTRS`: block pointers in a gang header.
pub const SPA_GBH_NBLKPTRS: usize = 3;
/// Gang headers nest at most this deep here (OpenZFS writes one level,
/// rarely two).
pub const MAX_GANG_DEPTH: usize = 4;
/// `DMU_POOL_DIRECTORY_OBJECT` (include/sys/dmu.h): object 1 of the MOS.
pub const DMU_POOL_DIRECTORY_OBJECT: u64 = 1;
/// Most top-level vdevs accepted.
const MAX_TOP_VDEVS: u64 = 1024;
/// Most ZAP entries returned by one iteration.
const MAX_ZAP_ENTRIES: usize = 1 << 20;
/// Most blocks of an external fat ZAP pointer table.
const MAX_PTRTBL_BLOCKS: u64 = 1 << 16;
/// Most DSL directories walked.
const MAX_DSL_DIRS: usize = 1 << 16;
/// Deepest dataset name tree walked.
const MAX_DSL_DEPTH: usize = 64;

/// Blocks kept by [`BlockReader`]'s cache (indirect blocks, dnode blocks
/// and ZAP blocks are read again and again while walking a tree).
const CACHE_BLOCKS: usize = 32;
/// Largest block the cache keeps.
const CACHE_MAX_BLOCK: usize = 128 << 10;

/// Reads blocks through block pointers from the top-level vdevs of a pool.
#[derive(Debug)]
pub struct BlockReader<D> {
    devs: Vec<D>,
    tops: Vec<Option<Vdev>>,
    /// Recently read logical blocks, keyed by their whole block pointer
    /// (DVAs, birth and checksum make it unique); replaced round-robin.
    cache: Vec<(BlockPointer, Vec<u8>)>,
    next_slot: usize,
}

/// Whether `data` (a block's physical bytes) matches `bp`'s checksum.
/// Blocks of encrypted datasets other than objsets keep only 128 bits of
/// checksum in words 0 and 1 (`zio_checksum_handle_crypt`): compared
/// directly (authenticated blocks) or after folding words 2 and 3 in
/// (encrypted blocks). ZIL blocks carry their checksum inside
/// (`zilog`, `zilog2`), with the block pointer's checksum as the verifier.
pub fn verify_block(bp: &BlockPointer, data: &[u8]) -> Result<bool> {
    let id = bp.checksum();
    let (actual, want) = match id {
        ck::OFF | ck::NOPARITY => return Ok(true),
        ck::ZILOG | ck::ZILOG2 => match checksum::embedded_checksum(data, id, bp.cksum) {
            Ok((_, actual, stored)) => (actual, stored),
            Err(_) => return Ok(false),
        },
        _ => (checksum::compute(id, data, bp.byte_order())?, bp.cksum),
    };
    // zio_checksum_error_impl: truncated (MAC-carrying) checksums of
    // encrypted datasets, objsets excepted.
    if bp.uses_crypt() && bp.object_type() != ot::OBJSET {
        let w = actual.0;
        let want = [want.0[0], want.0[1]];
        return Ok([w[0], w[1]] == want || [w[0] ^ w[2], w[1] ^ w[3]] == want);
    }
    Ok(actual == want)
}

impl<D: BlockDevice> BlockReader<D> {
    /// A reader over `devs` with top-level vdev `i` at `tops[i]` (`None`:
    /// missing), whose leaves name indices into `devs`.
    pub fn new(devs: Vec<D>, tops: Vec<Option<Vdev>>) -> BlockReader<D> {
        BlockReader { devs, tops, cache: Vec::new(), next_slot: 0 }
    }

    /// The top-level vdevs.
    pub fn vdevs(&self) -> &[Option<Vdev>] {
        &self.tops
    }

    /// Reads `size` bytes of one DVA, accepting the first version `verify`
    /// accepts.
    pub fn read_dva(
        &mut self,
        dva: &Dva,
        size: usize,
        verify: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Result<Vec<u8>> {
        let top = usize::try_from(dva.vdev()).ok().and_then(|v| self.tops.get(v)).and_then(Option::as_ref);
        let top = top.ok_or(Error::NoSuchVdev(dva.vdev()))?;
        top.read(&mut self.devs, dva.offset(), size, verify)
    }

    /// Forgets every cached block (after the devices' contents changed
    /// underneath, as in fault-injection tests).
    pub fn clear_cache(&mut self) {
        self.cache.clear();
        self.next_slot = 0;
    }

    /// Reads every copy of `bp` as a scrub does (zdb `-cc`,
    /// `ZIO_FLAG_SCRUB`): each DVA on its own (gang DVAs through their
    /// header), every mirror side, raidz parity checked. Returns, per DVA,
    /// whether it verified, what was found damaged below it, and the
    /// physical bytes of the first copy that verified (or the most telling
    /// error). Holes and embedded pointers have no copies.
    pub fn scrub_block(&mut self, bp: &BlockPointer) -> BlockScrub {
        let mut out =
            BlockScrub { copies: Vec::new(), found: ScrubFindings::default(), data: Err(Error::NoValidCopy) };
        if bp.is_hole() || bp.is_embedded() {
            return out;
        }
        let psize = match usize::try_from(bp.psize()) {
            Ok(p) => p,
            Err(_) => {
                out.data = Err(Error::TooLarge);
                return out;
            }
        };
        if let Err(e) = self.check_checksum_function(bp) {
            out.data = Err(e);
            return out;
        }
        let mut worst: Option<Error> = None;
        let mut good: Option<Vec<u8>> = None;
        for dva in bp.dvas().iter().copied().filter(Dva::is_valid) {
            let got = if dva.is_gang() {
                self.read_gang(bp, &dva, psize, 0)
            } else {
                let top =
                    usize::try_from(dva.vdev()).ok().and_then(|v| self.tops.get(v)).and_then(Option::as_ref);
                match top {
                    None => Err(Error::NoSuchVdev(dva.vdev())),
                    Some(top) => top.scrub(
                        &mut self.devs,
                        dva.offset(),
                        psize,
                        &mut |d| verify_block(bp, d).unwrap_or(false),
                        &mut out.found,
                    ),
                }
            };
            match got {
                Ok(data) => {
                    out.copies.push((dva, Ok(())));
                    if good.is_none() {
                        good = Some(data);
                    }
                }
                Err(e) => {
                    out.copies.push((dva, Err(e)));
                    worst = Some(match worst {
                        Some(w) => most_telling(w, e),
                        None => e,
                    });
                }
            }
        }
        out.data = match (good, worst) {
            (Some(d), _) => Ok(d),
            (None, Some(e)) => Err(e),
            (None, None) => Err(Error::NoValidCopy),
        };
        out
    }

    fn check_checksum_function(&self, bp: &BlockPointer) -> Result {
        match bp.checksum() {
            ck::OFF
            | ck::NOPARITY
            | ck::ZILOG
            | ck::ZILOG2
            | ck::FLETCHER_2
            | ck::FLETCHER_4
            | ck::SHA256 => Ok(()),
            other => Err(Error::UnsupportedChecksum(other)),
        }
    }

    /// Reads the block behind `bp` and returns its logical contents
    /// (`lsize` bytes): holes as zeros, embedded payloads decoded, other
    /// blocks verified and decompressed.
    pub fn read_block(&mut self, bp: &BlockPointer) -> Result<Vec<u8>> {
        if let Some((_, data)) = self.cache.iter().find(|(k, _)| k == bp) {
            return Ok(data.clone());
        }
        let data = self.read_block_uncached(bp)?;
        if !bp.is_hole() && !bp.is_embedded() && data.len() <= CACHE_MAX_BLOCK {
            if self.cache.len() < CACHE_BLOCKS {
                self.cache.push((*bp, data.clone()));
            } else {
                self.cache[self.next_slot] = (*bp, data.clone());
                self.next_slot = (self.next_slot + 1) % CACHE_BLOCKS;
            }
        }
        Ok(data)
    }

    fn read_block_uncached(&mut self, bp: &BlockPointer) -> Result<Vec<u8>> {
        if bp.is_embedded() {
            let mut payload = [0u8; BPE_PAYLOAD_SIZE];
            let psize = bp.embedded_payload(&mut payload)?;
            let lsize = bp.embedded_lsize() as usize;
            if lsize > crate::dnode::SPA_MAXBLOCKSIZE as usize {
                return Err(Error::BadEmbedded);
            }
            let mut out = vec![0u8; lsize];
            compress::decompress(bp.compression(), &payload[..psize], &mut out)?;
            return Ok(out);
        }
        let lsize = usize::try_from(bp.lsize()).map_err(|_| Error::TooLarge)?;
        if bp.is_hole() {
            return Ok(vec![0u8; lsize]);
        }
        let phys = self.read_physical(bp, 0)?;
        if bp.compression() == compress::func::OFF || bp.compression() == 0 {
            let mut phys = phys;
            phys.resize(lsize, 0);
            return Ok(phys);
        }
        let mut out = vec![0u8; lsize];
        compress::decompress(bp.compression(), &phys, &mut out)?;
        Ok(out)
    }

    /// Reads the `psize` physical bytes of `bp` from the first DVA that
    /// verifies.
    fn read_physical(&mut self, bp: &BlockPointer, depth: usize) -> Result<Vec<u8>> {
        self.check_checksum_function(bp)?;
        let psize = usize::try_from(bp.psize()).map_err(|_| Error::TooLarge)?;
        let mut worst = Error::NoValidCopy;
        let mut tried = false;
        let dvas: Vec<Dva> = bp.dvas().iter().copied().filter(Dva::is_valid).collect();
        for dva in dvas {
            let got = if dva.is_gang() {
                self.read_gang(bp, &dva, psize, depth)
            } else {
                self.read_dva(&dva, psize, &mut |d| verify_block(bp, d).unwrap_or(false))
            };
            match got {
                Ok(data) => return Ok(data),
                Err(e) if tried => worst = most_telling(worst, e),
                Err(e) => worst = e,
            }
            tried = true;
        }
        Err(worst)
    }

    /// Reads a gang block: the header at `dva` (verifier: `BP_IDENTITY`'s
    /// vdev and offset and the birth txg, `zio_checksum_gang_verifier`),
    /// then its children, concatenated to `psize` bytes and verified
    /// against `bp`.
    fn read_gang(&mut self, bp: &BlockPointer, dva: &Dva, psize: usize, depth: usize) -> Result<Vec<u8>> {
        if depth >= MAX_GANG_DEPTH {
            return Err(Error::GangTooDeep);
        }
        let id = bp.dva[0];
        let verifier = Checksum([id.vdev(), id.offset(), bp.birth, 0]);
        let header = self.read_dva(dva, SPA_GANGBLOCKSIZE, &mut |d| {
            checksum::verify_embedded(d, ck::GANG_HEADER, verifier).is_ok()
        })?;
        let endian = checksum::eck_endian(&header)?;
        let mut data = Vec::with_capacity(psize);
        for i in 0..SPA_GBH_NBLKPTRS {
            let child = BlockPointer::parse(&header[i * BLKPTR_SIZE..], endian)?;
            if child.is_hole() || child.is_embedded() {
                continue;
            }
            let part = self.read_physical(&child, depth + 1)?;
            data.extend_from_slice(&part);
            if data.len() >= psize {
                break;
            }
        }
        data.resize(psize, 0);
        if verify_block(bp, &data)? {
            Ok(data)
        } else {
            Err(Error::NoValidCopy)
        }
    }
}

/// Every copy of one block checked ([`BlockReader::scrub_block`]).
#[derive(Debug, Clone)]
pub struct BlockScrub {
    /// Each valid DVA and whether its data verified.
    pub copies: Vec<(Dva, Result)>,
    /// Damage found below the DVAs (bad mirror sides, raidz columns).
    pub found: ScrubFindings,
    /// The physical bytes of the first copy that verified, or the most
    /// telling error of all copies.
    pub data: Result<Vec<u8>>,
}

/// An objset: the dataset object it belongs to (0 for the MOS), its type
/// and its meta-dnode.
#[derive(Debug, Clone)]
pub struct Objset {
    /// The DSL dataset object (0: the MOS).
    pub id: u64,
    /// `os_type` (`DMU_OST_*`).
    pub os_type: u64,
    /// The meta-dnode (object numbers index its data).
    pub meta: Dnode,
}

/// A dnode read from an objset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dnode {
    raw: Vec<u8>,
    endian: Endian,
    /// The objset's dataset object (0: MOS).
    pub objset: u64,
    /// The object number.
    pub object: u64,
}

impl Dnode {
    /// Wraps checked bytes (at least one slot) in byte order `endian`.
    pub fn new(raw: &[u8], endian: Endian, objset: u64, object: u64) -> Result<Dnode> {
        let d = DnodePhys::new_checked(raw, endian)?;
        if d.object_type() == ot::NONE {
            return Err(Error::NoSuchObject);
        }
        Ok(Dnode { raw: Vec::from(d.as_bytes()), endian, objset, object })
    }

    /// The checked view of the dnode.
    pub fn phys(&self) -> Result<DnodePhys<'_>> {
        DnodePhys::new_checked(&self.raw, self.endian)
    }

    /// The byte order of the dnode (and of its bonus buffer).
    pub fn endian(&self) -> Endian {
        self.endian
    }
}

/// What a dataset is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DatasetKind {
    /// A live filesystem, volume or other head dataset.
    Head,
    /// A snapshot (`pool/fs@snap`).
    Snapshot,
}

/// One dataset, as `osv-zfs datasets` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetInfo {
    /// Full name: `pool/fs`, `pool/fs@snap`.
    pub name: String,
    /// Head or snapshot.
    pub kind: DatasetKind,
    /// The DSL dataset object in the MOS (zdb's `ID`).
    pub id: u64,
    /// `ds_creation_txg` (zdb's `cr_txg`).
    pub creation_txg: u64,
    /// Objects in its objset (`ds_bp.blk_fill`, zdb's `objects`).
    pub objects: u64,
    /// Its objset's `os_type` (`DMU_OST_ZFS`: ZPL, `DMU_OST_ZVOL`: volume).
    pub os_type: u64,
    /// For clones, the origin snapshot's name.
    pub origin: Option<String>,
}

impl DatasetInfo {
    /// zdb's name for the objset type: `ZPL`, `ZVOL`, `META`, `OTHER`.
    pub fn os_type_name(&self) -> &'static str {
        match self.os_type {
            ost::ZFS => "ZPL",
            ost::ZVOL => "ZVOL",
            ost::META => "META",
            _ => "OTHER",
        }
    }
}

/// An error with the object it happened on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectError {
    /// The objset's dataset object (0: MOS).
    pub objset: u64,
    /// The object.
    pub object: u64,
    /// What the object was supposed to be.
    pub what: &'static str,
    /// What went wrong.
    pub error: Error,
}

impl fmt::Display for ObjectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.objset == 0 {
            write!(f, "MOS object {} ({}): {}", self.object, self.what, self.error)
        } else {
            write!(f, "objset {} object {} ({}): {}", self.objset, self.object, self.what, self.error)
        }
    }
}

impl core::error::Error for ObjectError {}

/// An open pool.
#[derive(Debug)]
pub struct Pool<D> {
    reader: BlockReader<D>,
    /// The newest label config.
    pub config: NvList,
    /// `ZPOOL_CONFIG_POOL_NAME`.
    pub name: String,
    /// `ZPOOL_CONFIG_POOL_GUID`.
    pub guid: u64,
    /// The active uberblock.
    pub uberblock: Uberblock,
    /// The MOS.
    pub mos: Objset,
}

impl<D: BlockDevice> Pool<D> {
    /// Opens the pool on `devs` (every vdev device of one pool; missing
    /// mirror sides or raidz columns are tolerated where redundancy allows):
    /// reads the labels, builds the vdev tree, picks the active uberblock
    /// over all devices, reads the MOS and checks `features_for_read`.
    pub fn open(mut devs: Vec<D>) -> Result<Pool<D>> {
        let mut labels = Vec::with_capacity(devs.len());
        for dev in devs.iter_mut() {
            labels.push(VdevLabels::read(dev)?);
        }
        // The newest config (by its txg) speaks for the pool.
        let configs: Vec<(usize, &NvList)> =
            labels.iter().enumerate().filter_map(|(i, l)| l.config().map(|c| (i, c))).collect();
        let (_, config) = configs
            .iter()
            .max_by_key(|(_, c)| c.get_u64("txg").unwrap_or(0))
            .copied()
            .ok_or(Error::NoLabel)?;
        let guid = config.get_u64("pool_guid").ok_or(Error::BadVdevTree)?;
        if configs.iter().any(|(_, c)| c.get_u64("pool_guid") != Some(guid)) {
            return Err(Error::MixedPools);
        }
        let name = String::from(config.get_str("name").ok_or(Error::BadVdevTree)?);
        let children = config.get_u64("vdev_children").unwrap_or(1);
        let max_id = configs
            .iter()
            .filter_map(|(_, c)| c.get_nvlist("vdev_tree").and_then(|t| t.get_u64("id")))
            .max()
            .unwrap_or(0);
        let count = children.max(max_id.saturating_add(1));
        if count > MAX_TOP_VDEVS {
            return Err(Error::BadVdevTree);
        }
        let mut tops: Vec<Option<Vdev>> = vec![None; count as usize];
        let mut by_txg = configs.clone();
        by_txg.sort_by_key(|(_, c)| core::cmp::Reverse(c.get_u64("txg").unwrap_or(0)));
        for (_, c) in &by_txg {
            let tree = c.get_nvlist("vdev_tree").ok_or(Error::BadVdevTree)?;
            let id = tree.get_u64("id").unwrap_or(0) as usize;
            if tops[id].is_none() {
                tops[id] = Some(Vdev::from_config(tree)?);
            }
        }
        for (i, c) in &configs {
            let leaf = c.get_u64("guid").ok_or(Error::BadVdevTree)?;
            let id = c.get_nvlist("vdev_tree").and_then(|t| t.get_u64("id")).unwrap_or(0) as usize;
            if let Some(top) = tops[id].as_mut() {
                top.attach(leaf, *i);
            }
        }
        let uberblock = labels
            .iter()
            .filter_map(VdevLabels::active_uberblock)
            .map(|a| a.uberblock)
            .max_by(|a, b| a.cmp_active(b))
            .ok_or(Error::NoUberblock)?;
        let config = config.clone();
        let mut reader = BlockReader::new(devs, tops);
        let mos = read_objset(&mut reader, &uberblock.rootbp, 0)?;
        let mut pool = Pool { reader, config, name, guid, uberblock, mos };
        pool.check_features()?;
        Ok(pool)
    }

    /// The block reader.
    pub fn reader(&mut self) -> &mut BlockReader<D> {
        &mut self.reader
    }

    /// Reads the block behind `bp` (see [`BlockReader::read_block`]).
    pub fn read_block(&mut self, bp: &BlockPointer) -> Result<Vec<u8>> {
        self.reader.read_block(bp)
    }

    /// Refuses an active read feature this crate does not support.
    fn check_features(&mut self) -> Result {
        let mos = self.mos.clone();
        let dir = self.dnode(&mos, DMU_POOL_DIRECTORY_OBJECT)?;
        let obj = match self.zap_lookup(&dir, b"features_for_read") {
            Ok(v) => v.first,
            Err(Error::NotFound) => return Ok(()),
            Err(e) => return Err(e),
        };
        let feats = self.dnode(&mos, obj)?;
        for (name, value) in self.zap_entries(&feats)? {
            check_feature(&name, value.first)?;
        }
        Ok(())
    }

    /// Reads object `object` of `os`.
    pub fn dnode(&mut self, os: &Objset, object: u64) -> Result<Dnode> {
        let meta = os.meta.phys()?;
        let bs = meta.data_block_size();
        let per_block = bs / DNODE_SIZE as u64;
        if per_block == 0 {
            return Err(Error::BadDnode);
        }
        let (block, endian) = self.read_object_block(&os.meta, object / per_block)?;
        let at = (object % per_block) as usize * DNODE_SIZE;
        let raw = block.get(at..).ok_or(Error::BadDnode)?;
        let d = DnodePhys::new_checked(raw, endian)?;
        if d.object_type() == ot::NONE {
            return Err(Error::NoSuchObject);
        }
        Dnode::new(raw, endian, os.id, object)
    }

    /// Finds the level-0 block pointer of block `blkid` of an object by
    /// walking its indirect tree (`dbuf_findbp`, module/zfs/dbuf.c): `None`
    /// for a hole at any level or a block past `dn_maxblkid`. Each indirect
    /// block holds `1 << (dn_indblkshift - 7)` block pointers in its own
    /// byte order; the depth is bounded by `dn_nlevels` (checked).
    pub fn block_pointer(&mut self, dn: &Dnode, blkid: u64) -> Result<Option<BlockPointer>> {
        // The same walk as a cached read, with a cache that lives for this call only.
        self.cached_block_pointer(dn, &mut crate::fs::ReadCache::default(), blkid)
    }

    /// Reads level-0 block `blkid` of an object and returns it with its
    /// byte order; holes (and blocks past `dn_maxblkid`) read as zeros of
    /// the object's block size in the dnode's byte order.
    pub fn read_object_block(&mut self, dn: &Dnode, blkid: u64) -> Result<(Vec<u8>, Endian)> {
        match self.block_pointer(dn, blkid)? {
            Some(bp) => Ok((self.reader.read_block(&bp)?, bp.byte_order())),
            None => Ok((vec![0u8; dn.phys()?.data_block_size() as usize], dn.endian)),
        }
    }

    /// Reads `buf.len()` bytes of an object's data from byte `offset`
    /// (holes read as zeros).
    pub fn read_object(&mut self, dn: &Dnode, offset: u64, buf: &mut [u8]) -> Result {
        let bs = dn.phys()?.data_block_size();
        if bs == 0 {
            return Err(Error::BadDnode);
        }
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset.checked_add(done as u64).ok_or(Error::OutOfRange)?;
            let (block, _) = self.read_object_block(dn, pos / bs)?;
            let within = (pos % bs) as usize;
            let avail = block.get(within..).ok_or(Error::BadDnode)?;
            let n = avail.len().min(buf.len() - done);
            if n == 0 {
                return Err(Error::BadDnode);
            }
            buf[done..done + n].copy_from_slice(&avail[..n]);
            done += n;
        }
        Ok(())
    }

    /// Every entry of a ZAP object (micro or fat), in on-disk order.
    pub fn zap_entries(&mut self, dn: &Dnode) -> Result<Vec<(Vec<u8>, ZapValue)>> {
        let mut out = Vec::new();
        self.zap_walk(dn, false, &mut |name, v, _| {
            if out.len() >= MAX_ZAP_ENTRIES {
                return Err(Error::LimitExceeded);
            }
            out.push((Vec::from(name), v));
            Ok(())
        })?;
        Ok(out)
    }

    /// Every entry of a ZAP object with its whole value decoded: the
    /// `num_ints` integers of `int_len` bytes (fat ZAP arrays such as SA
    /// layouts; a micro ZAP value is one u64).
    pub fn zap_arrays(&mut self, dn: &Dnode) -> Result<Vec<(Vec<u8>, Vec<u64>)>> {
        let mut out = Vec::new();
        self.zap_walk(dn, true, &mut |name, v, bytes| {
            if out.len() >= MAX_ZAP_ENTRIES {
                return Err(Error::LimitExceeded);
            }
            let ints = if bytes.is_empty() && v.num_ints == 1 {
                vec![v.first]
            } else {
                bytes
                    .chunks_exact(usize::from(v.int_len))
                    .map(|c| c.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
                    .collect()
            };
            out.push((Vec::from(name), ints));
            Ok(())
        })?;
        Ok(out)
    }

    /// Walks a ZAP object: micro entries pass no value bytes; fat entries
    /// pass them when `full`.
    fn zap_walk(&mut self, dn: &Dnode, full: bool, push: &mut zap::EntryVisitor<'_>) -> Result {
        let (block0, endian) = self.read_object_block(dn, 0)?;
        match zap::block_type(&block0, endian)? {
            zap::ZBT_MICRO => zap::micro_entries(&block0, endian, &mut |n, v| push(n, v, &[]))?,
            zap::ZBT_HEADER => {
                let hdr = FatHeader::parse(&block0, endian)?;
                let max = dn.phys()?.max_blkid();
                let mut leaves = BTreeSet::new();
                let mut add = |b: u64| {
                    if b == 0 || b > max {
                        return Err(Error::BadZap);
                    }
                    leaves.insert(b);
                    Ok(())
                };
                if hdr.ptrtbl_numblks == 0 {
                    hdr.embedded_table(&block0, endian, &mut add)?;
                } else {
                    if hdr.ptrtbl_numblks > max || hdr.ptrtbl_numblks > MAX_PTRTBL_BLOCKS {
                        return Err(Error::BadZap);
                    }
                    for b in 0..hdr.ptrtbl_numblks {
                        let (blk, e) = self.read_object_block(dn, hdr.ptrtbl_blk.saturating_add(b))?;
                        for w in blk.chunks_exact(8) {
                            add(e.u64_from([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]))?;
                        }
                    }
                }
                for b in leaves {
                    let (blk, e) = self.read_object_block(dn, b)?;
                    let leaf = Leaf::new_checked(&blk, e)?;
                    if full {
                        leaf.entries_with_values(push)?;
                    } else {
                        leaf.entries(&mut |n, v| push(n, v, &[]))?;
                    }
                }
            }
            _ => return Err(Error::BadZap),
        }
        Ok(())
    }

    /// Looks up `name` in a ZAP object.
    pub fn zap_lookup(&mut self, dn: &Dnode, name: &[u8]) -> Result<ZapValue> {
        self.zap_entries(dn)?.into_iter().find(|(n, _)| n == name).map(|(_, v)| v).ok_or(Error::NotFound)
    }

    /// Reads a MOS object whose bonus buffer has type `ty` and returns its
    /// dnode. The bonus type, not the object type, is checked: an
    /// extensible dataset (`com.delphix:extensible_dataset`) is a ZAP object
    /// (`DMU_OTN_ZAP_METADATA`) with a `DMU_OT_DSL_DATASET` bonus
    /// (dsl_dataset.c, `dsl_dataset_create_sync_dd`).
    fn mos_object(&mut self, object: u64, ty: u8) -> Result<Dnode> {
        let mos = self.mos.clone();
        let dn = self.dnode(&mos, object)?;
        let t = dn.phys()?.bonus_type();
        if t != ty {
            return Err(Error::WrongBonusType(t));
        }
        Ok(dn)
    }

    /// The DSL dir `object`.
    pub fn dsl_dir(&mut self, object: u64) -> Result<DslDir> {
        let dn = self.mos_object(object, ot::DSL_DIR)?;
        DslDir::parse(dn.phys()?.bonus(), dn.endian())
    }

    /// The DSL dataset `object`.
    pub fn dsl_dataset(&mut self, object: u64) -> Result<DslDataset> {
        let dn = self.mos_object(object, ot::DSL_DATASET)?;
        DslDataset::parse(dn.phys()?.bonus(), dn.endian())
    }

    /// Opens the objset of dataset `object`.
    pub fn dataset_objset(&mut self, object: u64) -> Result<Objset> {
        let ds = self.dsl_dataset(object)?;
        read_objset(&mut self.reader, &ds.bp, object)
    }

    /// Every dataset (filesystems, volumes, snapshots; clones carry their
    /// origin), sorted by name. Hidden directories (`$MOS`, `$FREE`,
    /// `$ORIGIN`) are skipped, as zdb does.
    pub fn datasets(&mut self) -> core::result::Result<Vec<DatasetInfo>, ObjectError> {
        let mos_err =
            |object: u64, what: &'static str| move |error| ObjectError { objset: 0, object, what, error };
        let mos = self.mos.clone();
        let dir = self.dnode(&mos, DMU_POOL_DIRECTORY_OBJECT).map_err(mos_err(1, "object directory"))?;
        let root =
            self.zap_lookup(&dir, b"root_dataset").map_err(mos_err(1, "object directory: root_dataset"))?;
        let mut out = Vec::new();
        let mut origins: Vec<(usize, u64)> = Vec::new();
        let mut seen = BTreeSet::new();
        let mut stack = vec![(root.first, self.name.clone(), 0usize)];
        while let Some((dir_obj, name, depth)) = stack.pop() {
            if depth > MAX_DSL_DEPTH || seen.len() >= MAX_DSL_DIRS || !seen.insert(dir_obj) {
                return Err(ObjectError {
                    objset: 0,
                    object: dir_obj,
                    what: "dsl_dir",
                    error: Error::LimitExceeded,
                });
            }
            let dir = self.dsl_dir(dir_obj).map_err(mos_err(dir_obj, "dsl_dir"))?;
            if dir.head_dataset_obj != 0 {
                let head = dir.head_dataset_obj;
                let ds = self.dsl_dataset(head).map_err(mos_err(head, "dsl_dataset"))?;
                let info = self.dataset_info(head, &ds, name.clone(), DatasetKind::Head)?;
                if dir.origin_obj != 0 {
                    origins.push((out.len(), dir.origin_obj));
                }
                out.push(info);
                if ds.snapnames_zapobj != 0 {
                    let z = ds.snapnames_zapobj;
                    let zdn = self.mos_any(z).map_err(mos_err(z, "snapshot names ZAP"))?;
                    let snaps = self.zap_entries(&zdn).map_err(mos_err(z, "snapshot names ZAP"))?;
                    for (snap, v) in snaps {
                        let sname = alloc::format!("{name}@{}", String::from_utf8_lossy(&snap));
                        let sds =
                            self.dsl_dataset(v.first).map_err(mos_err(v.first, "snapshot dsl_dataset"))?;
                        let info = self.dataset_info(v.first, &sds, sname, DatasetKind::Snapshot)?;
                        out.push(info);
                    }
                }
            }
            if dir.child_dir_zapobj != 0 {
                let z = dir.child_dir_zapobj;
                let zdn = self.mos_any(z).map_err(mos_err(z, "child dir ZAP"))?;
                let children = self.zap_entries(&zdn).map_err(mos_err(z, "child dir ZAP"))?;
                for (child, v) in children {
                    if child.first() == Some(&b'$') {
                        continue;
                    }
                    stack.push((
                        v.first,
                        alloc::format!("{name}/{}", String::from_utf8_lossy(&child)),
                        depth + 1,
                    ));
                }
            }
        }
        let names: BTreeMap<u64, String> = out.iter().map(|d| (d.id, d.name.clone())).collect();
        for (i, origin) in origins {
            out[i].origin = names.get(&origin).cloned();
        }
        out.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
        Ok(out)
    }

    fn mos_any(&mut self, object: u64) -> Result<Dnode> {
        let mos = self.mos.clone();
        self.dnode(&mos, object)
    }

    fn dataset_info(
        &mut self,
        id: u64,
        ds: &DslDataset,
        name: String,
        kind: DatasetKind,
    ) -> core::result::Result<DatasetInfo, ObjectError> {
        let os_type = if ds.bp.is_hole() {
            0
        } else {
            read_objset(&mut self.reader, &ds.bp, id)
                .map_err(|error| ObjectError { objset: 0, object: id, what: "objset of dsl_dataset", error })?
                .os_type
        };
        Ok(DatasetInfo {
            name,
            kind,
            id,
            creation_txg: ds.creation_txg,
            objects: ds.bp.fill,
            os_type,
            origin: None,
        })
    }
}

/// Refuses feature `guid` when it is active (`refcount` > 0) and not
/// supported.
pub fn check_feature(guid: &[u8], refcount: u64) -> Result {
    if refcount > 0 && !feature::is_supported(guid) {
        return Err(Error::UnsupportedFeature(FeatureName::new(guid)));
    }
    Ok(())
}

/// Reads the objset behind `bp` for dataset object `id` (0: MOS).
fn read_objset<D: BlockDevice>(reader: &mut BlockReader<D>, bp: &BlockPointer, id: u64) -> Result<Objset> {
    if bp.object_type() != ot::OBJSET && !bp.is_embedded() {
        return Err(Error::WrongObjectType(bp.object_type()));
    }
    let data = reader.read_block(bp)?;
    let endian = bp.byte_order();
    let os = ObjsetPhys::new_checked(&data, endian)?;
    let meta = Dnode::new(os.meta_dnode()?.as_bytes(), endian, id, 0)?;
    Ok(Objset { id, os_type: os.os_type(), meta })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::checksum::{fill_label_checksum, fletcher_4};
    use crate::device::MemDevice;
    use crate::label::{label_offset, VDEV_PHYS_OFFSET, VDEV_PHYS_SIZE, VDEV_UBERBLOCK_RING_OFFSET};
    use crate::nvlist::NvValue;
    use crate::vdev::VDEV_LABEL_START_SIZE;

    /// Writes label 0 of a one-disk synthetic pool `synth` (pool guid 7,
    /// vdev guid 8, txg 4, version 5000) with one uberblock whose root block
    /// pointer is `rootbp` (the 128 bytes of a `blkptr_t`). Shared by the
    /// synthetic-pool tests here and in `vfs`.
    pub(crate) fn write_synthetic_label(disk: &mut [u8], rootbp: &[u8]) {
        let tree = NvList::new()
            .with("type", NvValue::String("file".into()))
            .with("id", NvValue::Uint64(0))
            .with("guid", NvValue::Uint64(8))
            .with("ashift", NvValue::Uint64(9));
        let config = NvList::new()
            .with("version", NvValue::Uint64(5000))
            .with("name", NvValue::String("synth".into()))
            .with("txg", NvValue::Uint64(4))
            .with("pool_guid", NvValue::Uint64(7))
            .with("guid", NvValue::Uint64(8))
            .with("vdev_children", NvValue::Uint64(1))
            .with("vdev_tree", NvValue::NvList(tree));
        let size = disk.len() as u64;
        let off = label_offset(size, 0, VDEV_PHYS_OFFSET).unwrap() as usize;
        let packed = config.pack(LE).unwrap();
        disk[off..off + packed.len()].copy_from_slice(&packed);
        fill_label_checksum(&mut disk[off..off + VDEV_PHYS_SIZE], off as u64, LE).unwrap();
        let off = label_offset(size, 0, VDEV_UBERBLOCK_RING_OFFSET).unwrap() as usize;
        let ub = &mut disk[off..off + 1024];
        // ub_magic, ub_version, ub_txg, ub_guid_sum, ub_timestamp (uberblock_t).
        for (i, v) in [0x00ba_b10c_u64, 5000, 4, 15, 1].iter().enumerate() {
            ub[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        ub[40..168].copy_from_slice(rootbp);
        fill_label_checksum(ub, off as u64, LE).unwrap();
    }

    const LE: Endian = Endian::Little;

    /// A little-endian, uncompressed, fletcher4 block pointer to `data`
    /// at the given data-area offsets (ditto copies).
    fn bp_to(offsets: &[u64], data: &[u8], ty: u8) -> [u8; BLKPTR_SIZE] {
        let mut b = [0u8; BLKPTR_SIZE];
        let sectors = data.len() as u64 >> 9;
        let mut w = [0u64; 16];
        for (i, off) in offsets.iter().enumerate() {
            w[i * 2] = sectors;
            w[i * 2 + 1] = off >> 9;
        }
        w[6] = (sectors - 1) | (sectors - 1) << 16 | 2 << 32 | 7 << 40 | u64::from(ty) << 48 | 1 << 63;
        w[10] = 4;
        w[11] = 1;
        w[12..16].copy_from_slice(&fletcher_4(data, LE).0);
        for (i, v) in w.iter().enumerate() {
            b[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    /// A dnode slot: type, bonus type, data block sectors, one block pointer.
    fn dnode_slot(
        ty: u8,
        bonus_ty: u8,
        sectors: u16,
        bp: &[u8; BLKPTR_SIZE],
        bonus: &[u8],
    ) -> [u8; DNODE_SIZE] {
        let mut d = [0u8; DNODE_SIZE];
        d[0] = ty;
        d[1] = 14;
        d[2] = 1;
        d[3] = 1;
        d[4] = bonus_ty;
        d[8..10].copy_from_slice(&sectors.to_le_bytes());
        d[10..12].copy_from_slice(&(bonus.len() as u16).to_le_bytes());
        d[64..192].copy_from_slice(bp);
        d[192..192 + bonus.len()].copy_from_slice(bonus);
        d
    }

    /// An 8 MiB single-file pool "synth": a MOS whose object directory
    /// names a features ZAP holding `feature` with `refcount`, and a root
    /// DSL dir with an empty head dataset. The dnode block has two copies.
    fn synthetic_pool(feature: &str, refcount: u64) -> Vec<u8> {
        synthetic_pool_with(feature, refcount, &mut |_, _| {})
    }

    /// [`synthetic_pool`], with `mutate` applied to the object directory
    /// ZAP (0), the features ZAP (1) and the dnode block (2) before their
    /// checksums are computed: the mutated bytes reach the parsers.
    fn synthetic_pool_with(feature: &str, refcount: u64, mutate: &mut dyn FnMut(u8, &mut [u8])) -> Vec<u8> {
        let mut disk = vec![0u8; 8 << 20];
        let base = VDEV_LABEL_START_SIZE as usize;
        let put = |disk: &mut Vec<u8>, off: u64, data: &[u8]| {
            disk[base + off as usize..base + off as usize + data.len()].copy_from_slice(data);
        };
        // ZAPs.
        let mut objdir = crate::zap::tests::micro(512, LE, &[("features_for_read", 2), ("root_dataset", 3)]);
        let mut feats =
            crate::zap::tests::micro(512, LE, &[("com.delphix:hole_birth", 1), (feature, refcount)]);
        mutate(0, &mut objdir);
        mutate(1, &mut feats);
        put(&mut disk, 0x5000, &objdir);
        put(&mut disk, 0x5200, &feats);
        // The dnode block: objects 1 (directory), 2 (features), 3 (DSL
        // dir), 4 (DSL dataset).
        let hole = [0u8; BLKPTR_SIZE];
        let mut dir_bonus = [0u8; 256];
        dir_bonus[8..16].copy_from_slice(&4u64.to_le_bytes());
        let mut ds_bonus = [0u8; 320];
        ds_bonus[56..64].copy_from_slice(&1u64.to_le_bytes());
        let mut block = vec![0u8; 16384];
        let slots = [
            (1, dnode_slot(ot::OBJECT_DIRECTORY, 0, 1, &bp_to(&[0x5000], &objdir, 1), &[])),
            (2, dnode_slot(0xc4, 0, 1, &bp_to(&[0x5200], &feats, 0xc4), &[])),
            (3, dnode_slot(ot::DSL_DIR, ot::DSL_DIR, 1, &hole, &dir_bonus)),
            (4, dnode_slot(ot::DSL_DATASET, ot::DSL_DATASET, 1, &hole, &ds_bonus)),
        ];
        for (obj, slot) in slots {
            block[obj * DNODE_SIZE..(obj + 1) * DNODE_SIZE].copy_from_slice(&slot);
        }
        mutate(2, &mut block);
        put(&mut disk, 0x1000, &block);
        put(&mut disk, 0x6000, &block);
        // The MOS objset.
        let mut os = vec![0u8; 1024];
        os[..DNODE_SIZE].copy_from_slice(&dnode_slot(
            ot::DNODE,
            0,
            32,
            &bp_to(&[0x1000, 0x6000], &block, ot::DNODE),
            &[],
        ));
        os[0x2c0..0x2c8].copy_from_slice(&ost::META.to_le_bytes());
        put(&mut disk, 0, &os);
        write_synthetic_label(&mut disk, &bp_to(&[0], &os, ot::OBJSET));
        disk
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        #[test]
        fn mutated_pools_never_panic(
            which in 0u8..3,
            edits in proptest::collection::vec((0usize..16384, proptest::prelude::any::<u8>()), 1..24),
        ) {
            let disk = synthetic_pool_with("org.example:unused", 0, &mut |w, block| {
                if w == which {
                    for &(at, v) in &edits {
                        let len = block.len();
                        block[at % len] = v;
                    }
                }
            });
            if let Ok(mut pool) = Pool::open(vec![MemDevice(disk)]) {
                let report = crate::verify::verify(&mut pool, crate::traverse::Limits { max_visits: 64 });
                proptest::prop_assert!(report.total.count <= 64);
                let _ = pool.datasets();
                let mos = pool.mos.clone();
                for obj in 0..40 {
                    if let Ok(dn) = pool.dnode(&mos, obj) {
                        let _ = pool.zap_entries(&dn);
                        let _ = pool.zap_arrays(&dn);
                        let mut buf = [0u8; 700];
                        let _ = pool.read_object(&dn, 100, &mut buf);
                    }
                }
            }
        }
    }

    #[test]
    fn synthetic_pool_opens_and_lists() {
        let mut pool = Pool::open(vec![MemDevice(synthetic_pool("org.example:unused", 0))]).unwrap();
        assert_eq!(pool.name, "synth");
        assert_eq!(pool.mos.os_type, ost::META);
        let list = pool.datasets().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!((list[0].name.as_str(), list[0].id, list[0].creation_txg), ("synth", 4, 1));
        let mos = pool.mos.clone();
        assert_eq!(pool.dnode(&mos, 9).unwrap_err(), Error::NoSuchObject);
        let dir = pool.dnode(&mos, 1).unwrap();
        assert_eq!(pool.zap_lookup(&dir, b"root_dataset").unwrap().first, 3);
        assert_eq!(pool.zap_lookup(&dir, b"nope").unwrap_err(), Error::NotFound);
        let mut head = [0u8; 8];
        pool.read_object(&dir, 0, &mut head).unwrap();
        assert_eq!(u64::from_le_bytes(head), zap::ZBT_MICRO);
    }

    #[test]
    fn synthetic_pool_traverses_and_verifies() {
        let mut pool = Pool::open(vec![MemDevice(synthetic_pool("org.example:unused", 0))]).unwrap();
        let mut seen = Vec::new();
        let t = crate::traverse::traverse(&mut pool, crate::traverse::Limits::default(), &mut |_, v| {
            seen.push((v.bookmark.object, v.bookmark.level, v.bp.object_type()));
        });
        assert!(t.errors.is_empty(), "{:?}", t.errors);
        // The MOS objset, its dnode block, the object directory and the
        // features ZAP (the DSL objects have holes).
        assert_eq!(
            seen,
            [(0, -1, ot::OBJSET), (0, 0, ot::DNODE), (1, 0, ot::OBJECT_DIRECTORY), (2, 0, 0xc4)]
        );
        let r = crate::verify::verify(&mut pool, crate::traverse::Limits::default());
        assert!(r.is_clean() && r.repaired.is_empty(), "{r}");
        assert_eq!(r.total.count, 4);
        assert_eq!(r.copies_checked, 5, "the dnode block has two copies");
        // The second copy of the dnode block rotten: repaired, named.
        let mut disk = synthetic_pool("org.example:unused", 0);
        disk[VDEV_LABEL_START_SIZE as usize + 0x6000 + 700] ^= 1;
        let mut pool = Pool::open(vec![MemDevice(disk.clone())]).unwrap();
        let r = crate::verify::verify(&mut pool, crate::traverse::Limits::default());
        assert!(r.is_clean());
        assert_eq!(r.repaired.len(), 1);
        assert_eq!((r.repaired[0].bookmark.object, r.repaired[0].bookmark.level), (0, 0));
        // The visit limit stops a traversal, and says so.
        let r = crate::verify::verify(&mut pool, crate::traverse::Limits { max_visits: 2 });
        assert_eq!(r.total.count, 2);
        assert!(matches!(
            r.bad[..],
            [crate::verify::BadBlock {
                problem: crate::verify::Problem::Traverse(crate::traverse::TraverseError {
                    error: Error::LimitExceeded,
                    ..
                }),
                ..
            }]
        ));
    }

    #[test]
    fn gang_blocks_are_reassembled_and_verified() {
        // A 1 KiB block stored as two 512-byte children behind a gang header.
        let data: Vec<u8> = (0..1024u32).map(|i| (i * 7 % 253) as u8).collect();
        let mut disk = vec![0u8; 5 << 20];
        let base = VDEV_LABEL_START_SIZE as usize;
        disk[base + 0x1000..base + 0x1200].copy_from_slice(&data[..512]);
        disk[base + 0x3000..base + 0x3200].copy_from_slice(&data[512..]);
        let mut header = [0u8; SPA_GANGBLOCKSIZE];
        header[..128].copy_from_slice(&bp_to(&[0x1000], &data[..512], 19));
        header[128..256].copy_from_slice(&bp_to(&[0x3000], &data[512..], 19));
        let mut parent = BlockPointer::parse(&bp_to(&[0x2000], &data, 19), LE).unwrap();
        parent.dva[0].0[1] |= 1 << 63; // the gang bit
        parent.dva[0].0[0] = 1; // the header's asize
                                // Header trailer: magic, SHA-256 with the gang verifier.
        let at = SPA_GANGBLOCKSIZE - crate::checksum::ECK_SIZE;
        header[at..at + 8].copy_from_slice(&crate::checksum::ZEC_MAGIC.to_le_bytes());
        let verifier = [0u64, 0x2000, parent.birth, 0];
        let mut whole = Vec::from(&header[..at + 8]);
        for w in verifier {
            whole.extend_from_slice(&w.to_le_bytes());
        }
        let sum = crate::checksum::sha256(&whole);
        for (i, w) in sum.0.iter().enumerate() {
            header[at + 8 + i * 8..at + 16 + i * 8].copy_from_slice(&w.to_le_bytes());
        }
        disk[base + 0x2000..base + 0x2200].copy_from_slice(&header);
        let tree = NvList::new()
            .with("type", NvValue::String("file".into()))
            .with("guid", NvValue::Uint64(1))
            .with("ashift", NvValue::Uint64(9));
        let mut vdev = Vdev::from_config(&tree).unwrap();
        vdev.attach(1, 0);
        let mut reader = BlockReader::new(vec![MemDevice(disk.clone())], vec![Some(vdev.clone())]);
        assert_eq!(reader.read_block(&parent).unwrap(), data);
        // A corrupt child fails the whole block; a corrupt header too.
        for spoil in [0x3010, 0x2010] {
            let mut bad = disk.clone();
            bad[base + spoil] ^= 1;
            let mut reader = BlockReader::new(vec![MemDevice(bad)], vec![Some(vdev.clone())]);
            assert_eq!(reader.read_block(&parent).unwrap_err(), Error::NoValidCopy);
        }
    }

    #[test]
    fn unsupported_active_read_feature_is_refused_by_name() {
        let err = Pool::open(vec![MemDevice(synthetic_pool("org.example:unknown", 1))]).unwrap_err();
        assert_eq!(err, Error::UnsupportedFeature(FeatureName::new(b"org.example:unknown")));
        assert!(std::format!("{err}").contains("org.example:unknown"));
    }

    #[test]
    fn ditto_copy_survives_a_corrupt_first_copy() {
        let mut disk = synthetic_pool("org.example:unused", 0);
        let at = VDEV_LABEL_START_SIZE as usize + 0x1000 + DNODE_SIZE + 100;
        disk[at] ^= 0x40;
        let mut pool = Pool::open(vec![MemDevice(disk.clone())]).unwrap();
        assert_eq!(pool.datasets().unwrap().len(), 1);
        // Both copies bad: the error says so.
        disk[at + 0x5000] ^= 0x40;
        assert_eq!(Pool::open(vec![MemDevice(disk)]).unwrap_err(), Error::NoValidCopy);
    }

    #[test]
    fn features_are_checked() {
        assert_eq!(check_feature(b"org.illumos:lz4_compress", 3), Ok(()));
        assert_eq!(check_feature(b"org.illumos:skein", 0), Ok(()));
        let err = check_feature(b"org.illumos:skein", 1).unwrap_err();
        assert_eq!(std::format!("{err}"), "pool needs unsupported read feature org.illumos:skein");
    }
}
