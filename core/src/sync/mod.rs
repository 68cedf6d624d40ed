//! The control service's cache feed: applying its answers, and when to ask.

pub mod feed;
pub mod schedule;
