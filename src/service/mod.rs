//! Services several commands use: which snapshot a name means ([`select`]), taking one
//! ([`take`]), and restoring one ([`restore`]). They return a value or a [`crate::report::Failure`]
//! and never print.

pub mod pitr;
pub mod restore;
pub mod rewind;
pub mod select;
pub mod stream;
pub mod take;
