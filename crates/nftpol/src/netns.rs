//! Work done inside the network namespace nftpol enforces.
//!
//! `nftpol run --netns NAME` enforces in another namespace than its own.
//! Sockets keep the namespace of the thread that opened them, and
//! `/proc/sys/net` and interface lookups answer for the namespace of the
//! thread that asks; so such work runs on a short-lived thread that
//! entered the namespace ([`in_netns`]).

use std::fs::File;
use std::path::Path;

use nix::sched::{CloneFlags, setns};

/// Runs `f` in the network namespace at `netns` (e.g. `/run/netns/NAME`)
/// on a thread of its own, or on the calling thread when `None`. The error
/// says why the namespace could not be entered; a panic in `f` is passed on.
pub fn in_netns<T: Send>(netns: Option<&Path>, f: impl FnOnce() -> T + Send) -> Result<T, String> {
    let Some(path) = netns else {
        return Ok(f());
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = File::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?;
            setns(&file, CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("entering {}: {e}", path.display()))?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}
