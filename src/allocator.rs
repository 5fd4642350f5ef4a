//! The process's allocator, and when each worker thread gives the memory it freed back to the
//! system.
//!
//! mimalloc, not glibc's malloc: buffers allocated on one worker thread and freed on the other (a
//! request read on one, its answer written on another) took glibc's arena locks, about one futex
//! call per two proxied requests; mimalloc frees across threads without a lock.
//!
//! mimalloc (v3) keeps a heap per thread. A page whose blocks are all freed goes back to the
//! process's arenas when its owning thread frees the last block, or when that thread collects its
//! heap (blocks freed by another thread wait in the page until the owner looks); no thread can
//! collect another's. The arenas then give a page back to the system (decommit it) a second after
//! it came back, when any thread next looks ([`give_back_freed_memory`]: every 5 s). So a replica
//! gone quiet after a peak (thousands of connections closed, an attack over) kept resident what
//! each worker had freed but not yet handed back, for good, on every worker that then slept; a
//! timer alone reached only the heap of the thread it ran on.
//!
//! [`Allocator`] counts, per thread, the bytes freed since that thread last collected its heap,
//! and the runtime calls [`collect_before_sleeping`] whenever a worker is about to sleep: a worker
//! that freed at least [`COLLECT_AFTER`] since it last did collects its heap first, so what it
//! freed is in the arenas before it sleeps, and the timer gives it back. A worker that sleeps
//! holds less than [`COLLECT_AFTER`] freed beyond what mimalloc keeps cached; a worker that never
//! sleeps reuses what it frees. A collect runs only on a worker with nothing to do, at most once
//! per [`COLLECT_AFTER`] freed on it.
//!
//! Transparent huge pages are off for the process ([`no_huge_pages`]). mimalloc marks its arenas
//! `MADV_HUGEPAGE`, so on a host whose THP setting is `madvise` (most distributions' default) or
//! `always`, the kernel backed each 2 MB of them with a huge page on first touch, and khugepaged
//! (every 10 s) collapsed any 2 MB range with a page still in use back into a whole huge page,
//! refilling what had just been given back. Measured (release, 3,000 subscribers come and go):
//! with huge pages, anonymous memory 6 MB at start, 18 at the peak, and 9–15 MB 20 s after they
//! left (going down, then filled in again); without, 4, 12–13 and 5 MB, within 5 s and for good.
//! Delivery to 19k subscribers showed no difference in time or CPU (four alternating runs).

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::time::Duration;

use mimalloc::MiMalloc;

/// The bytes a thread frees before it collects its heap when it next sleeps.
pub const COLLECT_AFTER: usize = 1024 * 1024;

/// How often the arenas are asked to give back what came back to them (program-wide).
pub const GIVE_BACK_EVERY: Duration = Duration::from_secs(5);

thread_local! {
    /// The bytes this thread freed since it last collected its heap.
    static FREED: Cell<usize> = const { Cell::new(0) };
}

/// mimalloc, counting what each thread frees (see the module's docs).
pub struct Allocator;

// SAFETY: every call is passed to mimalloc unchanged; counting touches only a thread-local `Cell`
// (const-initialised, no destructor: it never allocates and is usable while a thread exits).
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is passed on.
        unsafe { MiMalloc.alloc(layout) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is passed on.
        unsafe { MiMalloc.alloc_zeroed(layout) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let _ = FREED.try_with(|freed| freed.set(freed.get().saturating_add(layout.size())));
        // SAFETY: the caller's contract is passed on.
        unsafe { MiMalloc.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract is passed on.
        unsafe { MiMalloc.realloc(ptr, layout, new_size) }
    }
}

/// Collects this thread's heap if it freed at least [`COLLECT_AFTER`] since it last did. For the
/// runtime's `on_thread_park`: called on a worker about to sleep.
pub fn collect_before_sleeping() {
    if FREED.try_with(|freed| freed.get() >= COLLECT_AFTER) == Ok(true) {
        collect();
    }
}

/// Gives back what came back to the arenas, every [`GIVE_BACK_EVERY`] (and collects the heap of
/// the thread it runs on). mimalloc does this only when the allocator is next used, so a replica
/// gone quiet kept it resident.
pub async fn give_back_freed_memory() {
    let mut every = tokio::time::interval(GIVE_BACK_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        collect();
    }
}

/// Collects this thread's heap: its empty pages go back to the arenas, and the arenas give back
/// (decommit) what has been theirs for over a second.
fn collect() {
    let _ = FREED.try_with(|freed| freed.set(0));
    // SAFETY: `mi_collect` takes no pointers and may be called from any thread at any time.
    unsafe { libmimalloc_sys::mi_collect(false) };
}

/// Turns transparent huge pages off for this process (`PR_SET_THP_DISABLE`: no huge page on a
/// fault, none collapsed by khugepaged; inherited by children). Call first thing in `main`. An
/// error (a kernel without the call) is returned for the caller to log: the process runs with
/// the host's THP setting.
pub fn no_huge_pages() -> std::io::Result<()> {
    // SAFETY: `prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0)` takes no pointers; it sets a flag on this
    // process's memory map.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
