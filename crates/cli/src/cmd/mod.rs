//! One module per sub-command.

pub mod generate;
pub mod inspect;
