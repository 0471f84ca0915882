//! Typed views of bytes that are either owned or borrowed from a shared owner
//! (a memory-mapped file), so weights are used in place without a copy.

use std::sync::Arc;

/// Anything that lends ranges of its bytes: `memmap2::Mmap`, `Vec<u8>`, an arena chunk (which
/// never lends the whole of itself: later slots may still be being written).
pub trait Bytes: Send + Sync {
    fn range(&self, start: usize, len: usize) -> &[u8];
}

impl<T: AsRef<[u8]> + Send + Sync> Bytes for T {
    fn range(&self, start: usize, len: usize) -> &[u8] {
        &self.as_ref()[start..start + len]
    }
}

pub type ByteOwner = Arc<dyn Bytes>;

pub struct Buf<T: bytemuck::Pod> {
    inner: Inner<T>,
}

enum Inner<T> {
    Owned(Vec<T>),
    Shared {
        owner: ByteOwner,
        start: usize,
        len: usize,
    },
}

impl<T: bytemuck::Pod> Buf<T> {
    pub fn owned(v: Vec<T>) -> Self {
        Buf {
            inner: Inner::Owned(v),
        }
    }

    /// A view of `owner[start..start + n * size_of::<T>()]`. Borrowed in place when the bytes are
    /// aligned for `T`, copied otherwise (safetensors does not promise alignment).
    pub fn shared(owner: ByteOwner, start: usize, n: usize) -> Self {
        let size = std::mem::size_of::<T>();
        let bytes = owner.range(start, n * size);
        if (bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>()) {
            Buf {
                inner: Inner::Shared {
                    owner,
                    start,
                    len: n,
                },
            }
        } else {
            Buf::owned(bytemuck::pod_collect_to_vec(bytes))
        }
    }

    /// The values copied into `arena` (owned ones dropped after), or as they are where the
    /// arena cannot take them.
    pub fn packed_into(self, arena: &crate::arena::Arena) -> Self {
        arena.store(self.as_slice()).unwrap_or(self)
    }

    /// The values as a Vec when they are owned (a borrowed view gives None).
    pub fn into_owned(self) -> Option<Vec<T>> {
        match self.inner {
            Inner::Owned(v) => Some(v),
            Inner::Shared { .. } => None,
        }
    }

    pub fn as_slice(&self) -> &[T] {
        match &self.inner {
            Inner::Owned(v) => v,
            Inner::Shared { owner, start, len } => {
                let size = std::mem::size_of::<T>();
                bytemuck::cast_slice(owner.range(*start, len * size))
            }
        }
    }

    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
