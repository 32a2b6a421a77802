//! One module per sub-command.

pub mod bench;
pub mod compare;
pub mod evaluate;
pub mod generate;
pub mod inspect;
pub mod train;
