//! `telemed import DIR`: loads every Bundle file (`*.json`, batch or transaction — Synthea's
//! output, say) under a folder through exactly what `POST /fhir` does: the same parsing,
//! validation, reference resolution and indexing, each transaction all or nothing, and the
//! same audit records, made out to the command and the user running it.
//!
//! Files load a few at a time. A transaction whose conditional references match nothing yet
//! (412) is tried once more after every other file, so a record that points at practitioners
//! and organisations in another file of the folder loads whatever the order of the files.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use futures::StreamExt as _;
use indicatif::{ProgressBar, ProgressStyle};

use crate::access::Access;
use crate::app::AppState;
use crate::audit;
use crate::error::FhirError;
use crate::fhir::transaction;

/// What an import did.
#[derive(Debug, Default)]
pub struct Report {
    /// Bundle files found.
    pub files: usize,
    /// Files whose every entry was stored.
    pub loaded: usize,
    /// Entries processed without error, across all files.
    pub resources: u64,
    /// Files that failed in whole or in part, and why.
    pub failures: Vec<(PathBuf, String)>,
    pub elapsed: Duration,
}

impl Report {
    /// Entries processed per second of the whole run.
    pub fn per_second(&self) -> f64 {
        self.resources as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// The outcome of one file.
enum Loaded {
    /// Every entry stored: how many.
    All(u64),
    /// A batch with failed entries: how many stood, and how many failed.
    Partly { stored: u64, failed: usize },
    /// Nothing stored; `retry` when a later attempt may succeed.
    Failed { why: String, retry: bool },
}

/// Imports every `*.json` file under `dir` (sorted by path), `jobs` at a time, showing progress
/// on `bar` (which may be hidden).
pub async fn import(
    state: &AppState,
    dir: &Path,
    jobs: usize,
    bar: ProgressBar,
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let mut files = Vec::new();
    bundle_files(dir, &mut files)?;
    files.sort();
    let mut report = Report {
        files: files.len(),
        ..Report::default()
    };
    bar.set_length(files.len() as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:40} {pos}/{len} files  {elapsed_precise}  eta {eta}  {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut headers = HeaderMap::new();
    headers.insert("prefer", HeaderValue::from_static("return=minimal"));

    let mut pending = files;
    for last_round in [false, true] {
        let outcomes: Vec<(PathBuf, Loaded)> = futures::stream::iter(pending)
            .map(|path| {
                let headers = &headers;
                async move {
                    let loaded = load(state, &path, headers).await;
                    (path, loaded)
                }
            })
            .buffer_unordered(jobs.max(1))
            .collect()
            .await;
        pending = Vec::new();
        for (path, loaded) in outcomes {
            match loaded {
                Loaded::Failed { retry: true, .. } if !last_round => {
                    pending.push(path);
                    continue;
                }
                Loaded::All(n) => {
                    report.loaded += 1;
                    report.resources += n;
                }
                Loaded::Partly { stored, failed } => {
                    report.resources += stored;
                    report.failures.push((
                        path,
                        format!("{failed} entries of the batch failed; the others were stored"),
                    ));
                }
                Loaded::Failed { why, .. } => report.failures.push((path, why)),
            }
            bar.inc(1);
            let seconds = started.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!(
                "{} resources, {:.0}/s, {} failed",
                report.resources,
                report.resources as f64 / seconds,
                report.failures.len()
            ));
        }
        if pending.is_empty() {
            break;
        }
        pending.sort();
    }
    bar.finish();
    report.failures.sort();
    report.elapsed = started.elapsed();
    Ok(report)
}

async fn load(state: &AppState, path: &Path, headers: &HeaderMap) -> Loaded {
    let body = match tokio::fs::read(path).await {
        Ok(body) => body,
        Err(error) => {
            return Loaded::Failed {
                why: format!("cannot read the file: {error}"),
                retry: false,
            };
        }
    };
    // Audited as a Bundle posted to the base URL by the user running the command.
    let processed = audit::record_local(
        state,
        audit::Local::command("telemed import"),
        ("transaction", "E"),
        transaction::process(state, &Access::Open, &body, headers),
        |processed| match processed {
            Ok(processed) if processed.failed == 0 => "0",
            Ok(_) => "4",
            Err(error) => audit::outcome(error.status()),
        },
    )
    .await;
    match processed {
        Ok(Ok(processed)) if processed.failed == 0 => Loaded::All(processed.entries as u64),
        Ok(Ok(processed)) => Loaded::Partly {
            stored: (processed.entries - processed.failed) as u64,
            failed: processed.failed,
        },
        Ok(Err(error)) => Loaded::Failed {
            retry: error.status() == StatusCode::PRECONDITION_FAILED,
            why: describe(&error),
        },
        // Its audit record could not be made durable.
        Err(error) => Loaded::Failed {
            why: format!("{error:#}"),
            retry: false,
        },
    }
}

/// An error as one line: its status and what its OperationOutcome says.
fn describe(error: &FhirError) -> String {
    let issues: Vec<String> = error
        .issues()
        .into_iter()
        .map(|issue| match issue.expression {
            Some(at) => format!("{} (at {at})", issue.diagnostics),
            None => issue.diagnostics,
        })
        .collect();
    format!("{}: {}", error.status(), issues.join("; "))
}

/// Every `*.json` file under `dir`, recursively.
fn bundle_files(dir: &Path, into: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    for entry in entries {
        let path = entry
            .with_context(|| format!("cannot read {}", dir.display()))?
            .path();
        if path.is_dir() {
            bundle_files(&path, into)?;
        } else if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"))
        {
            into.push(path);
        }
    }
    Ok(())
}
