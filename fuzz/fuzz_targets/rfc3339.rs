//! RFC 3339 timestamps (`start_time`, `timestamp`, the pixel's `ts`): what
//! parses formats back to the same instant, and formatting any instant is
//! safe. Input: 8 bytes of milliseconds to format, then text to parse.

#![no_main]

use impression_core::Timestamp;
use impression_counter::fuzzing::{format_rfc3339, parse_rfc3339};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(millis) = data.first_chunk::<8>() {
        let t = Timestamp::from_millis(u64::from_le_bytes(*millis));
        let text = format_rfc3339(t);
        if !text.starts_with('@') {
            assert_eq!(parse_rfc3339("t", &text).ok(), Some(t), "{text}");
        }
    }
    let Ok(text) = std::str::from_utf8(data.get(8..).unwrap_or_default()) else {
        return;
    };
    if let Ok(t) = parse_rfc3339("t", text) {
        let again = format_rfc3339(t);
        assert_eq!(
            parse_rfc3339("t", &again).ok(),
            Some(t),
            "{text:?} -> {again}"
        );
    }
});
