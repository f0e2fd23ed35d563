//! Tests of the block device against real image files.
