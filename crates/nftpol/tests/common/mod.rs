//! Shared helpers of the product's integration tests: the lab's builders,
//! the reference evaluator and the random cluster generators.
//!
//! Each test binary compiles this module separately and uses only part of
//! it, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod r#gen;
pub mod reference;

#[allow(unused_imports)]
pub use nftpol_lab::fixtures::*;
