//! The write-ahead log's on-disk format: segment header and record
//! framing. Reading and writing the files is the shell's.

pub mod framing;
