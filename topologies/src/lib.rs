//! Topologies: the typed, layered configuration of a topology file, and the dataflow it names.
#![warn(missing_docs)]

pub mod oracle;
pub mod personalization;
pub mod spec;
pub mod versions;

pub use spec::{SpecError, TopologySpec};
