//! Duration values: `TTL`, `ENQUEUE_TIMEOUT`, `MAX_CLOCK_SKEW`, ... and the
//! time series' `window` query parameter all go through `parse_duration`.

#![no_main]

use std::time::Duration;

use impression_counter::fuzzing::parse_duration;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = parse_duration(text);
    if let Ok(secs) = text.trim().parse::<u64>() {
        assert_eq!(parsed, Ok(Duration::from_secs(secs)), "bare seconds");
    }
    if let Err(e) = parsed {
        assert!(e.contains("expected a duration"), "{e}");
    }
});
