//! (to be written)
pub fn counter_child() {}
pub fn lock_holder_child() {}
