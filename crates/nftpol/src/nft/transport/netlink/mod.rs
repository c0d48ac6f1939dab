//! nf_tables over netlink, for incremental changes: a pod joins or leaves
//! a selector, a policy widens an allow-list, a pod on this node becomes
//! isolated (its chain, sets and rules appear). `nft` costs 9–16 ms per
//! such transaction on a 10k-pod table (BENCHMARKS.md: its start, its cache
//! of the whole table, its parser), one batch on a socket kept open well
//! under a millisecond for elements, a few for a new pod chain.
//!
//! A batch is what `nft` itself sends for the same commands (read off
//! `nft --debug=netlink` and `--debug=mnl`; `tests/netlink.rs` applies the
//! same changes both ways and compares the kernel's listings):
//! `NFNL_MSG_BATCH_BEGIN`, one message per op (an element list that
//! outgrows a netlink attribute is split), `NFNL_MSG_BATCH_END`. The kernel
//! applies it as one transaction or not at all.
//!
//! Element encodings, by set type:
//! - hash sets: the key, fields of a concatenation each padded to 4 bytes;
//! - `ipv4_addr` / `ipv6_addr` interval sets (rbtree): a start element and
//!   an end element flagged `INTERVAL_END` one past the last address; a
//!   range that reaches the last address has no end element (the start is
//!   marked open, as nft marks it);
//! - concatenated interval sets (pipapo): the first and last key, inclusive
//!   (`NFTA_SET_ELEM_KEY`, `NFTA_SET_ELEM_KEY_END`);
//! - verdict maps: the address and `jump CHAIN`.
//!
//! Sets carry nft's key type, field lengths and user data (so that
//! `nft list` shows them as nft made them); rules are the expressions nft
//! makes of a pod chain's rules (`meta nfproto` dependency, payload and
//! meta loads, lookup, counter, verdict), appended in order. The
//! table, the maps, the base chains and their rules are only made by a
//! full replacement (nft text); [`carries`] tells which batches can go here.

mod encode;
mod socket;
mod wire;

pub use encode::{Batch, carries, encode};
pub use socket::Netlink;
pub(crate) use socket::open_socket;
pub(crate) use wire::{NLA_F_NESTED, NLM_F_ACK, NLM_F_REQUEST, Writer, messages};
