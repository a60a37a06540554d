//! `POST /api/v1/impressions/batch` bodies: the splitting of a JSON array or
//! NDJSON into items, each parsed on its own. The first byte picks the
//! format.

#![no_main]

use impression_counter::fuzzing::split_batch;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let ndjson = selector & 1 == 1;
    let items = match split_batch(body, ndjson) {
        Ok(items) => items,
        Err(e) => {
            assert!(!ndjson, "NDJSON is split by lines, never refused whole");
            assert_eq!(e.status().as_u16(), 400);
            return;
        }
    };
    if ndjson {
        let lines = body
            .split(|&b| b == b'\n')
            .filter(|l| !l.trim_ascii().is_empty())
            .count();
        assert_eq!(items.len(), lines);
    } else if let Ok(values) = serde_json::from_slice::<Vec<serde_json::Value>>(body) {
        assert_eq!(items.len(), values.len());
    }
    for (i, item) in items.iter().enumerate() {
        if let Err(e) = item {
            assert_eq!(e.status().as_u16(), 400);
            assert!(e.to_string().starts_with(&format!("item {i}: ")), "{e}");
        }
    }
});
