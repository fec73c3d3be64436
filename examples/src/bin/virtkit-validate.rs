//! `virtkit-validate FILE...`: check KubeVirt / CDI / network YAML or JSON
//! documents and print every problem as `file: path: message`.
//!
//! Exit codes: 0 all documents valid; 1 at least one problem; 2 a file
//! could not be read.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use serde::Serialize;
use virtkit_core::document::{check_text, Mode};
use virtkit_core::validate::{Severity, Violation};

#[derive(Parser)]
#[command(version, about = "Validate KubeVirt YAML/JSON documents")]
struct Args {
    /// Files to check (multi-document YAML allowed).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
    /// Keep unknown fields as warnings instead of errors.
    #[arg(long)]
    lenient: bool,
}

#[derive(Serialize)]
struct DocResult {
    file: String,
    document: usize,
    kind: Option<&'static str>,
    name: Option<String>,
    valid: bool,
    violations: Vec<Violation>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mode = if args.lenient {
        Mode::Lenient
    } else {
        Mode::Strict
    };
    let mut results = Vec::new();
    let mut unreadable = false;
    for f in &args.files {
        let file = f.display().to_string();
        let text = match std::fs::read_to_string(f) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("{file}: {e}");
                unreadable = true;
                continue;
            }
        };
        for res in check_text(&text, mode) {
            results.push(match res {
                Ok((doc, report)) => DocResult {
                    file: file.clone(),
                    document: doc.index,
                    kind: Some(doc.object.kind()),
                    name: doc.object.name().map(str::to_string),
                    valid: report.is_valid(),
                    violations: report.violations,
                },
                Err(e) => DocResult {
                    file: file.clone(),
                    document: e.document,
                    kind: None,
                    name: None,
                    valid: false,
                    violations: vec![Violation {
                        path: e.path,
                        message: e.message,
                        severity: Severity::Error,
                    }],
                },
            });
        }
    }
    if args.json {
        match serde_json::to_string_pretty(&results) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("cannot render JSON: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        for r in &results {
            for v in &r.violations {
                println!("{}: {v}", r.file);
            }
        }
        let bad = results.iter().filter(|r| !r.valid).count();
        eprintln!("{} document(s) checked, {bad} invalid", results.len());
    }
    if unreadable {
        ExitCode::from(2)
    } else if results.iter().all(|r| r.valid) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
