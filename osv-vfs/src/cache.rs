//! The dentry cache: `(mount id, directory inode, name) -> vnode`.
//!
//! Entries hold strong references (`Arc`), so a cached vnode cannot be freed
//! under a lookup. Only positive entries are cached. The VFS invalidates the
//! names it removes or replaces; a generation number, bumped by every
//! invalidation, stops a lookup that started before an invalidation from
//! inserting the stale result after it.
//!
//! Eviction is second-chance (CLOCK): a hit marks an entry referenced; a
//! sweep drops the entries not referenced since the previous sweep and clears
//! the marks. A sweep runs when the cache is full, or on request
//! ([`Vfs::evict_unused`](crate::Vfs::evict_unused)). Dropping an entry only
//! drops the cache's reference: a vnode in use stays alive through its other
//! holders, and the next lookup asks the filesystem again.

use alloc::collections::BTreeMap;
use alloc::string::String;

use crate::ops::VnodeRef;
use crate::sync::Mutex;

/// The key of a directory: (mount id, directory inode).
pub(crate) type DirKey = (u64, u64);

struct Inner {
    dirs: BTreeMap<DirKey, BTreeMap<String, (VnodeRef, bool)>>,
    len: usize,
    generation: u64,
}

pub(crate) struct DentryCache {
    inner: Mutex<Inner>,
    capacity: usize,
}

impl DentryCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self { inner: Mutex::new(Inner { dirs: BTreeMap::new(), len: 0, generation: 0 }), capacity }
    }

    /// A hit, or the generation to pass to [`insert`](Self::insert) after
    /// asking the filesystem.
    pub(crate) fn get(&self, dir: DirKey, name: &str) -> core::result::Result<VnodeRef, u64> {
        let mut inner = self.inner.lock();
        let generation = inner.generation;
        match inner.dirs.get_mut(&dir).and_then(|m| m.get_mut(name)) {
            Some((v, referenced)) => {
                *referenced = true;
                Ok(v.clone())
            }
            None => Err(generation),
        }
    }

    /// Caches `vnode` unless an invalidation happened since `generation`.
    /// Makes room by evicting unused entries when full; if none is unused the
    /// entry is simply not cached.
    pub(crate) fn insert(&self, dir: DirKey, name: &str, vnode: VnodeRef, generation: u64) {
        let mut inner = self.inner.lock();
        if inner.generation != generation {
            return;
        }
        if inner.len >= self.capacity {
            evict_unused(&mut inner);
            if inner.len >= self.capacity {
                return;
            }
        }
        if inner.dirs.entry(dir).or_default().insert(String::from(name), (vnode, true)).is_none() {
            inner.len += 1;
        }
        drop(inner);
    }

    /// Forgets `name` in `dir` (it was removed or replaced).
    pub(crate) fn invalidate(&self, dir: DirKey, name: &str) {
        let mut inner = self.inner.lock();
        inner.generation = inner.generation.wrapping_add(1);
        let mut removed = None;
        if let Some(m) = inner.dirs.get_mut(&dir) {
            removed = m.remove(name);
            if m.is_empty() {
                inner.dirs.remove(&dir);
            }
        }
        if removed.is_some() {
            inner.len -= 1;
        }
        drop(inner);
        // `removed` (maybe the last reference) drops here, outside the lock.
        drop(removed);
    }

    /// Forgets everything under one mount (unmount).
    pub(crate) fn invalidate_mount(&self, mount: u64) {
        let mut inner = self.inner.lock();
        inner.generation = inner.generation.wrapping_add(1);
        let keys: alloc::vec::Vec<DirKey> =
            inner.dirs.range((mount, 0)..=(mount, u64::MAX)).map(|(k, _)| *k).collect();
        let mut dropped = alloc::vec::Vec::new();
        for k in keys {
            if let Some(m) = inner.dirs.remove(&k) {
                inner.len -= m.len();
                dropped.push(m);
            }
        }
        drop(inner);
        drop(dropped);
    }

    /// One eviction sweep; returns how many entries went.
    pub(crate) fn evict_unused(&self) -> usize {
        let mut inner = self.inner.lock();
        evict_unused(&mut inner)
    }

    /// Drops every entry.
    pub(crate) fn clear(&self) {
        let mut inner = self.inner.lock();
        inner.generation = inner.generation.wrapping_add(1);
        let dirs = core::mem::take(&mut inner.dirs);
        inner.len = 0;
        drop(inner);
        drop(dirs);
    }

    /// Number of cached entries.
    pub(crate) fn len(&self) -> usize {
        self.inner.lock().len
    }
}

/// One CLOCK sweep: drops unreferenced entries, clears the marks of the rest.
fn evict_unused(inner: &mut Inner) -> usize {
    let mut evicted = 0;
    inner.dirs.retain(|_, m| {
        m.retain(|_, (_, referenced)| {
            let keep = *referenced;
            *referenced = false;
            if !keep {
                evicted += 1;
            }
            keep
        });
        !m.is_empty()
    });
    inner.len -= evicted;
    evicted
}
