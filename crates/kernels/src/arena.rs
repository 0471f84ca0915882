//! Weights copied at load (converted, or as stored), packed into large anonymous mappings that
//! the OS may back with 2 MiB pages. Decode streams every active weight once per token; on 4 KiB pages that is a TLB
//! miss every 64 cache lines (under a hypervisor, a two-level page walk each), and one expert's
//! matrix (~1.4 MB in int4) is too small for an allocation of its own to hold a whole 2 MiB
//! page. Packed together they do: int4 decode +4-5% on the test model. Linux's transparent huge
//! pages are often given only where asked for (`enabled = madvise`), hence the advice.
//!
//! A chunk is mapped with room to spare (never touched, so never resident) and filled slot by
//! slot; a slot is lent out (`Bytes::range`) only once written, and never written again.

use std::sync::{Arc, Mutex};

use crate::buf::{ByteOwner, Bytes};
use crate::Buf;

const HUGE: usize = 2 << 20;
/// Virtual size of a chunk; a matrix larger than this gets a chunk of its own size.
const CHUNK: usize = 256 << 20;
/// Slots start on cache lines.
const SLOT_ALIGN: usize = 64;

pub struct Arena {
    chunk: usize,
    /// the chunk being filled and its first free byte
    current: Mutex<Option<(Arc<Chunk>, usize)>>,
}

impl Default for Arena {
    fn default() -> Self {
        Arena::with_chunk(CHUNK)
    }
}

impl Arena {
    fn with_chunk(chunk: usize) -> Self {
        Arena {
            chunk,
            current: Mutex::new(None),
        }
    }

    /// A copy of `v` in a slot of the arena; None where no mapping can be made (not Linux, or
    /// the mapping fails) or `v` is empty.
    pub fn store<T: bytemuck::Pod>(&self, v: &[T]) -> Option<Buf<T>> {
        let bytes: &[u8] = bytemuck::cast_slice(v);
        if bytes.is_empty() {
            return None;
        }
        let (chunk, start) = self.reserve(bytes.len())?;
        // SAFETY: as in `filled`
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), chunk.ptr.add(start), bytes.len());
        }
        let owner: ByteOwner = chunk;
        Some(Buf::shared(owner, start, v.len()))
    }

    /// A slot of `n` values, value i being `f(i)`, written in place; None as for `store`.
    pub fn filled<T: bytemuck::Pod>(&self, n: usize, f: impl Fn(usize) -> T) -> Option<Buf<T>> {
        let len = n * std::mem::size_of::<T>();
        if len == 0 {
            return None;
        }
        let (chunk, start) = self.reserve(len)?;
        // SAFETY: [start, start + len) lies inside the chunk, was handed to this call alone
        // (reserved under the lock) and starts on a cache line, so it is aligned for any Pod
        // value; nothing reads it before `Buf::shared` below.
        unsafe {
            let p = chunk.ptr.add(start) as *mut T;
            for i in 0..n {
                p.add(i).write(f(i));
            }
        }
        let owner: ByteOwner = chunk;
        Some(Buf::shared(owner, start, n))
    }

    /// `len` bytes of a chunk no one else has been given
    fn reserve(&self, len: usize) -> Option<(Arc<Chunk>, usize)> {
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let fits = cur.as_ref().is_some_and(|(c, used)| used + len <= c.cap);
        if !fits {
            *cur = Some((Arc::new(Chunk::map(len.max(self.chunk))?), 0));
        }
        let (chunk, used) = cur.as_mut().expect("a chunk was just made");
        let start = *used;
        *used = (start + len).next_multiple_of(SLOT_ALIGN);
        Some((chunk.clone(), start))
    }
}

/// One anonymous mapping: `ptr` is its first 2 MiB boundary, `cap` bytes from there are usable.
struct Chunk {
    ptr: *mut u8,
    cap: usize,
    map: *mut u8,
    map_len: usize,
}

// SAFETY: the chunk is plain memory; writers only touch slots reserved for them and readers only
// slots already written (see `Arena::store`).
unsafe impl Send for Chunk {}
unsafe impl Sync for Chunk {}

impl Chunk {
    #[cfg(target_os = "linux")]
    fn map(cap: usize) -> Option<Chunk> {
        let cap = cap.next_multiple_of(HUGE);
        let map_len = cap + HUGE;
        // SAFETY: a fresh private anonymous mapping; MAP_NORESERVE since most of a chunk's tail
        // is never touched.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return None;
        }
        let map = map as *mut u8;
        let ptr = (map as usize).next_multiple_of(HUGE) as *mut u8;
        // SAFETY: advice on our own mapping; if huge pages are unavailable it fails harmlessly.
        unsafe {
            libc::madvise(ptr as *mut libc::c_void, cap, libc::MADV_HUGEPAGE);
        }
        Some(Chunk {
            ptr,
            cap,
            map,
            map_len,
        })
    }

    #[cfg(not(target_os = "linux"))]
    fn map(_cap: usize) -> Option<Chunk> {
        None
    }
}

impl Bytes for Chunk {
    fn range(&self, start: usize, len: usize) -> &[u8] {
        assert!(start + len <= self.cap, "slot outside its chunk");
        // SAFETY: inside the mapping, and lent only for slots already written (see above)
        unsafe { std::slice::from_raw_parts(self.ptr.add(start), len) }
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        // SAFETY: our own mapping; every Buf that borrowed from it held an Arc to this chunk
        unsafe {
            libc::munmap(self.map as *mut libc::c_void, self.map_len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_values_read_back_unchanged_across_chunks() {
        let arena = Arena::with_chunk(HUGE);
        let small: Vec<u16> = (0..1000).collect();
        // larger than a chunk: a chunk of its own, after which small slots go on in a new one
        let big: Vec<u32> = (0..(HUGE / 4 + 77) as u32).collect();
        let (a, b, c) = (
            arena.store(&small).unwrap(),
            arena.store(&big).unwrap(),
            arena.store(&small).unwrap(),
        );
        assert_eq!(a.as_slice(), &small[..]);
        assert_eq!(b.as_slice(), &big[..]);
        assert_eq!(c.as_slice(), &small[..]);
        assert!(arena.store::<u8>(&[]).is_none());
        let f = arena.filled(3000, |i| i as u64 * 3).unwrap();
        assert!(f
            .as_slice()
            .iter()
            .enumerate()
            .all(|(i, &v)| v == i as u64 * 3));
        // slots start on cache lines
        assert_eq!(c.as_slice().as_ptr() as usize % SLOT_ALIGN, 0);
    }
}
