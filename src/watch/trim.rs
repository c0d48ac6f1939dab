//! Gives the memory a sync freed back to the system.
//!
//! A sync renders a whole new ruleset while the applied one is still held,
//! then frees the old one, and the full sync's nft batch is tens of MiB of
//! small objects. glibc's malloc returns only what lies at the top of a
//! heap; the freed pages in between stay in the process (with 100k pods,
//! ~7 MiB after a few syncs). `malloc_trim(0)` gives back every whole free
//! page of every arena.
#![allow(unsafe_code)]

use std::time::{Duration, Instant};

/// Releases free heap pages to the system; returns how long it took.
pub fn release_free_memory() -> Duration {
    let t = Instant::now();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers and only releases pages that
    // hold no live allocation; it is thread-safe (it locks each arena).
    unsafe {
        libc::malloc_trim(0);
    }
    t.elapsed()
}
