//! Log record payloads (what a frame of a `wal-*.log` segment holds): any
//! bytes decode to a record or an error, and a decoded record encodes to
//! bytes that decode to the same record.

#![no_main]

use impression_counter::fuzzing::{
    LogRecord, begin_counted, decode_log, encode_campaign, push_counted,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(record) = decode_log(data) else {
        return;
    };
    let mut out = Vec::new();
    match &record {
        LogRecord::Campaign(c) => encode_campaign(&mut out, c),
        LogRecord::Counted(items) => {
            begin_counted(&mut out);
            for i in items {
                push_counted(
                    &mut out,
                    &i.campaign_id,
                    &i.ad_id,
                    i.fingerprint,
                    i.timestamp,
                );
            }
        }
    }
    assert_eq!(decode_log(&out).as_ref(), Ok(&record));
    assert!(out.len() <= data.len());
});
