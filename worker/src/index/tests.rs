//! Unit tests of the indexer.
