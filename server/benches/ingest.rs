//! Ingest benchmark: Synthea-like patient records, each one FHIR `transaction` Bundle posted to
//! `POST /fhir` with `Prefer: return=minimal` by concurrent clients, on SQLite and on PostgreSQL,
//! next to the baseline of the same kind of resources created one by one with
//! `PUT /fhir/{type}/{id}`.
//!
//! ```sh
//! cargo bench -p telemed-server --bench ingest                        # both backends
//! cargo bench -p telemed-server --bench ingest -- --backend sqlite --patients 300
//! cargo bench -p telemed-server --bench ingest -- --clients 8 --baseline-patients 20 --seed 7
//! ```
//!
//! Options: `--patients N` Bundles to post (300), `--seed N` (1), `--clients N` concurrent
//! clients in both phases (4), `--baseline-patients N` records the baseline creates one by one
//! (60), `--verify N` patients whose resources are counted afterwards (5),
//! `--backend sqlite|postgres` (both). `--seconds` is not used: each phase runs until all its
//! resources are in.
//!
//! Everything about a record follows from the seed and the patient's number. A record is a
//! Patient and 5 to 20 Encounters, each with a set of vital signs (8 Observations, blood pressure
//! as one panel with two components), sometimes a metabolic or lipid panel (lab Observations and
//! a DiagnosticReport that lists them), Procedures, sometimes an Immunization or a new acute
//! Condition, a MedicationRequest for each chronic Condition and for some acute ones, and a
//! Claim for the Encounter and one for each MedicationRequest: about 210 resources, 200 KB of
//! JSON, per record. As in Synthea's output, the resources of a record point at each other with
//! `urn:uuid:` fullUrls, and at the Practitioners and Organizations with conditional references
//! (`Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|…`,
//! `Organization?identifier=https://github.com/synthetichealth/synthea|…`), which the server
//! resolves by search. Those 100 Practitioners and 20 Organizations are loaded once, before
//! each phase.
//!
//! Each phase runs on a fresh database (removed afterwards) and starts with one warm-up record,
//! so no figure includes building the server's per-type validators:
//!
//! 1. baseline: the first `--baseline-patients` records, each client taking the next record and
//!    `PUT`ting its resources one at a time, every reference already resolved (ids are the
//!    entries' UUIDs, chosen by the client). Every answer must be `201 Created`.
//! 2. transactions: all `--patients` records, each client posting the next Bundle. Every answer
//!    must be 200 with a `transaction-response` whose every entry is `201 Created`; anything
//!    else stops the bench with an error. Then, for `--verify` patients spread over the run,
//!    `Observation?subject=`, `Encounter?subject=…&participant=` (the GP, reached through a
//!    conditional reference) and `Claim?patient=` with `_summary=count` must count what the
//!    record holds, and each resource type's total must match too.
//!
//! Rates are over wall-clock time, from the first request to the last answer; latency is per
//! request: a whole Bundle, or one resource. Ingest slows as the database grows, so the ratio to
//! the baseline (`× base`, resources/s over resources/s) is taken like for like: over the first
//! Bundles done, as many as the baseline's records, into a database as large as the baseline's.
//! The row of all the Bundles follows, and the rate over each fifth of them shows how it changes
//! as the database grows. Bundles and bodies are generated (and serialized) before the clock
//! starts. The server runs on its own runtime with two worker threads and the clients on
//! another; on a small machine they share the cores, as they would with a load generator on the
//! same host. PostgreSQL is taken from `TELEMED_BENCH_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); `TELEMED_BENCH_DB_CONNECTIONS` overrides the
//! server's connection pool size (default 16).
#![expect(clippy::print_stdout, reason = "a benchmark prints its report")]

#[expect(
    dead_code,
    reason = "the fixed-duration runner and its table serve the other benches; ingest runs until \
              every resource is in"
)]
mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use hdrhistogram::Histogram;
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use time::macros::datetime;
use uuid::Uuid;

use common::{Backend, Options, Rng, Server};

// ---------------------------------------------------------------------------------------------
// What the records are made of

const SNOMED: &str = "http://snomed.info/sct";
const LOINC: &str = "http://loinc.org";
const RXNORM: &str = "http://www.nlm.nih.gov/research/umls/rxnorm";
const CVX: &str = "http://hl7.org/fhir/sid/cvx";
const UCUM: &str = "http://unitsofmeasure.org";
const NPI_SYSTEM: &str = "http://hl7.org/fhir/sid/us-npi";
const SYNTHEA_SYSTEM: &str = "https://github.com/synthetichealth/synthea";

const ORGANIZATIONS: usize = 20;
/// Practitioner `k` works at Organization `k % ORGANIZATIONS`.
const PRACTITIONERS: usize = 5 * ORGANIZATIONS;

const FAMILY: &[&str] = &[
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "García",
    "Miller",
    "Davis",
    "Rodríguez",
    "Martínez",
    "Hernández",
    "López",
    "Wilson",
    "Anderson",
    "Thomas",
    "Taylor",
    "Moore",
    "Jackson",
    "Martin",
    "Lee",
    "Nguyen",
    "O'Connor",
    "Kowalski",
    "Schmidt",
];
const GIVEN_FEMALE: &[&str] = &[
    "Mary",
    "Patricia",
    "Jennifer",
    "Linda",
    "Elizabeth",
    "María",
    "Susan",
    "Jessica",
    "Sarah",
    "Karen",
    "Lucía",
    "Zoë",
    "Chloé",
    "Aiko",
    "Fatma",
    "Ingrid",
];
const GIVEN_MALE: &[&str] = &[
    "James",
    "Robert",
    "John",
    "Michael",
    "David",
    "William",
    "José",
    "Richard",
    "Joseph",
    "Thomas",
    "Carlos",
    "Jürgen",
    "François",
    "Hiroshi",
    "Mehmet",
    "Wei",
];
const CITIES: &[(&str, &str)] = &[
    ("Boston", "02108"),
    ("Worcester", "01601"),
    ("Springfield", "01101"),
    ("Cambridge", "02138"),
    ("Lowell", "01850"),
    ("Brockton", "02301"),
    ("Quincy", "02169"),
    ("Lynn", "01901"),
    ("New Bedford", "02740"),
    ("Fall River", "02720"),
];
const STREETS: &[&str] = &[
    "Main St",
    "Oak Ave",
    "Maple Rd",
    "Cedar Ln",
    "Pine St",
    "Elm St",
    "Washington Blvd",
    "Lake View Dr",
    "Hillside Ave",
    "Harbor Way",
];
const INSURERS: &[&str] = &[
    "Medicare",
    "Medicaid",
    "Blue Cross Blue Shield",
    "Aetna",
    "UnitedHealthcare",
    "Cigna Health",
    "Humana",
];

/// A coded concept.
struct Code {
    system: &'static str,
    code: &'static str,
    display: &'static str,
}

const fn snomed(code: &'static str, display: &'static str) -> Code {
    Code {
        system: SNOMED,
        code,
        display,
    }
}

const fn rxnorm(code: &'static str, display: &'static str) -> Code {
    Code {
        system: RXNORM,
        code,
        display,
    }
}

const fn cvx(code: &'static str, display: &'static str) -> Code {
    Code {
        system: CVX,
        code,
        display,
    }
}

const WELLNESS: Code = snomed("185349003", "Encounter for check up (procedure)");
const GENERAL_EXAMINATION: Code = snomed("162673000", "General examination of patient (procedure)");
const FOLLOW_UP: Code = snomed("390906007", "Follow-up encounter (procedure)");
const SYMPTOM: Code = snomed("185345009", "Encounter for symptom (procedure)");

/// A Condition, with the medication prescribed for it (if any).
struct Diagnosis {
    code: Code,
    medication: Option<Code>,
}

const CHRONIC: &[Diagnosis] = &[
    Diagnosis {
        code: snomed("59621000", "Essential hypertension (disorder)"),
        medication: Some(rxnorm("314076", "lisinopril 10 MG Oral Tablet")),
    },
    Diagnosis {
        code: snomed("55822004", "Hyperlipidemia (disorder)"),
        medication: Some(rxnorm("312961", "Simvastatin 20 MG Oral Tablet")),
    },
    Diagnosis {
        code: snomed("15777000", "Prediabetes (finding)"),
        medication: Some(rxnorm(
            "860975",
            "24 HR Metformin hydrochloride 500 MG Extended Release Oral Tablet",
        )),
    },
    Diagnosis {
        code: snomed("195967001", "Asthma (disorder)"),
        medication: Some(rxnorm(
            "895994",
            "120 ACTUAT Fluticasone propionate 0.044 MG/ACTUAT Metered Dose Inhaler",
        )),
    },
    Diagnosis {
        code: snomed("162864005", "Body mass index 30+ - obesity (finding)"),
        medication: None,
    },
];

const ACUTE: &[Diagnosis] = &[
    Diagnosis {
        code: snomed("444814009", "Viral sinusitis (disorder)"),
        medication: None,
    },
    Diagnosis {
        code: snomed("10509002", "Acute bronchitis (disorder)"),
        medication: Some(rxnorm("313782", "Acetaminophen 325 MG Oral Tablet")),
    },
    Diagnosis {
        code: snomed("43878008", "Streptococcal sore throat (disorder)"),
        medication: Some(rxnorm(
            "834061",
            "Penicillin V Potassium 250 MG Oral Tablet",
        )),
    },
    Diagnosis {
        code: snomed("65363002", "Otitis media (disorder)"),
        medication: Some(rxnorm("308182", "Amoxicillin 250 MG Oral Capsule")),
    },
    Diagnosis {
        code: snomed("44465007", "Sprain of ankle (disorder)"),
        medication: Some(rxnorm("310965", "Ibuprofen 200 MG Oral Tablet")),
    },
    Diagnosis {
        code: snomed("195662009", "Acute viral pharyngitis (disorder)"),
        medication: None,
    },
];

const PROCEDURES: &[Code] = &[
    snomed("430193006", "Medication Reconciliation (procedure)"),
    snomed(
        "710824005",
        "Assessment of health and social care needs (procedure)",
    ),
    snomed("171207006", "Depression screening (procedure)"),
    snomed("428211000124100", "Assessment of substance use (procedure)"),
    snomed("117015009", "Throat culture (procedure)"),
    snomed(
        "23426006",
        "Measurement of respiratory function (procedure)",
    ),
];

const VACCINES: &[Code] = &[
    cvx("140", "Influenza, seasonal, injectable, preservative free"),
    cvx("113", "Td (adult) preservative free"),
    cvx("133", "Pneumococcal conjugate PCV 13"),
    cvx("62", "HPV, quadrivalent"),
    cvx("43", "Hep B, adult"),
];

/// An Observation's LOINC code, its UCUM unit and the range of its values, in tenths.
struct Measure {
    loinc: &'static str,
    display: &'static str,
    unit: &'static str,
    tenths: (usize, usize),
}

const fn measure(
    loinc: &'static str,
    display: &'static str,
    unit: &'static str,
    tenths: (usize, usize),
) -> Measure {
    Measure {
        loinc,
        display,
        unit,
        tenths,
    }
}

/// Taken at every Encounter, with the blood pressure panel.
const VITALS: &[Measure] = &[
    measure("8302-2", "Body Height", "cm", (1500, 1950)),
    measure("29463-7", "Body Weight", "kg", (450, 1200)),
    measure("39156-5", "Body Mass Index", "kg/m2", (180, 380)),
    measure("8867-4", "Heart rate", "/min", (550, 1100)),
    measure("9279-1", "Respiratory rate", "/min", (120, 200)),
    measure("8310-5", "Body temperature", "Cel", (360, 380)),
    measure(
        "72514-3",
        "Pain severity - 0-10 verbal numeric rating [Score] - Reported",
        "{score}",
        (0, 40),
    ),
];

/// A lab panel: the DiagnosticReport's code and its results.
struct Panel {
    loinc: &'static str,
    display: &'static str,
    results: &'static [Measure],
}

const METABOLIC: Panel = Panel {
    loinc: "51990-0",
    display: "Basic metabolic panel - Blood",
    results: &[
        measure("2339-0", "Glucose", "mg/dL", (650, 1500)),
        measure("6299-2", "Urea Nitrogen", "mg/dL", (70, 200)),
        measure("38483-4", "Creatinine", "mg/dL", (6, 13)),
        measure("49765-1", "Calcium", "mg/dL", (85, 103)),
        measure("2947-0", "Sodium", "mmol/L", (1360, 1440)),
        measure("6298-4", "Potassium", "mmol/L", (37, 52)),
        measure("2069-3", "Chloride", "mmol/L", (1010, 1080)),
        measure("20565-8", "Carbon Dioxide", "mmol/L", (210, 300)),
    ],
};

const LIPIDS: Panel = Panel {
    loinc: "57698-3",
    display: "Lipid panel with direct LDL - Serum or Plasma",
    results: &[
        measure("2093-3", "Total Cholesterol", "mg/dL", (1500, 2600)),
        measure("2571-8", "Triglycerides", "mg/dL", (800, 2200)),
        measure(
            "18262-6",
            "Low Density Lipoprotein Cholesterol",
            "mg/dL",
            (700, 1800),
        ),
        measure(
            "2085-9",
            "High Density Lipoprotein Cholesterol",
            "mg/dL",
            (350, 800),
        ),
    ],
};

fn concept(code: &Code) -> Value {
    json!({
        "coding": [{ "system": code.system, "code": code.code, "display": code.display }],
        "text": code.display,
    })
}

/// A CodeableConcept with one coding of a terminology.hl7.org code system.
fn hl7_concept(system: &str, code: &str, display: &str) -> Value {
    json!({
        "coding": [{
            "system": format!("http://terminology.hl7.org/CodeSystem/{system}"),
            "code": code,
            "display": display,
        }],
    })
}

fn quantity(measure: &Measure, rng: &mut Rng) -> Value {
    let (low, high) = measure.tenths;
    json!({
        "value": (low + rng.below(high - low + 1)) as f64 / 10.0,
        "unit": measure.unit,
        "system": UCUM,
        "code": measure.unit,
    })
}

fn money(cents: usize) -> Value {
    json!({ "value": cents as f64 / 100.0, "currency": "USD" })
}

fn instant(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).expect("a UTC time after 1900 formats")
}

fn minutes(n: usize) -> time::Duration {
    time::Duration::minutes(n as i64)
}

fn pick<'a, T>(rng: &mut Rng, list: &'a [T]) -> &'a T {
    &list[rng.below(list.len())]
}

/// A version 4 UUID from the seeded numbers, so a record's fullUrls are the same in every run.
fn uuid(rng: &mut Rng) -> Uuid {
    let bits = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
    uuid::Builder::from_random_bytes(bits.to_le_bytes()).into_uuid()
}

// ---------------------------------------------------------------------------------------------
// The Practitioners and Organizations, loaded before each phase

struct ReferenceData {
    organizations: Vec<Value>,
    practitioners: Vec<Value>,
    /// Each Organization's Synthea identifier.
    organization_identifiers: Vec<String>,
    /// Each Practitioner's "Dr. Given Family", for `display`.
    practitioner_names: Vec<String>,
}

fn organization_name(k: usize) -> String {
    let (city, _) = CITIES[k % CITIES.len()];
    format!("{city} Community Health Center {}", k / CITIES.len() + 1)
}

fn npi(k: usize) -> String {
    (9_999_900_000 + k).to_string()
}

impl ReferenceData {
    fn new(seed: u64) -> Self {
        let mut rng = Rng::new(seed ^ 0x5245_4645_5245_4e43);
        let organization_identifiers: Vec<String> = (0..ORGANIZATIONS)
            .map(|_| uuid(&mut rng).to_string())
            .collect();
        let organizations = organization_identifiers
            .iter()
            .enumerate()
            .map(|(k, identifier)| {
                let (city, postal_code) = CITIES[k % CITIES.len()];
                json!({
                    "resourceType": "Organization",
                    "id": format!("org-{k}"),
                    "identifier": [{ "system": SYNTHEA_SYSTEM, "value": identifier }],
                    "active": true,
                    "type": [hl7_concept("organization-type", "prov", "Healthcare Provider")],
                    "name": organization_name(k),
                    "telecom": [{ "system": "phone", "value": format!("617-555-{:04}", 1000 + k) }],
                    "address": [{
                        "line": [format!("{} {}", 10 + k, STREETS[k % STREETS.len()])],
                        "city": city,
                        "state": "MA",
                        "postalCode": postal_code,
                        "country": "US",
                    }],
                })
            })
            .collect();
        let mut practitioner_names = Vec::with_capacity(PRACTITIONERS);
        let practitioners = (0..PRACTITIONERS)
            .map(|k| {
                let (gender, names) = if rng.below(2) == 0 {
                    ("male", GIVEN_MALE)
                } else {
                    ("female", GIVEN_FEMALE)
                };
                let given = *pick(&mut rng, names);
                let family = *pick(&mut rng, FAMILY);
                practitioner_names.push(format!("Dr. {given} {family}"));
                let (city, postal_code) = CITIES[k % ORGANIZATIONS % CITIES.len()];
                json!({
                    "resourceType": "Practitioner",
                    "id": format!("prac-{k}"),
                    "identifier": [{ "system": NPI_SYSTEM, "value": npi(k) }],
                    "active": true,
                    "name": [{ "family": family, "given": [given], "prefix": ["Dr."] }],
                    "telecom": [{
                        "system": "email",
                        "value": format!("{}.{}@example.org", given.to_lowercase(), k),
                        "use": "work",
                    }],
                    "address": [{ "city": city, "state": "MA", "postalCode": postal_code, "country": "US" }],
                    "gender": gender,
                })
            })
            .collect();
        Self {
            organizations,
            practitioners,
            organization_identifiers,
            practitioner_names,
        }
    }

    fn practitioner(&self, k: usize) -> Value {
        json!({
            "reference": format!("Practitioner?identifier={NPI_SYSTEM}|{}", npi(k)),
            "display": self.practitioner_names[k],
        })
    }

    fn organization(&self, k: usize) -> Value {
        json!({
            "reference": format!(
                "Organization?identifier={SYNTHEA_SYSTEM}|{}",
                self.organization_identifiers[k]
            ),
            "display": organization_name(k),
        })
    }

    /// Each conditional reference the records use → the `Type/id` it resolves to.
    fn resolved(&self) -> HashMap<String, String> {
        let organizations = (0..ORGANIZATIONS).map(|k| {
            let reference = self.organization(k)["reference"]
                .as_str()
                .map(str::to_owned);
            (reference, format!("Organization/org-{k}"))
        });
        let practitioners = (0..PRACTITIONERS).map(|k| {
            let reference = self.practitioner(k)["reference"]
                .as_str()
                .map(str::to_owned);
            (reference, format!("Practitioner/prac-{k}"))
        });
        organizations
            .chain(practitioners)
            .filter_map(|(reference, target)| Some((reference?, target)))
            .collect()
    }

    /// PUTs the Organizations and Practitioners.
    async fn load(&self, client: &reqwest::Client, base: &str) -> anyhow::Result<()> {
        for resource in self.organizations.iter().chain(&self.practitioners) {
            let (Some(type_name), Some(id)) =
                (resource["resourceType"].as_str(), resource["id"].as_str())
            else {
                anyhow::bail!("a reference resource without a type and id");
            };
            put(
                client,
                base,
                &format!("{type_name}/{id}"),
                resource.to_string().into(),
            )
            .await?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// A patient's record

/// A resource of a record, as generated: its references to other resources of the record are
/// `urn:uuid:` fullUrls, those to Practitioners and Organizations conditional.
struct Generated {
    type_name: &'static str,
    uuid: Uuid,
    body: Value,
}

/// What the server must find about a patient once the record is in.
#[derive(Clone, Copy, Default)]
struct Expected {
    observations: usize,
    encounters: usize,
    claims: usize,
    /// The patient's general practitioner, and how many Encounters they took part in.
    gp: usize,
    gp_encounters: usize,
}

struct Record {
    /// In the order they are created one by one: each after the resources it references.
    resources: Vec<Generated>,
    expected: Expected,
}

/// Builds one record.
struct Builder<'a> {
    rng: Rng,
    reference: &'a ReferenceData,
    resources: Vec<Generated>,
}

impl Builder<'_> {
    /// Adds a resource and returns a reference to it (its fullUrl).
    fn add(&mut self, type_name: &'static str, body: Value) -> Value {
        let uuid = uuid(&mut self.rng);
        self.resources.push(Generated {
            type_name,
            uuid,
            body,
        });
        json!({ "reference": format!("urn:uuid:{uuid}") })
    }

    fn below(&mut self, n: usize) -> usize {
        self.rng.below(n)
    }
}

/// What the resources of an Encounter share.
struct Visit<'a> {
    patient: &'a Value,
    encounter: &'a Value,
    start: OffsetDateTime,
    end: OffsetDateTime,
    practitioner: usize,
    organization: usize,
}

/// Patient `n`'s record. Every number comes from the seed and `n`, so a record is the same
/// whichever phase or client generates it.
fn record(seed: u64, n: usize, reference: &ReferenceData) -> Record {
    // Seeds of neighbouring patients differ by one bit or two; mixing once more gives each
    // patient numbers that have nothing to do with the next one's.
    let mixed = Rng::new(seed ^ (n as u64).wrapping_mul(0xd134_2543_de82_ef95)).next_u64();
    let mut b = Builder {
        rng: Rng::new(mixed),
        reference,
        resources: Vec::with_capacity(256),
    };
    let mut expected = Expected::default();

    let (gender, names, prefix) = match b.below(2) {
        0 => ("male", GIVEN_MALE, "Mr."),
        _ => ("female", GIVEN_FEMALE, "Ms."),
    };
    let family = *pick(&mut b.rng, FAMILY);
    let mut given = vec![*pick(&mut b.rng, names)];
    if b.below(3) == 0 {
        given.push(*pick(&mut b.rng, names));
    }
    let birth = datetime!(1940-01-01 0:00 UTC) + time::Duration::days(b.below(75 * 365) as i64);
    let (city, postal_code) = *pick(&mut b.rng, CITIES);
    let organization = b.below(ORGANIZATIONS);
    let gp = organization + ORGANIZATIONS * b.below(PRACTITIONERS / ORGANIZATIONS);
    expected.gp = gp;
    let insurer = *pick(&mut b.rng, INSURERS);
    let mrn = uuid(&mut b.rng).to_string();
    let full_name = format!("{prefix} {} {family}", given.join(" "));
    let patient_body = json!({
        "resourceType": "Patient",
        "text": {
            "status": "generated",
            "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Generated by the telemed ingest benchmark</div>",
        },
        "identifier": [
            { "system": SYNTHEA_SYSTEM, "value": mrn },
            {
                "type": hl7_concept("v2-0203", "MR", "Medical Record Number"),
                "system": "http://hospital.example.org",
                "value": mrn,
            },
            {
                "type": hl7_concept("v2-0203", "SS", "Social Security Number"),
                "system": "http://hl7.org/fhir/sid/us-ssn",
                "value": format!("999-{:02}-{:04}", b.below(100), b.below(10_000)),
            },
        ],
        "name": [{ "use": "official", "family": family, "given": given, "prefix": [prefix] }],
        "telecom": [{ "system": "phone", "value": format!("555-{:03}-{:04}", b.below(1000), b.below(10_000)), "use": "home" }],
        "gender": gender,
        "birthDate": birth.date().to_string(),
        "address": [{
            "line": [format!("{} {}", 1 + b.below(999), pick(&mut b.rng, STREETS))],
            "city": city,
            "state": "MA",
            "postalCode": postal_code,
            "country": "US",
        }],
        "maritalStatus": hl7_concept("v3-MaritalStatus", if b.below(2) == 0 { "M" } else { "S" }, "Marital status"),
        "multipleBirthBoolean": false,
        "communication": [{
            "language": {
                "coding": [{ "system": "urn:ietf:bcp:47", "code": "en-US", "display": "English (United States)" }],
            },
        }],
        "generalPractitioner": [reference.practitioner(gp)],
        "managingOrganization": reference.organization(organization),
    });
    let mut patient = b.add("Patient", patient_body);
    patient["display"] = json!(full_name);

    // Encounters on distinct days of 2015–2024, oldest first.
    let encounters = 5 + b.below(16);
    let mut days: Vec<usize> = (0..encounters).map(|_| b.below(10 * 365)).collect();
    days.sort_unstable();
    let chronic: Vec<&Diagnosis> = (0..b.below(3)).map(|_| pick(&mut b.rng, CHRONIC)).collect();
    // The chronic Conditions, once recorded at the first Encounter.
    let mut chronic_conditions: Vec<(Value, Option<&Code>)> = Vec::new();
    for (j, day) in days.into_iter().enumerate() {
        let start = datetime!(2015-01-01 8:00 UTC)
            + time::Duration::days(day as i64)
            + minutes(15 * b.below(36));
        let end = start + minutes(15 + 15 * b.below(4));
        // Most visits are with the GP; some elsewhere.
        let (practitioner, organization) = if b.below(5) == 0 {
            let k = b.below(PRACTITIONERS);
            (k, k % ORGANIZATIONS)
        } else {
            (gp, organization)
        };
        expected.encounters += 1;
        if practitioner == gp {
            expected.gp_encounters += 1;
        }
        let acute = (b.below(10) < 3).then(|| pick(&mut b.rng, ACUTE));
        let encounter_type = match (acute, j) {
            (Some(_), _) => &SYMPTOM,
            (None, 0) => &WELLNESS,
            (None, _) => pick(&mut b.rng, &[&WELLNESS, &GENERAL_EXAMINATION, &FOLLOW_UP]),
        };
        let mut encounter_body = json!({
            "resourceType": "Encounter",
            "status": "finished",
            "class": { "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB", "display": "ambulatory" },
            "type": [concept(encounter_type)],
            "subject": patient,
            "participant": [{
                "type": [hl7_concept("v3-ParticipationType", "PPRF", "primary performer")],
                "period": { "start": instant(start), "end": instant(end) },
                "individual": reference.practitioner(practitioner),
            }],
            "period": { "start": instant(start), "end": instant(end) },
            "serviceProvider": reference.organization(organization),
        });
        if let Some(acute) = acute {
            encounter_body["reasonCode"] = json!([concept(&acute.code)]);
        }
        let encounter = b.add("Encounter", encounter_body);
        let visit = Visit {
            patient: &patient,
            encounter: &encounter,
            start,
            end,
            practitioner,
            organization,
        };

        // Conditions diagnosed at this Encounter: the chronic ones at the first, an acute one
        // when the visit is for a symptom.
        let mut diagnosed = Vec::new();
        if j == 0 {
            for diagnosis in &chronic {
                let condition = add_condition(&mut b, &visit, &diagnosis.code, None);
                chronic_conditions.push((condition.clone(), diagnosis.medication.as_ref()));
                diagnosed.push(condition);
            }
        }
        let mut medications: Vec<(Value, &Code)> = Vec::new();
        if let Some(acute) = acute {
            let abated = start + time::Duration::days(7 + b.below(21) as i64);
            let condition = add_condition(&mut b, &visit, &acute.code, Some(abated));
            diagnosed.push(condition.clone());
            if let Some(medication) = &acute.medication
                && b.below(3) != 0
            {
                medications.push((condition, medication));
            }
        }
        // Chronic medications are renewed at every visit.
        for (condition, medication) in &chronic_conditions {
            if let Some(medication) = medication {
                medications.push((condition.clone(), *medication));
            }
        }

        for (k, measure) in VITALS.iter().enumerate() {
            if k == 2 {
                add_blood_pressure(&mut b, &visit);
            }
            let value = quantity(measure, &mut b.rng);
            add_observation(&mut b, &visit, "vital-signs", measure, value);
        }
        expected.observations += VITALS.len() + 1;
        for panel in [&METABOLIC, &LIPIDS] {
            let odds = if std::ptr::eq(panel, &METABOLIC) {
                3
            } else {
                5
            };
            if b.below(odds) == 0 {
                add_panel(&mut b, &visit, panel);
                expected.observations += panel.results.len();
            }
        }

        let mut procedures = Vec::new();
        for _ in 0..b.below(3) {
            let code = pick(&mut b.rng, PROCEDURES);
            let procedure = b.add(
                "Procedure",
                json!({
                    "resourceType": "Procedure",
                    "status": "completed",
                    "code": concept(code),
                    "subject": patient,
                    "encounter": encounter,
                    "performedPeriod": { "start": instant(start), "end": instant(start + minutes(15)) },
                    "performer": [{ "actor": reference.practitioner(practitioner) }],
                }),
            );
            procedures.push((procedure, code));
        }
        let mut vaccines = Vec::new();
        if b.below(4) == 0 {
            let code = pick(&mut b.rng, VACCINES);
            b.add(
                "Immunization",
                json!({
                    "resourceType": "Immunization",
                    "status": "completed",
                    "vaccineCode": concept(code),
                    "patient": patient,
                    "encounter": encounter,
                    "occurrenceDateTime": instant(start + minutes(10)),
                    "primarySource": true,
                    "performer": [{ "actor": reference.practitioner(practitioner) }],
                }),
            );
            vaccines.push(code);
        }

        for (condition, medication) in &medications {
            let request = add_medication_request(&mut b, &visit, condition, medication);
            add_pharmacy_claim(&mut b, &visit, insurer, &request, medication);
            expected.claims += 1;
        }
        add_encounter_claim(
            &mut b,
            &visit,
            insurer,
            encounter_type,
            &diagnosed,
            &procedures,
            &vaccines,
        );
        expected.claims += 1;
    }
    Record {
        resources: b.resources,
        expected,
    }
}

fn add_condition(
    b: &mut Builder<'_>,
    visit: &Visit<'_>,
    code: &Code,
    abated: Option<OffsetDateTime>,
) -> Value {
    let status = if abated.is_some() {
        "resolved"
    } else {
        "active"
    };
    let mut body = json!({
        "resourceType": "Condition",
        "clinicalStatus": hl7_concept("condition-clinical", status, status),
        "verificationStatus": hl7_concept("condition-ver-status", "confirmed", "Confirmed"),
        "category": [hl7_concept("condition-category", "encounter-diagnosis", "Encounter Diagnosis")],
        "code": concept(code),
        "subject": visit.patient,
        "encounter": visit.encounter,
        "onsetDateTime": instant(visit.start),
        "recordedDate": instant(visit.start),
    });
    if let Some(abated) = abated {
        body["abatementDateTime"] = json!(instant(abated));
    }
    b.add("Condition", body)
}

fn add_observation(
    b: &mut Builder<'_>,
    visit: &Visit<'_>,
    category: &str,
    measure: &Measure,
    value: Value,
) -> Value {
    let display = if category == "laboratory" {
        "Laboratory"
    } else {
        "Vital Signs"
    };
    b.add(
        "Observation",
        json!({
            "resourceType": "Observation",
            "status": "final",
            "category": [hl7_concept("observation-category", category, display)],
            "code": {
                "coding": [{ "system": LOINC, "code": measure.loinc, "display": measure.display }],
                "text": measure.display,
            },
            "subject": visit.patient,
            "encounter": visit.encounter,
            "effectiveDateTime": instant(visit.start + minutes(5)),
            "issued": instant(visit.start + minutes(6)),
            "valueQuantity": value,
        }),
    )
}

/// Blood pressure, as Synthea writes it: one panel with systolic and diastolic components.
fn add_blood_pressure(b: &mut Builder<'_>, visit: &Visit<'_>) {
    let component = |loinc: &str, display: &str, value: usize| {
        json!({
            "code": { "coding": [{ "system": LOINC, "code": loinc, "display": display }], "text": display },
            "valueQuantity": { "value": value, "unit": "mm[Hg]", "system": UCUM, "code": "mm[Hg]" },
        })
    };
    let systolic = 100 + b.below(60);
    let diastolic = 60 + b.below(30);
    b.add(
        "Observation",
        json!({
            "resourceType": "Observation",
            "status": "final",
            "category": [hl7_concept("observation-category", "vital-signs", "Vital Signs")],
            "code": {
                "coding": [{ "system": LOINC, "code": "85354-9", "display": "Blood pressure panel with all children optional" }],
                "text": "Blood pressure panel with all children optional",
            },
            "subject": visit.patient,
            "encounter": visit.encounter,
            "effectiveDateTime": instant(visit.start + minutes(5)),
            "issued": instant(visit.start + minutes(6)),
            "component": [
                component("8480-6", "Systolic Blood Pressure", systolic),
                component("8462-4", "Diastolic Blood Pressure", diastolic),
            ],
        }),
    );
}

/// The panel's lab Observations and the DiagnosticReport that lists them.
fn add_panel(b: &mut Builder<'_>, visit: &Visit<'_>, panel: &Panel) {
    let mut results = Vec::with_capacity(panel.results.len());
    for measure in panel.results {
        let value = quantity(measure, &mut b.rng);
        let mut result = add_observation(b, visit, "laboratory", measure, value);
        result["display"] = json!(measure.display);
        results.push(result);
    }
    b.add(
        "DiagnosticReport",
        json!({
            "resourceType": "DiagnosticReport",
            "status": "final",
            "category": [hl7_concept("v2-0074", "LAB", "Laboratory")],
            "code": {
                "coding": [{ "system": LOINC, "code": panel.loinc, "display": panel.display }],
                "text": panel.display,
            },
            "subject": visit.patient,
            "encounter": visit.encounter,
            "effectiveDateTime": instant(visit.start + minutes(5)),
            "issued": instant(visit.end),
            "performer": [b.reference.organization(visit.organization)],
            "result": results,
        }),
    );
}

fn add_medication_request(
    b: &mut Builder<'_>,
    visit: &Visit<'_>,
    condition: &Value,
    medication: &Code,
) -> Value {
    let requester = b.reference.practitioner(visit.practitioner);
    b.add(
        "MedicationRequest",
        json!({
            "resourceType": "MedicationRequest",
            "status": "active",
            "intent": "order",
            "medicationCodeableConcept": concept(medication),
            "subject": visit.patient,
            "encounter": visit.encounter,
            "authoredOn": instant(visit.start + minutes(10)),
            "requester": requester,
            "reasonReference": [condition],
            "dosageInstruction": [{
                "sequence": 1,
                "timing": { "repeat": { "frequency": 1, "period": 1, "periodUnit": "d" } },
                "asNeededBoolean": false,
                "doseAndRate": [{
                    "type": hl7_concept("dose-rate-type", "ordered", "Ordered"),
                    "doseQuantity": { "value": 1 },
                }],
            }],
        }),
    )
}

/// What every Claim of a visit shares.
fn claim(
    b: &Builder<'_>,
    visit: &Visit<'_>,
    insurer: &str,
    claim_type: &str,
    total_cents: usize,
) -> Value {
    json!({
        "resourceType": "Claim",
        "status": "active",
        "type": hl7_concept("claim-type", claim_type, claim_type),
        "use": "claim",
        "patient": visit.patient,
        "billablePeriod": { "start": instant(visit.start), "end": instant(visit.end) },
        "created": instant(visit.end),
        "insurer": { "display": insurer },
        "provider": b.reference.organization(visit.organization),
        "priority": hl7_concept("processpriority", "normal", "Normal"),
        "insurance": [{ "sequence": 1, "focal": true, "coverage": { "display": insurer } }],
        "total": money(total_cents),
    })
}

fn add_pharmacy_claim(
    b: &mut Builder<'_>,
    visit: &Visit<'_>,
    insurer: &str,
    request: &Value,
    medication: &Code,
) {
    let cents = 500 + b.below(20_000);
    let mut body = claim(b, visit, insurer, "pharmacy", cents);
    body["prescription"] = request.clone();
    body["item"] = json!([{
        "sequence": 1,
        "productOrService": concept(medication),
        "encounter": [visit.encounter],
        "net": money(cents),
    }]);
    b.add("Claim", body);
}

fn add_encounter_claim(
    b: &mut Builder<'_>,
    visit: &Visit<'_>,
    insurer: &str,
    encounter_type: &Code,
    diagnosed: &[Value],
    procedures: &[(Value, &Code)],
    vaccines: &[&Code],
) {
    let mut total = 0;
    let mut items = Vec::new();
    let mut price = |b: &mut Builder<'_>, base: usize| {
        let cents = base + b.below(base);
        total += cents;
        money(cents)
    };
    items.push(json!({
        "sequence": 1,
        "productOrService": concept(encounter_type),
        "encounter": [visit.encounter],
        "net": price(b, 7_000),
    }));
    for (i, (_, code)) in procedures.iter().enumerate() {
        items.push(json!({
            "sequence": items.len() + 1,
            "procedureSequence": [i + 1],
            "productOrService": concept(code),
            "net": price(b, 20_000),
        }));
    }
    for code in vaccines {
        items.push(json!({
            "sequence": items.len() + 1,
            "productOrService": concept(code),
            "net": price(b, 14_000),
        }));
    }
    let mut body = claim(b, visit, insurer, "professional", total);
    body["item"] = json!(items);
    if !diagnosed.is_empty() {
        body["diagnosis"] = diagnosed
            .iter()
            .enumerate()
            .map(|(i, condition)| json!({ "sequence": i + 1, "diagnosisReference": condition }))
            .collect();
    }
    if !procedures.is_empty() {
        body["procedure"] = procedures
            .iter()
            .enumerate()
            .map(
                |(i, (procedure, _))| json!({ "sequence": i + 1, "procedureReference": procedure }),
            )
            .collect();
    }
    b.add("Claim", body);
}

// ---------------------------------------------------------------------------------------------
// The requests, prepared before the clock starts

/// A record as one transaction Bundle.
struct Transaction {
    body: Bytes,
    entries: usize,
}

fn transaction(record: &Record) -> anyhow::Result<Transaction> {
    let entries: Vec<Value> = record
        .resources
        .iter()
        .map(|resource| {
            json!({
                "fullUrl": format!("urn:uuid:{}", resource.uuid),
                "resource": resource.body,
                "request": { "method": "POST", "url": resource.type_name },
            })
        })
        .collect();
    let bundle = json!({ "resourceType": "Bundle", "type": "transaction", "entry": entries });
    Ok(Transaction {
        body: serde_json::to_vec(&bundle)?.into(),
        entries: record.resources.len(),
    })
}

/// A record as `PUT {type}/{id}` requests, ids chosen by the client and every reference
/// resolved: the `urn:uuid:` ones to the resources' ids, the conditional ones with `resolved`.
fn one_by_one(record: &Record, resolved: &HashMap<String, String>) -> Vec<(String, Bytes)> {
    let mut targets = resolved.clone();
    for resource in &record.resources {
        targets.insert(
            format!("urn:uuid:{}", resource.uuid),
            format!("{}/{}", resource.type_name, resource.uuid),
        );
    }
    record
        .resources
        .iter()
        .map(|resource| {
            let mut body = resource.body.clone();
            resolve_references(&mut body, &targets);
            body["id"] = json!(resource.uuid.to_string());
            let path = format!("{}/{}", resource.type_name, resource.uuid);
            (path, body.to_string().into())
        })
        .collect()
}

fn resolve_references(value: &mut Value, targets: &HashMap<String, String>) {
    match value {
        Value::Object(object) => {
            for (key, value) in object.iter_mut() {
                match value {
                    Value::String(reference) if key == "reference" => {
                        if let Some(target) = targets.get(reference.as_str()) {
                            reference.clone_from(target);
                        }
                    }
                    _ => resolve_references(value, targets),
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                resolve_references(item, targets);
            }
        }
        _ => {}
    }
}

/// Everything the run sends, generated up front.
struct Workload {
    transactions: Arc<Vec<Transaction>>,
    expected: Vec<Expected>,
    /// The baseline's records, as single requests.
    baseline: Arc<Vec<Vec<(String, Bytes)>>>,
    /// The record each phase starts with, outside the measurement: as a Bundle and one by one.
    warm_up: (Transaction, Vec<(String, Bytes)>),
    /// How many resources of each type the warm-up record and the Bundles hold.
    totals: BTreeMap<&'static str, usize>,
}

/// Patient number of the warm-up record: one no run posts otherwise.
const WARM_UP: usize = usize::MAX;

impl Workload {
    fn generate(ingest: &IngestOptions, reference: &ReferenceData) -> anyhow::Result<Self> {
        let resolved = reference.resolved();
        let mut totals = BTreeMap::new();
        let mut count = |record: &Record| {
            for resource in &record.resources {
                *totals.entry(resource.type_name).or_insert(0) += 1;
            }
        };
        let warm_up_record = record(ingest.seed, WARM_UP, reference);
        count(&warm_up_record);
        let warm_up = (
            transaction(&warm_up_record)?,
            one_by_one(&warm_up_record, &resolved),
        );
        let mut transactions = Vec::with_capacity(ingest.patients);
        let mut expected = Vec::with_capacity(ingest.patients);
        let mut baseline = Vec::with_capacity(ingest.baseline_patients);
        for n in 0..ingest.patients.max(ingest.baseline_patients) {
            let record = record(ingest.seed, n, reference);
            if n < ingest.patients {
                count(&record);
                transactions.push(transaction(&record)?);
                expected.push(record.expected);
            }
            if n < ingest.baseline_patients {
                baseline.push(one_by_one(&record, &resolved));
            }
        }
        Ok(Self {
            transactions: Arc::new(transactions),
            expected,
            baseline: Arc::new(baseline),
            warm_up,
            totals,
        })
    }

    /// What the Bundles hold, for the report.
    fn describe(&self) -> String {
        let entries: Vec<usize> = self.transactions.iter().map(|t| t.entries).collect();
        let resources: usize = entries.iter().sum();
        let bytes: usize = self.transactions.iter().map(|t| t.body.len()).sum();
        let baseline: usize = self.baseline.iter().map(Vec::len).sum();
        format!(
            "{} Bundles, {resources} resources: {:.0} per Bundle (min {}, max {}), {:.1} MB of \
             JSON, {:.0} bytes per resource; baseline: {} records, {baseline} resources",
            entries.len(),
            resources as f64 / entries.len().max(1) as f64,
            entries.iter().min().unwrap_or(&0),
            entries.iter().max().unwrap_or(&0),
            bytes as f64 / 1e6,
            bytes as f64 / resources.max(1) as f64,
            self.baseline.len(),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Sending

const FHIR_JSON: &str = "application/fhir+json";

/// The start of an answer, for an error message.
fn excerpt(body: &[u8]) -> String {
    String::from_utf8_lossy(body)
        .chars()
        .filter(|c| !c.is_control())
        .take(600)
        .collect()
}

/// `PUT {base}/fhir/{path}`; the answer must be 201 or 200.
async fn put(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    body: Bytes,
) -> anyhow::Result<StatusCode> {
    let response = client
        .put(format!("{base}/fhir/{path}"))
        .header("content-type", FHIR_JSON)
        .header("prefer", "return=minimal")
        .body(body)
        .send()
        .await?;
    let status = response.status();
    let answer = response.bytes().await?;
    anyhow::ensure!(
        status == StatusCode::CREATED || status == StatusCode::OK,
        "PUT {path}: HTTP {status}: {}",
        excerpt(&answer)
    );
    Ok(status)
}

#[derive(Deserialize)]
struct ResponseBundle {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    entry: Vec<ResponseEntry>,
}

#[derive(Deserialize)]
struct ResponseEntry {
    response: EntryResponse,
}

#[derive(Deserialize)]
struct EntryResponse {
    status: String,
    location: Option<String>,
}

/// Posts one Bundle; returns the latency and the id the server gave its first entry, the
/// Patient. Anything but 200 with every entry `201 Created` is an error.
async fn post_transaction(
    client: &reqwest::Client,
    base: &str,
    transaction: &Transaction,
) -> anyhow::Result<(Duration, String)> {
    let started = Instant::now();
    let response = client
        .post(format!("{base}/fhir"))
        .header("content-type", FHIR_JSON)
        .header("prefer", "return=minimal")
        .body(transaction.body.clone())
        .send()
        .await?;
    let status = response.status();
    let body = response.bytes().await?;
    let latency = started.elapsed();
    anyhow::ensure!(
        status == StatusCode::OK,
        "HTTP {status}: {}",
        excerpt(&body)
    );
    let answer: ResponseBundle = serde_json::from_slice(&body)
        .with_context(|| format!("the answer is not a Bundle: {}", excerpt(&body)))?;
    anyhow::ensure!(
        answer.kind == "transaction-response",
        "the answer is a {:?} Bundle, not a transaction-response",
        answer.kind
    );
    anyhow::ensure!(
        answer.entry.len() == transaction.entries,
        "the answer has {} entries for the {} sent",
        answer.entry.len(),
        transaction.entries
    );
    if let Some((i, entry)) = answer
        .entry
        .iter()
        .enumerate()
        .find(|(_, entry)| !entry.response.status.starts_with("201"))
    {
        anyhow::bail!(
            "entry {i} answered {:?}, not 201 Created",
            entry.response.status
        );
    }
    let location = answer.entry[0]
        .response
        .location
        .as_deref()
        .context("the Patient's entry has no location")?;
    Ok((latency, patient_id(location)?))
}

/// `…/Patient/{id}/_history/{vid}` or `…/Patient/{id}` → `id`.
fn patient_id(location: &str) -> anyhow::Result<String> {
    let path = location
        .split_once("/_history/")
        .map_or(location, |(path, _)| path);
    let (rest, id) = path.rsplit_once('/').context("a location ends in /id")?;
    anyhow::ensure!(
        rest.ends_with("/Patient") || rest == "Patient",
        "the first entry's location {location:?} is not a Patient's"
    );
    Ok(id.to_owned())
}

/// One record, sent.
struct Done<R> {
    /// When its last answer came, from the start of the phase.
    finished: Duration,
    /// Of each of its requests.
    latencies: Vec<Duration>,
    resources: usize,
    keep: R,
}

/// What a phase, or the first records of one, measured.
struct Measured {
    requests: usize,
    resources: usize,
    elapsed: Duration,
    latency: Histogram<u64>,
}

impl Measured {
    /// The first `records` records to be done (all, if there are fewer), over the time they
    /// took. `done` is in the order they were done.
    fn of<R>(done: &[Done<R>], records: usize) -> anyhow::Result<Self> {
        let done = &done[..records.min(done.len())];
        let mut latency = Histogram::<u64>::new(3)?;
        for latency_of in done.iter().flat_map(|d| &d.latencies) {
            latency.record((latency_of.as_micros() as u64).max(1))?;
        }
        Ok(Self {
            requests: latency.len() as usize,
            resources: done.iter().map(|d| d.resources).sum(),
            elapsed: done.last().map_or(Duration::ZERO, |d| d.finished),
            latency,
        })
    }

    fn resources_per_second(&self) -> f64 {
        self.resources as f64 / self.elapsed.as_secs_f64()
    }
}

/// resources/s over each fifth of the records, in the order they were done: how the rate
/// changes as the database grows.
fn by_fifth<R>(done: &[Done<R>]) -> String {
    let mut rates = Vec::with_capacity(5);
    let mut from = (0, Duration::ZERO);
    for fifth in 1..=5 {
        let to = done.len() * fifth / 5;
        if to <= from.0 {
            continue;
        }
        let resources: usize = done[from.0..to].iter().map(|d| d.resources).sum();
        let seconds = (done[to - 1].finished - from.1).as_secs_f64();
        rates.push(format!("{:.0}", resources as f64 / seconds));
        from = (to, done[to - 1].finished);
    }
    rates.join(", ")
}

/// Runs `clients` clients, each taking the next of `jobs` (records) and doing `job` with it,
/// until all are done. A job returns the latencies of its requests, the number of resources it
/// created and what to keep. Returns the jobs in the order they were done. The first error
/// stops every client and is returned, naming the job as `{what} {index}`.
async fn run_clients<T, R, F, Fut>(
    what: &'static str,
    jobs: Arc<Vec<T>>,
    clients: usize,
    job: F,
) -> anyhow::Result<Vec<Done<R>>>
where
    T: Send + Sync + 'static,
    R: Send + 'static,
    F: Fn(reqwest::Client, Arc<Vec<T>>, usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<(Vec<Duration>, usize, R)>> + Send,
{
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()?;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients.min(jobs.len()).max(1) {
        let (client, jobs, next, job) = (client.clone(), jobs.clone(), next.clone(), job.clone());
        tasks.push(tokio::spawn(async move {
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= jobs.len() {
                    return anyhow::Ok(done);
                }
                match job(client.clone(), jobs.clone(), i).await {
                    Ok((latencies, resources, keep)) => done.push(Done {
                        finished: started.elapsed(),
                        latencies,
                        resources,
                        keep,
                    }),
                    Err(error) => {
                        // The others stop at their next job.
                        next.store(jobs.len(), Ordering::Relaxed);
                        return Err(error.context(format!("{what} {i}")));
                    }
                }
            }
        }));
    }
    let mut done = Vec::with_capacity(jobs.len());
    let mut failed = None;
    for task in tasks {
        match task.await? {
            Ok(finished) => done.extend(finished),
            Err(error) => failed = failed.or(Some(error)),
        }
    }
    if let Some(error) = failed {
        return Err(error);
    }
    done.sort_by_key(|d| d.finished);
    Ok(done)
}

/// Posts every Bundle; returns them as done, each with the id of its Patient.
async fn ingest_transactions(
    base: &str,
    transactions: Arc<Vec<Transaction>>,
    clients: usize,
) -> anyhow::Result<Vec<Done<(usize, String)>>> {
    let base: Arc<str> = base.into();
    run_clients(
        "Bundle",
        transactions,
        clients,
        move |client, transactions, i| {
            let base = base.clone();
            async move {
                let transaction = &transactions[i];
                let (latency, patient) = post_transaction(&client, &base, transaction).await?;
                Ok((vec![latency], transaction.entries, (i, patient)))
            }
        },
    )
    .await
}

/// PUTs every baseline record's resources, one request each; every answer must be 201.
async fn ingest_one_by_one(
    base: &str,
    records: Arc<Vec<Vec<(String, Bytes)>>>,
    clients: usize,
) -> anyhow::Result<Vec<Done<()>>> {
    let base: Arc<str> = base.into();
    run_clients("record", records, clients, move |client, records, i| {
        let base = base.clone();
        async move {
            let mut latencies = Vec::with_capacity(records[i].len());
            for (path, body) in &records[i] {
                let started = Instant::now();
                let status = put(&client, &base, path, body.clone()).await?;
                latencies.push(started.elapsed());
                anyhow::ensure!(
                    status == StatusCode::CREATED,
                    "PUT {path}: HTTP {status}, not 201 Created"
                );
            }
            Ok((latencies, records[i].len(), ()))
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Checking what was stored

/// `GET {base}/fhir/{query}&_summary=count&_total=accurate` → `total`.
async fn count(client: &reqwest::Client, base: &str, query: &str) -> anyhow::Result<u64> {
    let separator = if query.contains('?') { '&' } else { '?' };
    let url = format!("{base}/fhir/{query}{separator}_summary=count&_total=accurate");
    let response = client.get(&url).send().await?;
    let status = response.status();
    let body = response.bytes().await?;
    anyhow::ensure!(
        status == StatusCode::OK,
        "GET {query}: HTTP {status}: {}",
        excerpt(&body)
    );
    let bundle: Value = serde_json::from_slice(&body)?;
    bundle["total"]
        .as_u64()
        .with_context(|| format!("GET {query}: no total in {}", excerpt(&body)))
}

/// Checks `sample` patients spread over the run, and each type's total; returns a summary.
async fn verify(
    base: &str,
    workload: &Workload,
    patients: &[String],
    sample: usize,
) -> anyhow::Result<String> {
    let client = reqwest::Client::new();
    let mut picked: Vec<usize> = (0..sample.min(patients.len()))
        .map(|i| i * (patients.len() - 1) / (sample.min(patients.len()) - 1).max(1))
        .collect();
    picked.dedup();
    for &n in &picked {
        let (id, expected) = (&patients[n], workload.expected[n]);
        let checks = [
            (
                format!("Observation?subject=Patient/{id}"),
                expected.observations,
            ),
            (
                format!("Encounter?subject=Patient/{id}"),
                expected.encounters,
            ),
            (
                format!(
                    "Encounter?subject=Patient/{id}&participant=Practitioner/prac-{}",
                    expected.gp
                ),
                expected.gp_encounters,
            ),
            (format!("Claim?patient=Patient/{id}"), expected.claims),
        ];
        for (query, want) in checks {
            let found = count(&client, base, &query).await?;
            anyhow::ensure!(
                found == want as u64,
                "patient {n}: {query} counts {found}, the record holds {want}"
            );
        }
    }
    for (type_name, &want) in &workload.totals {
        let found = count(&client, base, type_name).await?;
        anyhow::ensure!(
            found == want as u64,
            "{type_name}: the server counts {found}, the Bundles held {want}"
        );
    }
    let organizations = count(&client, base, "Organization").await?;
    let practitioners = count(&client, base, "Practitioner").await?;
    anyhow::ensure!(
        organizations == ORGANIZATIONS as u64 && practitioners == PRACTITIONERS as u64,
        "the server holds {organizations} Organizations and {practitioners} Practitioners: a \
         conditional reference created one?"
    );
    Ok(format!(
        "verified: {} patients' Observation/Encounter/Claim counts (by subject, by GP through \
         the conditional reference), and the totals of {} types",
        picked.len(),
        workload.totals.len()
    ))
}

// ---------------------------------------------------------------------------------------------
// Running

struct IngestOptions {
    patients: usize,
    seed: u64,
    baseline_patients: usize,
    verify: usize,
}

/// A fresh database on `backend`.
async fn fresh_database(backend: Backend) -> anyhow::Result<String> {
    let name = format!("telemed_bench_ingest_{}", Uuid::new_v4().simple());
    match backend {
        Backend::Sqlite => Ok(format!(
            "sqlite://{}/{name}.db",
            std::env::temp_dir().display()
        )),
        Backend::Postgres => common::postgres_database(&name, false).await,
    }
}

/// Runs `phase` against a server on a fresh database with the Practitioners and Organizations
/// loaded, then stops the server and removes the database, whether the phase failed or not.
async fn with_server<T>(
    backend: Backend,
    reference: &ReferenceData,
    phase: impl AsyncFnOnce(&Server) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let url = fresh_database(backend).await?;
    let result = async {
        let server = common::start_server(common::server_config(&url))?;
        let result = async {
            reference.load(&reqwest::Client::new(), &server.url).await?;
            phase(&server).await
        }
        .await;
        server.stop().await;
        result
    }
    .await;
    common::remove_database(&url).await;
    result
}

/// `1 client`, `4 clients`.
fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

fn print_header() {
    println!(
        "{:<42} {:>8} {:>9} {:>7} {:>9} {:>11} {:>8} {:>8} {:>7}",
        "workload",
        "requests",
        "resources",
        "s",
        "req/s",
        "resources/s",
        "p50 ms",
        "p99 ms",
        "× base",
    );
}

fn print_row(label: &str, measured: &Measured, baseline: Option<&Measured>) {
    let seconds = measured.elapsed.as_secs_f64();
    let ratio = baseline.map_or(String::new(), |b| {
        format!(
            "{:.2}",
            measured.resources_per_second() / b.resources_per_second()
        )
    });
    println!(
        "{label:<42} {:>8} {:>9} {seconds:>7.1} {:>9.1} {:>11.0} {:>8.2} {:>8.2} {ratio:>7}",
        measured.requests,
        measured.resources,
        measured.requests as f64 / seconds,
        measured.resources_per_second(),
        measured.latency.value_at_quantile(0.5) as f64 / 1000.0,
        measured.latency.value_at_quantile(0.99) as f64 / 1000.0,
    );
}

async fn bench(
    backend: Backend,
    options: &Options,
    ingest: &IngestOptions,
    reference: &ReferenceData,
    workload: Arc<Workload>,
) -> anyhow::Result<()> {
    let clients = options.clients;
    let name = backend.name();
    let baseline = with_server(backend, reference, async |server: &Server| {
        let client = reqwest::Client::new();
        for (path, body) in &workload.warm_up.1 {
            put(&client, &server.url, path, body.clone())
                .await
                .context("the warm-up record")?;
        }
        ingest_one_by_one(&server.url, workload.baseline.clone(), clients).await
    })
    .await
    .with_context(|| format!("{name}: baseline"))?;
    let baseline = Measured::of(&baseline, usize::MAX)?;
    print_row(
        &format!(
            "{name}: one by one (PUT), {}",
            plural(workload.baseline.len(), "record")
        ),
        &baseline,
        None,
    );

    let (done, note) = with_server(backend, reference, async |server: &Server| {
        let client = reqwest::Client::new();
        post_transaction(&client, &server.url, &workload.warm_up.0)
            .await
            .context("the warm-up Bundle")?;
        let done = ingest_transactions(&server.url, workload.transactions.clone(), clients).await?;
        let mut patients = vec![String::new(); done.len()];
        for Done { keep: (i, id), .. } in &done {
            patients[*i].clone_from(id);
        }
        let note = verify(&server.url, &workload, &patients, ingest.verify).await?;
        anyhow::Ok((done, note))
    })
    .await
    .with_context(|| format!("{name}: transactions"))?;
    // Like for like: as many records as the baseline, into a database as large.
    let same = workload.baseline.len().min(done.len());
    print_row(
        &format!("{name}: transactions, first {}", plural(same, "Bundle")),
        &Measured::of(&done, same)?,
        Some(&baseline),
    );
    print_row(
        &format!("{name}: transactions, all {}", plural(done.len(), "Bundle")),
        &Measured::of(&done, usize::MAX)?,
        None,
    );
    println!(
        "  {name}: resources/s over each fifth of the Bundles, as the database grows: {}",
        by_fifth(&done)
    );
    println!("  {name}: {note}");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let mut ingest = IngestOptions {
        patients: 300,
        seed: 1,
        baseline_patients: 60,
        verify: 5,
    };
    let options = Options {
        seconds: 0,
        clients: 4,
        backends: vec![Backend::Sqlite, Backend::Postgres],
    }
    .parse(|flag, value| {
        let Some(value) = value else { return false };
        let number = value.parse::<u64>().ok();
        match (flag, number) {
            ("--patients", Some(n)) => ingest.patients = (n as usize).max(1),
            ("--seed", Some(n)) => ingest.seed = n,
            ("--baseline-patients", Some(n)) => ingest.baseline_patients = (n as usize).max(1),
            ("--verify", Some(n)) => ingest.verify = n as usize,
            _ => return false,
        }
        true
    });
    let reference = ReferenceData::new(ingest.seed);
    let started = Instant::now();
    let workload = Arc::new(Workload::generate(&ingest, &reference)?);
    println!(
        "seed {}: {} (generated in {:.1} s)",
        ingest.seed,
        workload.describe(),
        started.elapsed().as_secs_f64()
    );
    let types: Vec<String> = workload
        .totals
        .iter()
        .map(|(type_name, n)| format!("{type_name} {n}"))
        .collect();
    println!(
        "  by type, with the warm-up record: {}; loaded first: {ORGANIZATIONS} Organizations, \
         {PRACTITIONERS} Practitioners",
        types.join(", ")
    );
    println!(
        "{}, HTTP/1.1 keep-alive over loopback, Prefer: return=minimal; latency per \
         request (a Bundle, or one resource); × base: resources/s over the baseline's, for as \
         many records into an equally large database",
        plural(options.clients, "client")
    );
    print_header();
    common::client_runtime()?.block_on(async {
        for backend in options.backends.iter().copied() {
            if backend == Backend::Postgres {
                match fresh_database(backend).await {
                    Ok(url) => common::remove_database(&url).await,
                    Err(error) => {
                        println!("postgres: skipped ({error:#})");
                        continue;
                    }
                }
            }
            bench(backend, &options, &ingest, &reference, workload.clone()).await?;
        }
        anyhow::Ok(())
    })
}
