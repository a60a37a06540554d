//! HTTP tests against the real application, served on a free loopback port
//! and driven with a real HTTP client. Time comes from a manual clock, so
//! TTLs, hours and days pass instantly.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod backends;
mod batch;
mod breakdowns;
mod browser;
mod calendar;
mod campaigns;
mod cases;
mod concurrency;
mod dashboard_browser;
mod durability;
mod errors;
mod event_time;
mod generated;
mod helpers;
mod impressions;
mod memory;
mod memory_flood;
mod model;
mod operations;
mod pixel;
mod pixel_browser;
mod pixel_ids;
#[cfg(target_os = "linux")]
mod priorities;
mod process;
mod rate_limit;
mod readme;
mod redis_failover;
mod redis_faults;
mod redis_journal;
mod redis_nodes;
mod redis_reshard;
mod redis_servers;
mod redis_store;
mod routes;
mod security;
mod shutdown;
mod stats;
mod stream;
mod uniques;
