//! The sans-IO ingest core: dedup indexes and the batch pipeline.

pub mod dedup;
pub mod pipeline;

pub use pipeline::{BatchError, BatchOutcome, Pipeline, PipelineConfig, VerifiedBatch};
