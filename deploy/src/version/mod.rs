//! The version runtime, `squall run`: one topology version's timely workers beside its HTTP API.
//! It knows nothing of the control plane and runs the same with or without a server; what a
//! server reads of it is its runtime file ([`runfile`]), the lease it renews ([`lease`]) and its
//! HTTP API ([`http`]).
//!
//! - [`runner`]: starts the dataflow in named steps (layout, store, partitions, checkpoints,
//!   recovery, start offsets, timely), and commits offsets of complete checkpoints.
//! - [`http`]: a user's attributes, status, health and metrics, with the one JSON error shape.
//! - [`counters`]: the process's counters, read by `/v1/status` and exported as metrics.
//! - [`freshness`]: the cut answers reflect, the bounds a read may ask for, the freshness objective.
//! - [`cluster`]: the layout of a multi-process version and which process owns a user.
//! - [`standby`]: `squall standby`, a replica of one process's state that follows the replica
//!   feed, answers while that process is down, and takes over its consumption when it dies.
//! - [`lease`]: the server's lease on the process; [`runfile`]: who the process is and where it serves.

pub mod cluster;
pub mod counters;
pub mod freshness;
pub mod http;
pub mod lease;
pub mod runfile;
pub mod runner;
pub mod standby;
