//! The command line (flags share their value parsers with the environment
//! variables): each input line is one flag, its first byte choosing which,
//! the rest its value. A configuration that parses must also yield its
//! derived settings (engine, API limits, address) without panicking, and
//! every duration in it must be usable as a deadline.

#![no_main]

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

use clap::Parser;
use impression_counter::config::Config;

use libfuzzer_sys::fuzz_target;

const FLAGS: &[&str] = &[
    "--server-port",
    "--bind-addr",
    "--ttl",
    "--impressions-queue-size",
    "--impression-workers",
    "--dedup-scope",
    "--enqueue-timeout",
    "--max-clock-skew",
    "--max-event-age",
    "--max-ads-per-campaign",
    "--history",
    "--batch-max-items",
    "--batch-max-bytes",
    "--pixel-cookie",
    "--pixel-id",
    "--pixel-cookie-max-age",
    "--pixel-cookie-secure",
    "--pixel-cookie-domain",
    "--pixel-hash-secret",
    "--trusted-proxies",
    "--storage",
    "--data-dir",
    "--fsync",
    "--log-segment-bytes",
    "--redis-url",
    "--redis-cluster-nodes",
    "--redis-prefix",
    "--api-keys",
    "--cors-allowed-origins",
    "--max-body-bytes",
    "--max-header-bytes",
    "--max-id-bytes",
    "--max-campaigns",
    "--max-connections",
    "--max-in-flight",
    "--header-read-timeout",
    "--body-read-timeout",
    "--rust-log",
    "--log-format",
];

fuzz_target!(|data: &[u8]| {
    let mut args: Vec<OsString> = vec!["impression-counter".into()];
    for line in data.split(|&b| b == b'\n').take(8) {
        let Some((&which, value)) = line.split_first() else {
            continue;
        };
        args.push(FLAGS[usize::from(which) % FLAGS.len()].into());
        args.push(OsStr::from_bytes(value).to_owned());
    }
    let Ok(config) = Config::try_parse_from(args) else {
        return;
    };
    let engine = config.engine();
    assert!(!engine.ttl.is_zero());
    assert!(engine.history_hours >= 25);
    let settings = config.api();
    assert!(settings.max_id_bytes >= 1 && settings.max_id_bytes <= 512);
    // Whatever cookie name, domain and lifetime were accepted, the pixel's
    // Set-Cookie for one of its ids is a valid header value.
    let ids = impression_counter::pixel_id::PixelIds::new(settings.pixel.clone());
    assert!(ids.set_cookie("0123456789abcdef0123456789abcdef").is_some());
    // Timeouts become deadlines (`Instant::now() + timeout`, as hyper and
    // tokio compute them): an accepted value must not overflow one.
    let now = std::time::Instant::now();
    for timeout in [
        config.header_read_timeout,
        config.body_read_timeout,
        config.enqueue_timeout,
        config.max_clock_skew,
        config.max_event_age,
        config.ttl,
        config.history,
    ] {
        assert!(now.checked_add(timeout).is_some(), "{timeout:?}");
    }
    let _ = config.listen_addr();
    let _ = config.storage_kind();
    assert!(config.workers() >= 1);
});
