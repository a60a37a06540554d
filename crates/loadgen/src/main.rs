//! `loadgen`: drives an impression-counter server over HTTP, measures it, and
//! checks that it counted exactly what it acknowledged.
//!
//! A run: (optionally) start the server ([`spawn`]), create fresh campaigns
//! ([`api`]), send impressions from a fixed set of keep-alive connections in
//! closed or open loop ([`run`]), record which keys were acknowledged
//! ([`ledger`]), poll the campaigns' stats until they settle and compare
//! ([`verify`]), stop the server, and print the summary ([`report`]).
//!
//! Layout:
//! - [`args`]: options and their validation.
//! - [`workload`]: the key of each impression (distributions, duplicates),
//!   a pure function of seed and index.
//! - [`client`]: one HTTP/1.1 keep-alive connection on hyper, nothing pooled.
//! - [`request`]: the request bodies of each mode, and what answers mean.
//! - [`run`]: connection tasks, open-loop schedule, per-task tallies.
//! - [`ledger`]: acknowledged and unknown-outcome keys; expected totals and
//!   unique users.
//! - [`verify`]: polling the stats until they settle; MATCH or MISMATCH.
//! - [`report`]: the summary, as text and JSON.
//! - [`spawn`]: the server as a child process on a free loopback port.
//! - [`progress`]: the progress bar.
//! - [`api`]: campaign creation, stats and readiness calls.
//!
//! Exit status: 0 if verification matched (or was skipped), something was
//! acknowledged and a spawned server exited 0; 1 on MISMATCH, a verification
//! error, nothing acknowledged, or a spawned server failing its shutdown; 2 on
//! bad options or a run that could not start.

mod api;
mod args;
mod client;
mod ledger;
mod progress;
mod report;
mod request;
mod run;
mod spawn;
mod verify;
mod workload;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Parser;
use tokio::sync::{Mutex, watch};

use crate::api::ControlClient;
use crate::args::{Args, Settings};
use crate::client::Target;
use crate::ledger::Ledger;
use crate::progress::Progress;
use crate::report::Summary;
use crate::run::{Live, RunPlan};
use crate::spawn::SpawnedServer;
use crate::verify::{SettlePolicy, Status, Verification};
use crate::workload::{KeyLayout, SplitMix64, Workload, WorkloadSpec};

fn main() -> ExitCode {
    let settings = match Args::parse().validate() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let threads = settings.args.threads as usize;
    // One thread by default: loadgen shares the machine with the server it
    // measures, and one core of hand-built requests drives a lot of load.
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    let result = runtime
        .context("cannot start the async runtime")
        .and_then(|rt| rt.block_on(app(settings)));
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("loadgen: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The whole run; `Ok(passed)`.
async fn app(settings: Settings) -> anyhow::Result<bool> {
    let a = &settings.args;
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("loadgen: interrupted; finishing the requests in flight");
            let _ = stop_tx.send(true);
        }
    });

    let server = match settings.spawn {
        Some(kind) => {
            let binary = spawn::locate(kind, a.server_bin.as_deref())?;
            let s = SpawnedServer::start(binary, &a.server_env, a.ready_timeout).await?;
            eprintln!(
                "loadgen: started {} on {} (log: {})",
                s.binary().display(),
                s.addr(),
                s.log().display()
            );
            Some(s)
        }
        None => None,
    };
    let target = match &server {
        Some(s) => Target::at(s.addr()),
        None => Target::resolve(&a.url, a.allow_remote).await?,
    };

    // Whatever happens during the run, a spawned server is stopped.
    let measured = measure(&settings, &target, stop_rx).await;
    let server_exit = match server {
        Some(s) => {
            let log = s.log().to_path_buf();
            Some((s.stop().await.context("stopping the server")?, log))
        }
        None => None,
    };
    let summary = measured?;

    let json = summary_json(&summary)?;
    let to_stdout = a.json.as_deref().is_some_and(|p| p.as_os_str() == "-");
    let mut text = Vec::new();
    summary.write_text(&mut text)?;
    if let Some((status, _)) = &server_exit {
        writeln!(text, "  server       stopped: {status}")?;
    }
    if to_stdout {
        std::io::stderr().write_all(&text)?;
        println!("{json}");
    } else {
        std::io::stdout().write_all(&text)?;
        if let Some(path) = &a.json {
            std::fs::write(path, format!("{json}\n"))
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }

    let verified = matches!(summary.verification.status, Status::Match | Status::Skipped);
    if summary.impressions.acknowledged == 0 {
        eprintln!("loadgen: no impression was acknowledged");
    }
    // A server that does not exit 0 on SIGTERM failed its graceful shutdown.
    let server_ok = server_exit.as_ref().is_none_or(|(s, _)| s.success());
    let passed = verified && server_ok && summary.impressions.acknowledged > 0;
    if let Some((_, log)) = &server_exit {
        // Keep the server's log only when there is something to look into.
        if passed {
            let _ = std::fs::remove_file(log);
        } else {
            eprintln!("loadgen: server log kept at {}", log.display());
        }
    }
    Ok(passed)
}

fn summary_json(summary: &Summary) -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(summary)?)
}

/// Campaigns, load, verification: everything that needs the server up.
async fn measure(
    settings: &Settings,
    target: &Target,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<Summary> {
    let a = &settings.args;
    let mut control = ControlClient::new(target.clone());
    let ids = if settings.noop_target {
        made_up_ids(a.seed, a.campaigns)
    } else {
        let mut ids = Vec::with_capacity(a.campaigns as usize);
        for i in 0..a.campaigns {
            let name = format!("loadgen-{}-{i}", std::process::id());
            ids.push(
                control
                    .create_campaign(&name)
                    .await
                    .with_context(|| format!("cannot create campaigns on {}", target.addr))?,
            );
        }
        ids
    };

    let workload = Workload::new(WorkloadSpec {
        seed: a.seed,
        campaigns: a.campaigns,
        ads: a.ads,
        users: a.users,
        distribution: a.distribution,
        zipf_exponent: a.zipf_exponent,
        duplicate_ratio: a.duplicate_ratio,
    })?;
    let Some(layout) = KeyLayout::new(a.campaigns, a.ads, a.users, settings.scope) else {
        bail!("the key space does not fit in 64 bits");
    };
    let ledger = Arc::new(Ledger::new(layout));
    let plan = RunPlan {
        mode: a.mode,
        ndjson: a.ndjson,
        limit: settings.limit,
        per_request: settings.per_request,
        rate: a.rate,
        connections: a.connections,
        timeout: a.timeout,
    };
    let json_to_stdout = a.json.as_deref().is_some_and(|p| p.as_os_str() == "-");
    let show = !a.quiet && !json_to_stdout && std::io::stdout().is_terminal();
    let progress = Progress::new(settings.limit, show);
    let result = run::run(
        plan,
        workload,
        Arc::clone(&ledger),
        target.clone(),
        ids.clone(),
        Arc::new(Live::default()),
        progress,
        stop,
    )
    .await?;

    let verification = if settings.noop_target {
        Verification::skipped("noop target: it has no campaigns or stats")
    } else if a.no_verify {
        Verification::skipped("--no-verify")
    } else {
        let expected = ledger.expected();
        let expected_users = ledger.expected_users();
        let control = Arc::new(Mutex::new(control));
        let fetch = || {
            let control = Arc::clone(&control);
            let ids = &ids;
            async move {
                let mut control = control.lock().await;
                let mut counts = Vec::with_capacity(ids.len());
                for id in ids {
                    counts.push(control.counts(id).await?);
                }
                Ok::<_, api::ApiError>(counts)
            }
        };
        match verify::settle(
            &expected,
            SettlePolicy::with_timeout(a.verify_timeout),
            fetch,
        )
        .await
        {
            Ok(settled) => verify::compare(&ids, &expected, &expected_users, &settled),
            Err(e) => Verification::error(format!("cannot read the stats: {e}")),
        }
    };
    Ok(Summary::new(
        settings,
        target.addr.to_string(),
        &result,
        verification,
    ))
}

/// UUID-shaped campaign ids for a noop target, which creates nothing: the
/// same length as real ids, so the request bodies cost the same.
fn made_up_ids(seed: u64, n: u32) -> Vec<String> {
    let mut rng = SplitMix64::new(seed);
    (0..n)
        .map(|_| {
            let (a, b) = (rng.next(), rng.next());
            format!(
                "{:08x}-{:04x}-7{:03x}-8{:03x}-{:012x}",
                a >> 32,
                (a >> 16) & 0xffff,
                a & 0xfff,
                b >> 52,
                b & 0xffff_ffff_ffff
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_up_ids_look_like_uuids() {
        let ids = made_up_ids(1, 3);
        assert_eq!(ids.len(), 3);
        for id in &ids {
            assert_eq!(id.len(), 36, "{id}");
            let groups: Vec<usize> = id.split('-').map(str::len).collect();
            assert_eq!(groups, vec![8, 4, 4, 4, 12], "{id}");
        }
        assert_ne!(ids[0], ids[1]);
        assert_eq!(ids, made_up_ids(1, 3));
    }
}
