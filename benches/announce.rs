//! The announce benchmark; written next.
fn main() {}
