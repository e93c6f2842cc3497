//! The timely timestamp every operator, checkpoint and feed counts in.

/// The timely timestamp: a checkpoint epoch, `unix_ms / epoch_interval`.
pub type Epoch = u64;
