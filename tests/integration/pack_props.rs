//! Property tests of placement (to be written).
