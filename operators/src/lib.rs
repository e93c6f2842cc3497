//! squall's dataflow: events in, per-user attributes out, as timely operators named after their verbs.
#![warn(missing_docs)]

pub mod attributes;
pub mod checkpoint;
pub mod checkpoint_cql;
pub mod checkpoint_dir;
pub mod compare;
pub mod cql_schema;
pub mod dead_letter;
pub mod declare;
pub mod dedup;
pub mod enrich;
pub mod event;
pub mod key_groups;
pub mod maintain;
pub mod plan;
pub mod predicate;
pub mod source;
pub mod store;
pub mod watermark;

pub use attributes::{Activity, Attributes, Value, What};
pub use dead_letter::DeadLetterTo;
pub use declare::{AttributeDecl, Declaration};
pub use enrich::EnrichWith;
pub use event::{DecodeError, DecodeLimits, DlqReason, Event, EventKind};
pub use key_groups::KeyGroups;
pub use maintain::{CheckpointHook, MaintainAttributes, Restore};
pub use plan::{Evidence, Plan, UserSnapshot, UserState};
pub use source::{Alignment, ConsumeKafka, DeadLetter, Epoch, Partition, SourceConfig, SourceStreams, StartFrom};
pub use store::{UserStore, user_hash};
pub use watermark::Progress;
