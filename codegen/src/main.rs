//! `codegen`: writes the generated code of `fhir-models` from the vendored FHIR R4 definitions.
//!
//! ```sh
//! cargo run -p codegen            # regenerate fhir-models/src/generated/
//! cargo run -p codegen -- --check # exit 1 if the committed files differ from what it would write
//! ```
//!
//! Inputs are `spec/fhir.schema.json` (the resource types, and the typed models made from it
//! with typify, see `models.rs`), `spec/profiles-resources.json` (the elements of each type),
//! `spec/search-parameters.json` (the search parameters of each type) and
//! `spec/compartmentdefinition-patient.json` (the Patient compartment).
//! Which types get typed models is the one list in `typed.rs`. Output is formatted here with
//! prettyplease and is deterministic, so CI can compare bytes.
#![expect(clippy::print_stdout, reason = "a command-line tool reports on stdout")]

mod compartment;
mod elements;
mod models;
mod resource_type;
mod search_parameters;
mod typed;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::Value;

/// A generated file: where it goes (relative to the workspace root) and what it holds.
struct Output {
    path: &'static str,
    text: String,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn read(root: &Path, relative: &str) -> Result<String, String> {
    std::fs::read_to_string(root.join(relative)).map_err(|e| format!("cannot read {relative}: {e}"))
}

/// The entries of the FHIR Bundle `text`, the definitions file `name`: parsed once, for every
/// generator that reads that file.
fn bundle_entries(text: &str, name: &str) -> Result<Vec<Value>, String> {
    let mut bundle: Value =
        serde_json::from_str(text).map_err(|e| format!("{name} is not JSON: {e}"))?;
    match bundle.get_mut("entry").map(Value::take) {
        Some(Value::Array(entries)) => Ok(entries),
        _ => Err(format!("{name} has no entries")),
    }
}

fn generate(root: &Path) -> Result<Vec<Output>, String> {
    let schema = read(root, "spec/fhir.schema.json")?;
    let profiles = bundle_entries(
        &read(root, "spec/profiles-resources.json")?,
        "profiles-resources.json",
    )?;
    let search_parameters = bundle_entries(
        &read(root, "spec/search-parameters.json")?,
        "search-parameters.json",
    )?;
    let compartment = read(root, "spec/compartmentdefinition-patient.json")?;
    let models = models::generate(&schema, typed::TYPED_RESOURCES)?;
    let resource_types = resource_type::names(&schema)?;
    Ok(vec![
        Output {
            path: "fhir-models/src/generated/models.rs",
            text: models.models,
        },
        Output {
            path: "fhir-models/src/generated/resource.rs",
            text: models.resource,
        },
        Output {
            path: "fhir-models/src/generated/resource_type.rs",
            text: resource_type::generate(&schema, typed::TYPED_RESOURCES)?,
        },
        Output {
            path: "fhir-models/src/generated/elements.rs",
            text: elements::generate(&profiles)?,
        },
        Output {
            path: "fhir-models/src/generated/search_parameters.rs",
            text: search_parameters::generate(&search_parameters, &profiles, &resource_types)?,
        },
        Output {
            path: "fhir-models/src/generated/compartment.rs",
            text: compartment::generate(&compartment, &search_parameters, &resource_types)?,
        },
    ])
}

fn main() -> ExitCode {
    let check = std::env::args().skip(1).any(|a| a == "--check");
    let root = workspace_root();
    let outputs = match generate(&root) {
        Ok(outputs) => outputs,
        Err(error) => {
            eprintln!("codegen: {error}");
            return ExitCode::FAILURE;
        }
    };
    let mut stale = Vec::new();
    for output in &outputs {
        let path = root.join(output.path);
        let current = std::fs::read_to_string(&path).ok();
        if current.as_deref() == Some(output.text.as_str()) {
            continue;
        }
        if check {
            stale.push(output.path);
            continue;
        }
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&path, &output.text));
        if let Err(error) = written {
            eprintln!("codegen: cannot write {}: {error}", output.path);
            return ExitCode::FAILURE;
        }
        println!("wrote {}", output.path);
    }
    if stale.is_empty() {
        if check {
            println!("generated code is up to date");
        }
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "codegen: out of date (run `cargo run -p codegen` and commit): {}",
            stale.join(", ")
        );
        ExitCode::FAILURE
    }
}
