//! The mlxfs store: content-defined chunks named by BLAKE3, kept once in append-only packs,
//! and a SQLite catalog mapping the namespace and file contents onto them.
//!
//! Read path: `Store::read` → content map (catalog) → chunk (verified cache) → pack (pread),
//! checked against the chunk's BLAKE3 name.
//! Write path: `Store::prepare` (chunk, hash, append) → `Store::commit` (fsync packs, one
//! catalog transaction). An import may commit first and sync after (deferred_sync.rs).

pub mod blocks;
pub mod cache;
pub mod catalog;
pub mod chunker;
pub mod config;
pub mod content;
pub mod deferred_sync;
pub mod disk_space;
pub mod error;
pub mod formats;
pub mod gc;
pub mod import;
pub mod ingest;
pub mod mapped;
pub mod models;
pub mod namespace;
pub mod pack;
pub mod page_cache;
mod prepare_pool;
mod served;
mod store;
pub mod verify;

/// BLAKE3-256 of a chunk's bytes: its name in the store.
pub type ChunkHash = [u8; 32];

pub use catalog::{Catalog, Totals, Tx};
pub use config::ChunkerConfig;
pub use content::{ContentMap, PreparedContent};
pub use error::{Result, StoreError};
pub use namespace::{DirEntry, Inode, NewInode, NodeKind, ROOT_INO};
pub use store::{lock_holder, IngestGuard, ReadGuard, Store, StoreOptions};
