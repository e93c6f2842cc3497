//! The declared-attribute language: fields, declarations, predicates, their plan, the per-user state and its views.

pub mod check;
pub mod declare;
pub mod field;
pub mod plan;
pub mod predicate;
pub mod state;
pub mod views;

pub use check::{CheckError, DeclError, OpName};
pub use declare::{AttributeDecl, Declaration, ValueType};
pub use field::{Events, Field, Type};
pub use plan::Plan;
pub use predicate::Expr;
pub use state::{Evidence, RestoreError, UserSnapshot, UserState};
pub use views::{Attributes, AttributesView, Value};
