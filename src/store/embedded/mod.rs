//! The embedded backend (redb): one file under the data directory, group-committed by one writer thread.
