//! Snapshot section payloads (what a frame of a `snapshot-*.snap` holds):
//! any bytes decode to a section or an error, and a decoded section encodes
//! to bytes that decode to the same section.

#![no_main]

use impression_counter::fuzzing::{decode_section, encode_section};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(section) = decode_section(data) else {
        return;
    };
    let mut out = Vec::new();
    encode_section(&mut out, &section);
    assert_eq!(decode_section(&out).as_ref(), Ok(&section));
    assert!(out.len() <= data.len());
});
