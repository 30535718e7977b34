//! Shared helpers for the end-to-end tests: start the real binary, talk to it.
