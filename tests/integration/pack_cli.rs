//! pack from the command line (to be written).
