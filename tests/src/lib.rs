//! The harness of Aspen's multi-process end-to-end tests: the real
//! `aspen-operator` and `aspen-node` binaries, run as users run them.
//!
//! - [`binaries`] finds the binaries in the target directory.
//! - [`cluster`] runs `aspen-operator local` on a manifest in a temporary
//!   directory and tears everything down when dropped, even after a failure.
//! - [`wait`] polls a condition until a deadline: tests never sleep to
//!   synchronise.
//! - [`writer`] writes keys in the background and remembers which were
//!   acknowledged; [`writer::verify`] checks that every one can be read.
//! - [`monitor`] samples every node's Raft status while a test runs and
//!   checks the membership rules the planner promises.

pub mod binaries;
pub mod cluster;
pub mod monitor;
pub mod wait;
pub mod writer;
