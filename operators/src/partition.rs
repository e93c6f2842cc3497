//! One input partition: a topic and a partition number.

use serde::{Deserialize, Serialize};

/// One input partition.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Partition {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: i32,
}
