//! The request as the core sees it: the head, its credentials, its header spellings.

pub mod header_map;
