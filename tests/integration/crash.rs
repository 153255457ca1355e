//! (to be written)
pub fn writer_child() {}
