//! Fuzz targets of kdnet (see `Cargo.toml`): the entry points and the generators of their seed
//! corpora.

pub mod seeds;
pub mod targets;
