//! The `impression-counter` binary: configuration in, server out.

use anyhow::Context;
use clap::Parser;
use impression_counter::config::Config;
use impression_counter::startup::Application;
use impression_counter::{bulk, shutdown, telemetry};

/// mimalloc instead of glibc's malloc. A request allocates a dozen small
/// objects on one thread and the ingest workers free impressions allocated
/// on another; under callgrind glibc's malloc/free were about a quarter of
/// the instructions per single-impression request (see BENCHMARKS.md).
/// mimalloc's per-thread free lists make both paths cheap.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    // Invalid configuration exits here (status 2) with clap's message,
    // before anything binds.
    let config = Config::parse();
    telemetry::init(&config.rust_log, config.log_format());
    // Before any request can start the parse threads.
    bulk::set_parse_priority(config.batch_parse_priority);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let app = Application::build(&config).await?;
        app.run_until_stopped(shutdown::signal())
            .await
            .context("server error")
    })
}
