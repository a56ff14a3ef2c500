//! Hardening (issue 9): see tests/tests.rs.
