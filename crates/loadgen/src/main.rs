//! Load generator for impression-counter (work in progress).

fn main() {}
