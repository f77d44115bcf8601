//! The sans-IO ingest core: dedup indexes and the batch pipeline.

pub(crate) mod chunk_sizer;
pub mod dedup;
pub(crate) mod horizon;
pub mod pipeline;

pub use chunk_sizer::ChunkSizer;
pub use horizon::Horizons;
pub use pipeline::{BatchError, BatchOutcome, ClaimedRows, Pipeline, PipelineConfig, VerifiedBatch};
