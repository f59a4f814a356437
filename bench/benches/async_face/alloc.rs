//! A global allocator that counts the bytes allocated minus the bytes freed
//! while counting is on: the change in live heap bytes over a stretch of the
//! run, whichever thread allocated.
//!
//! Counting is off unless [`Window`] turns it on, so the timed sections pay
//! one relaxed load per allocation, not a shared counter's cache line. The
//! change in live bytes over a window is exact even though blocks allocated
//! before it are freed inside it: each such free lowers the live bytes by
//! what it frees, and is counted so.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};

/// `System`, counting.
#[derive(Debug)]
pub(crate) struct CountingAlloc;

static COUNTING: AtomicBool = AtomicBool::new(false);
/// Bytes allocated minus bytes freed while [`COUNTING`].
static NET: AtomicIsize = AtomicIsize::new(0);

fn count(bytes: isize) {
    if COUNTING.load(Ordering::Relaxed) {
        NET.fetch_add(bytes, Ordering::Relaxed);
    }
}

// Sizes of live blocks fit in `isize` (a `Layout` guarantees it).
#[allow(clippy::cast_possible_wrap)]
fn signed(size: usize) -> isize {
    size as isize
}

// SAFETY: every call is passed on to `System` unchanged; the counting around
// it touches only two atomics and never allocates.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's guarantees for `alloc` are `System`'s.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            count(signed(layout.size()));
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            count(signed(layout.size()));
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's guarantees for `dealloc` are `System`'s.
        unsafe { System.dealloc(ptr, layout) };
        count(-signed(layout.size()));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's guarantees for `realloc` are `System`'s.
        let moved = unsafe { System.realloc(ptr, layout, new_size) };
        if !moved.is_null() {
            count(signed(new_size) - signed(layout.size()));
        }
        moved
    }
}

/// A stretch of the run whose change in live heap bytes is counted; one at
/// a time.
#[derive(Debug)]
pub(crate) struct Window(());

impl Window {
    /// Starts counting from zero.
    pub(crate) fn open() -> Self {
        NET.store(0, Ordering::Relaxed);
        COUNTING.store(true, Ordering::SeqCst);
        Window(())
    }

    /// Live heap bytes gained since [`open`](Window::open) (negative if
    /// freed).
    pub(crate) fn net_bytes(&self) -> isize {
        NET.load(Ordering::SeqCst)
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        COUNTING.store(false, Ordering::SeqCst);
    }
}
