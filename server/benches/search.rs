//! Search benchmark: loads a synthetic population of Patients, Practitioners, Organizations,
//! Encounters, Appointments and Observations over HTTP, then measures typical FHIR searches one
//! client at a time and all of them mixed with concurrent clients, on SQLite and on PostgreSQL,
//! next to a trivial axum JSON endpoint as the baseline.
//!
//! ```sh
//! cargo bench -p telemed-server --bench search                  # 100 000 patients, both backends
//! cargo bench -p telemed-server --bench search -- --patients 2000 --seconds 2 --backend sqlite
//! cargo bench -p telemed-server --bench search -- --backend postgres --keep   # reuse next time
//! cargo bench -p telemed-server --bench search -- --only chain               # one workload
//! ```
//!
//! Options: `--patients N` (100000), `--seed N` (1), `--seconds N` per workload (10),
//! `--clients N` for loading and for the mixed workload (32), `--backend sqlite|postgres` (both),
//! `--only NAME` (the workloads whose name starts with it), `--sqlite-path PATH`, `--keep`,
//! `--postgres-database NAME` (kept, like `--keep`; to compare two builds on copies of one
//! population), `--fresh`.
//!
//! Everything about the population follows from the seed: each patient has 2 Encounters,
//! 2 Appointments and 3 Observations; there is one Organization per 1000 patients and one
//! Practitioner per 100. Ids are assigned by the client (`pat-{n}`, `prac-{n}`, `org-{n}`,
//! `enc-{n}-{j}`, `appt-{n}-{j}`, `obs-{n}-{j}`, created with PUT), so the workloads know what
//! to ask for without reading anything back. Names come from fixed lists, the common ones first
//! and picked more often, some with accents (Müller, José), so name searches match as many as
//! they would in a real practice.
//!
//! Loading takes a while, so the database is kept for the next run: SQLite in `--sqlite-path`
//! (default `target/bench-search-{patients}.db` in the workspace; a relative path is relative to
//! `server/` under `cargo bench`), and PostgreSQL, with `--keep`, in the database
//! `telemed_bench_search_{patients}`. A database is reused when it holds the marker resource
//! `Basic/bench-search-population`, written once loading has finished, for the same `--patients`
//! and `--seed`; one holding anything else is emptied and loaded again. `--fresh` always loads
//! again (after a change to how the server indexes, for instance). Without `--keep` the
//! PostgreSQL database is a new one, dropped at the end. PostgreSQL is taken from
//! `TELEMED_BENCH_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`);
//! `TELEMED_BENCH_DB_CONNECTIONS` overrides the server's connection pool size (default 16).
//! Before measuring, the bench runs `VACUUM ANALYZE` on the PostgreSQL database, as autovacuum
//! would after a bulk load: without planner statistics some searches are 50 times slower, and
//! without the visibility map index-only scans read the tables too. A `CHECKPOINT` follows, so
//! that pages left dirty by the load are not written out while the searches are measured.
//!
//! Each workload row shows, next to throughput and latency, what one sample request of it found
//! (`matches`, `+included`, `total`), so a fast search that matched nothing is plain to see. Only
//! a 200 counts as an answer; everything else is an error, counted and shown with the first such
//! answer. The server runs on its own runtime with two worker threads and the clients on another.
//! Read the figures as ratios to the baseline measured in the same run with the same number of
//! clients.
#![expect(clippy::print_stdout, reason = "a benchmark prints its report")]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::Connection as _;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use time::macros::datetime;

use common::{Backend, Call, Generator, Options, Report, Rng, Server};

/// Family names, the most common first (see [`common_first`]).
const FAMILY: &[&str] = &[
    "Smith",
    "Müller",
    "García",
    "Johnson",
    "Martin",
    "Nguyen",
    "Brown",
    "Schmidt",
    "Rodríguez",
    "Williams",
    "Dubois",
    "Jones",
    "López",
    "Miller",
    "Schneider",
    "Martínez",
    "Davis",
    "Fischer",
    "Hernández",
    "Wilson",
    "Lefèvre",
    "Anderson",
    "Weber",
    "González",
    "Taylor",
    "Meyer",
    "Pérez",
    "Thomas",
    "Moreau",
    "Jackson",
    "Wagner",
    "Sánchez",
    "White",
    "Becker",
    "Chen",
    "Harris",
    "Schäfer",
    "Ramírez",
    "Clark",
    "Kowalski",
    "Lewis",
    "Núñez",
    "Robinson",
    "Öztürk",
    "Walker",
    "Jiménez",
    "Young",
    "Nowak",
    "King",
    "Sørensen",
    "Wright",
    "Dvořák",
    "Scott",
    "Kim",
    "Torres",
    "Tanaka",
    "Hill",
    "Rousseau",
    "Flores",
    "Park",
    "Green",
    "Girard",
    "Adams",
    "O'Brien",
];

const GIVEN_FEMALE: &[&str] = &[
    "Mary",
    "María",
    "Emma",
    "Sofía",
    "Olivia",
    "Anna",
    "Marie",
    "Lucía",
    "Elizabeth",
    "Zoë",
    "Chloé",
    "Léa",
    "Hélène",
    "Renée",
    "Ingrid",
    "Fatma",
    "Ayşe",
    "Zofia",
    "Mei",
    "Aiko",
    "Camille",
    "Noémie",
    "Jennifer",
    "Linda",
];

const GIVEN_MALE: &[&str] = &[
    "James",
    "José",
    "John",
    "Lukas",
    "Michael",
    "Luis",
    "David",
    "Jürgen",
    "William",
    "Carlos",
    "Peter",
    "François",
    "Thomas",
    "Pierre",
    "Juan",
    "André",
    "Hans",
    "Søren",
    "Mehmet",
    "Wei",
    "Hiroshi",
    "Mateo",
    "Noah",
    "Elías",
];

/// An Observation's code, with its UCUM unit and the range of its values, in tenths.
struct Measure {
    loinc: &'static str,
    display: &'static str,
    category: &'static str,
    unit: &'static str,
    ucum: &'static str,
    tenths: (usize, usize),
}

const MEASURES: &[Measure] = &[
    Measure {
        loinc: "8867-4",
        display: "Heart rate",
        category: "vital-signs",
        unit: "beats/minute",
        ucum: "/min",
        tenths: (500, 1200),
    },
    Measure {
        loinc: "8310-5",
        display: "Body temperature",
        category: "vital-signs",
        unit: "°C",
        ucum: "Cel",
        tenths: (355, 395),
    },
    Measure {
        loinc: "29463-7",
        display: "Body weight",
        category: "vital-signs",
        unit: "kg",
        ucum: "kg",
        tenths: (450, 1300),
    },
    Measure {
        loinc: "8302-2",
        display: "Body height",
        category: "vital-signs",
        unit: "cm",
        ucum: "cm",
        tenths: (1450, 2050),
    },
    Measure {
        loinc: "8480-6",
        display: "Systolic blood pressure",
        category: "vital-signs",
        unit: "mmHg",
        ucum: "mm[Hg]",
        tenths: (950, 1700),
    },
    Measure {
        loinc: "59408-5",
        display: "Oxygen saturation in Arterial blood by Pulse oximetry",
        category: "vital-signs",
        unit: "%",
        ucum: "%",
        tenths: (880, 1000),
    },
    Measure {
        loinc: "2339-0",
        display: "Glucose [Mass/volume] in Blood",
        category: "laboratory",
        unit: "mg/dL",
        ucum: "mg/dL",
        tenths: (650, 2200),
    },
];

/// Picks from `list` with the first entries far more likely than the last (roughly Zipf: the
/// first of 64 about 7% of the time, the last about 0.02%), as surnames are in a real population.
fn common_first<'a>(rng: &mut Rng, list: &[&'a str]) -> &'a str {
    let tail = rng.below(list.len()) + 1;
    list[rng.below(tail)]
}

/// The resource types of the population, in the order they are loaded: what is referenced first.
#[derive(Clone, Copy)]
enum Kind {
    Organization,
    Practitioner,
    Patient,
    Encounter,
    Appointment,
    Observation,
}

impl Kind {
    const ALL: [Self; 6] = [
        Self::Organization,
        Self::Practitioner,
        Self::Patient,
        Self::Encounter,
        Self::Appointment,
        Self::Observation,
    ];

    fn type_name(self) -> &'static str {
        match self {
            Self::Organization => "Organization",
            Self::Practitioner => "Practitioner",
            Self::Patient => "Patient",
            Self::Encounter => "Encounter",
            Self::Appointment => "Appointment",
            Self::Observation => "Observation",
        }
    }
}

/// What the Patient resource and the resources about the patient say about them.
struct PatientFacts {
    family: &'static str,
    given: Vec<&'static str>,
    gender: &'static str,
    birth_date: time::Date,
    organization: usize,
    practitioner: usize,
}

/// The synthetic population. Everything about its `n`th member of a kind follows from the seed,
/// the kind and `n`, so it can be loaded in any order and the workloads can name what exists.
#[derive(Clone, Copy)]
struct Population {
    patients: usize,
    seed: u64,
}

impl Population {
    fn count(self, kind: Kind) -> usize {
        match kind {
            Kind::Organization => self.patients.div_ceil(1000),
            Kind::Practitioner => self.patients.div_ceil(100),
            Kind::Patient => self.patients,
            Kind::Encounter | Kind::Appointment => 2 * self.patients,
            Kind::Observation => 3 * self.patients,
        }
    }

    fn total(self) -> usize {
        Kind::ALL.into_iter().map(|kind| self.count(kind)).sum()
    }

    /// The random numbers of the `n`th member of `kind`.
    fn rng(self, kind: Kind, n: usize) -> Rng {
        Rng::new(self.seed ^ ((kind as u64) << 56) ^ n as u64)
    }

    fn patient(self, n: usize) -> PatientFacts {
        let mut rng = self.rng(Kind::Patient, n);
        let family = common_first(&mut rng, FAMILY);
        let (gender, names) = match rng.below(100) {
            0..49 => ("male", GIVEN_MALE),
            49..98 => ("female", GIVEN_FEMALE),
            98 => ("other", GIVEN_FEMALE),
            _ => ("unknown", GIVEN_MALE),
        };
        let mut given = vec![common_first(&mut rng, names)];
        if rng.below(3) == 0 {
            given.push(common_first(&mut rng, names));
        }
        let birth_date = (datetime!(1930-01-01 0:00 UTC) + days(rng.below(94 * 365))).date();
        PatientFacts {
            family,
            given,
            gender,
            birth_date,
            organization: rng.below(self.count(Kind::Organization)),
            practitioner: rng.below(self.count(Kind::Practitioner)),
        }
    }

    /// A practitioner's family and given name, and gender.
    fn practitioner(self, k: usize) -> (&'static str, &'static str, &'static str) {
        let mut rng = self.rng(Kind::Practitioner, k);
        let family = common_first(&mut rng, FAMILY);
        let (gender, names) = if rng.below(2) == 0 {
            ("male", GIVEN_MALE)
        } else {
            ("female", GIVEN_FEMALE)
        };
        (family, common_first(&mut rng, names), gender)
    }

    /// When patient `n`'s `j`th Encounter began, in office hours in 2024–2026, and how many
    /// minutes it lasted.
    fn encounter_period(self, n: usize, j: usize) -> (OffsetDateTime, usize) {
        let mut rng = self.rng(Kind::Encounter, 2 * n + j);
        let start = office_hour(&mut rng, datetime!(2024-01-01 0:00 UTC), 3 * 365 + 1);
        (start, 15 + 5 * rng.below(10))
    }

    /// The `i`th resource of `kind`: its id and body.
    fn resource(self, kind: Kind, i: usize) -> (String, Value) {
        match kind {
            Kind::Organization => (
                format!("org-{i}"),
                json!({
                    "resourceType": "Organization",
                    "id": format!("org-{i}"),
                    "identifier": [{ "system": "http://example.org/org", "value": format!("ORG{i:05}") }],
                    "active": true,
                    "name": format!("Clinic {i:05}"),
                }),
            ),
            Kind::Practitioner => {
                let (family, given, gender) = self.practitioner(i);
                (
                    format!("prac-{i}"),
                    json!({
                        "resourceType": "Practitioner",
                        "id": format!("prac-{i}"),
                        "identifier": [{
                            "system": "http://hl7.org/fhir/sid/us-npi",
                            "value": format!("{}", 1_000_000_000 + i),
                        }],
                        "active": true,
                        "name": [{ "family": family, "given": [given], "prefix": ["Dr."] }],
                        "gender": gender,
                    }),
                )
            }
            Kind::Patient => {
                let facts = self.patient(i);
                (
                    format!("pat-{i}"),
                    json!({
                        "resourceType": "Patient",
                        "id": format!("pat-{i}"),
                        "identifier": [{ "system": "http://example.org/mrn", "value": format!("MRN{i:08}") }],
                        "active": true,
                        "name": [{ "use": "official", "family": facts.family, "given": facts.given }],
                        "gender": facts.gender,
                        "birthDate": facts.birth_date.to_string(),
                        "managingOrganization": { "reference": format!("Organization/org-{}", facts.organization) },
                        "generalPractitioner": [{ "reference": format!("Practitioner/prac-{}", facts.practitioner) }],
                    }),
                )
            }
            Kind::Encounter => {
                let (n, j) = (i / 2, i % 2);
                let facts = self.patient(n);
                let (start, minutes) = self.encounter_period(n, j);
                (
                    format!("enc-{n}-{j}"),
                    json!({
                        "resourceType": "Encounter",
                        "id": format!("enc-{n}-{j}"),
                        "status": "finished",
                        "class": {
                            "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                            "code": "AMB",
                            "display": "ambulatory",
                        },
                        "subject": { "reference": format!("Patient/pat-{n}") },
                        "participant": [{
                            "individual": { "reference": format!("Practitioner/prac-{}", facts.practitioner) },
                        }],
                        "period": {
                            "start": instant(start),
                            "end": instant(start + time::Duration::minutes(minutes as i64)),
                        },
                        "serviceProvider": { "reference": format!("Organization/org-{}", facts.organization) },
                    }),
                )
            }
            Kind::Appointment => {
                let (n, j) = (i / 2, i % 2);
                let facts = self.patient(n);
                let mut rng = self.rng(Kind::Appointment, i);
                let start = office_hour(&mut rng, datetime!(2025-01-01 0:00 UTC), 2 * 365);
                (
                    format!("appt-{n}-{j}"),
                    json!({
                        "resourceType": "Appointment",
                        "id": format!("appt-{n}-{j}"),
                        "status": "booked",
                        "start": instant(start),
                        "end": instant(start + time::Duration::minutes(30)),
                        "minutesDuration": 30,
                        "participant": [
                            { "actor": { "reference": format!("Patient/pat-{n}") }, "status": "accepted" },
                            {
                                "actor": { "reference": format!("Practitioner/prac-{}", facts.practitioner) },
                                "status": "accepted",
                            },
                        ],
                    }),
                )
            }
            Kind::Observation => {
                let (n, j) = (i / 3, i % 3);
                let mut rng = self.rng(Kind::Observation, i);
                let measure = &MEASURES[rng.below(MEASURES.len())];
                let (low, high) = measure.tenths;
                let tenths = low + rng.below(high - low + 1);
                let encounter = j % 2;
                let (start, _) = self.encounter_period(n, encounter);
                (
                    format!("obs-{n}-{j}"),
                    json!({
                        "resourceType": "Observation",
                        "id": format!("obs-{n}-{j}"),
                        "status": "final",
                        "category": [{
                            "coding": [{
                                "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                "code": measure.category,
                            }],
                        }],
                        "code": {
                            "coding": [{ "system": "http://loinc.org", "code": measure.loinc, "display": measure.display }],
                            "text": measure.display,
                        },
                        "subject": { "reference": format!("Patient/pat-{n}") },
                        "encounter": { "reference": format!("Encounter/enc-{n}-{encounter}") },
                        "effectiveDateTime": instant(start + time::Duration::minutes(5 + 5 * j as i64)),
                        "valueQuantity": {
                            "value": tenths as f64 / 10.0,
                            "unit": measure.unit,
                            "system": "http://unitsofmeasure.org",
                            "code": measure.ucum,
                        },
                    }),
                )
            }
        }
    }

    /// The marker resource written once the population is loaded.
    fn marker(self) -> Value {
        json!({
            "resourceType": "Basic",
            "id": MARKER_ID,
            "identifier": [{ "system": "urn:telemed:bench:search", "value": self.marker_value() }],
            "code": { "text": "telemed search benchmark population, fully loaded" },
        })
    }

    fn marker_value(self) -> String {
        format!("patients={};seed={}", self.patients, self.seed)
    }
}

const MARKER_ID: &str = "bench-search-population";

fn days(n: usize) -> time::Duration {
    time::Duration::days(n as i64)
}

/// A quarter hour between 8:00 and 17:45 on one of the `span` days from `from`.
fn office_hour(rng: &mut Rng, from: OffsetDateTime, span: usize) -> OffsetDateTime {
    from + days(rng.below(span)) + time::Duration::minutes(8 * 60 + 15 * rng.below(40) as i64)
}

fn instant(at: OffsetDateTime) -> String {
    at.format(&Rfc3339)
        .expect("a UTC time in 2024–2026 formats")
}

/// One kind of search the bench measures.
#[derive(Clone, Copy)]
enum Search {
    Identifier,
    NamePrefix,
    AppointmentsByDate,
    EncountersInclude,
    Chain,
    FamilyTotal,
    HasObservation,
}

impl Search {
    const ALL: [Self; 7] = [
        Self::Identifier,
        Self::NamePrefix,
        Self::AppointmentsByDate,
        Self::EncountersInclude,
        Self::Chain,
        Self::FamilyTotal,
        Self::HasObservation,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Identifier => "patient by identifier",
            Self::NamePrefix => "patient name prefix",
            Self::AppointmentsByDate => "appointments by date",
            Self::EncountersInclude => "encounters + _include",
            Self::Chain => "chain, 2 levels",
            Self::FamilyTotal => "family, _total=accurate",
            Self::HasObservation => "_has, observation code",
        }
    }

    /// A search of this kind for someone picked at random, as a path and query under `/fhir`.
    /// Names are taken from a random member of the population, so common names come up as often
    /// as they are common.
    fn query(self, population: Population, rng: &mut Rng) -> String {
        // A patient the search is about, when it is about one.
        let n = rng.below(population.patients);
        match self {
            Self::Identifier => {
                format!("Patient?identifier=http://example.org/mrn|MRN{n:08}")
            }
            Self::NamePrefix => {
                let family = population.patient(n).family;
                let prefix: String = family.chars().take(3).collect();
                format!("Patient?name={}", prefix.to_lowercase())
            }
            Self::AppointmentsByDate => {
                let k = rng.below(population.count(Kind::Practitioner));
                let month = rng.below(24);
                let (year, month) = (2025 + month / 12, month % 12 + 1);
                let (next_year, next_month) = if month == 12 {
                    (year + 1, 1)
                } else {
                    (year, month + 1)
                };
                format!(
                    "Appointment?practitioner=Practitioner/prac-{k}\
                     &date=ge{year}-{month:02}-01&date=lt{next_year}-{next_month:02}-01"
                )
            }
            Self::EncountersInclude => {
                format!("Encounter?subject=Patient/pat-{n}&_include=Encounter:subject")
            }
            Self::Chain => {
                let (family, _, _) =
                    population.practitioner(rng.below(population.count(Kind::Practitioner)));
                format!(
                    "Encounter?subject:Patient.general-practitioner:Practitioner.family={family}\
                     &_count=10"
                )
            }
            Self::FamilyTotal => {
                let family = population.patient(n).family;
                format!("Patient?family={family}&_total=accurate")
            }
            Self::HasObservation => {
                let measure = &MEASURES[rng.below(MEASURES.len())];
                format!(
                    "Patient?_has:Observation:subject:code=http://loinc.org|{}",
                    measure.loinc
                )
            }
        }
    }

    fn generator(self, base: &str, population: Population) -> Generator {
        let fhir = format!("{base}/fhir");
        Arc::new(move |client, rng| {
            let query = self.query(population, rng);
            Call::expecting(client.get(format!("{fhir}/{query}")), StatusCode::OK)
        })
    }

    /// The query the sample request of this search sends: the same in every run.
    fn sample_query(self, population: Population) -> String {
        self.query(population, &mut Rng::new(self as u64))
    }
}

/// What one request found, for the report: `12 match +3 incl, total 120`, or what went wrong.
async fn sample(client: &reqwest::Client, url: &str) -> String {
    let response = match client.get(url).send().await {
        Ok(response) => response,
        Err(error) => return format!("no answer: {error}"),
    };
    let status = response.status();
    if status != StatusCode::OK {
        return format!("HTTP {status}");
    }
    let Ok(bundle) = response.json::<Value>().await else {
        return "not JSON".to_owned();
    };
    if bundle["resourceType"] != "Bundle" {
        return "not a Bundle".to_owned();
    }
    let entries = bundle["entry"].as_array().map_or(&[][..], Vec::as_slice);
    let included = entries
        .iter()
        .filter(|entry| entry["search"]["mode"] == "include")
        .count();
    let mut note = format!("{} match", entries.len() - included);
    if included > 0 {
        note += &format!(" +{included} incl");
    }
    if let Some(total) = bundle["total"].as_u64() {
        note += &format!(", total {total}");
    }
    note
}

/// PUTs one resource with the id the client chose.
async fn put(
    client: &reqwest::Client,
    base: &str,
    type_name: &str,
    id: &str,
    body: &Value,
) -> anyhow::Result<()> {
    let response = client
        .put(format!("{base}/fhir/{type_name}/{id}"))
        .header("content-type", "application/fhir+json")
        .header("prefer", "return=minimal")
        .body(body.to_string())
        .send()
        .await?;
    let status = response.status();
    let answer = response.bytes().await?;
    anyhow::ensure!(
        status.is_success(),
        "PUT {type_name}/{id}: {status}: {}",
        String::from_utf8_lossy(&answer)
    );
    Ok(())
}

/// Loads the population with `clients` concurrent clients, kind after kind, then writes the
/// marker; prints the throughput.
async fn load(base: &str, population: Population, clients: usize) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()?;
    let started = Instant::now();
    for kind in Kind::ALL {
        let count = population.count(kind);
        let kind_started = Instant::now();
        let next = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::with_capacity(clients);
        for _ in 0..clients.min(count) {
            let (client, base, next) = (client.clone(), base.to_owned(), next.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return anyhow::Ok(());
                    }
                    let (id, body) = population.resource(kind, i);
                    if let Err(error) = put(&client, &base, kind.type_name(), &id, &body).await {
                        // The others stop at their next resource.
                        next.store(count, Ordering::Relaxed);
                        return Err(error);
                    }
                }
            }));
        }
        for task in tasks {
            task.await??;
        }
        let seconds = kind_started.elapsed().as_secs_f64();
        println!(
            "  {:<14} {count:>9} in {seconds:>7.1} s, {:>6.0}/s",
            kind.type_name(),
            count as f64 / seconds
        );
    }
    put(&client, base, "Basic", MARKER_ID, &population.marker()).await?;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "  {:<14} {:>9} in {seconds:>7.1} s, {:>6.0} resources/s",
        "all",
        population.total(),
        population.total() as f64 / seconds
    );
    Ok(())
}

/// What a database started with holds.
enum Holds {
    /// This population, fully loaded.
    Population,
    Nothing,
    /// Something else: another population, or one whose loading did not finish.
    Other,
}

async fn holds(base: &str, population: Population) -> anyhow::Result<Holds> {
    let client = reqwest::Client::new();
    let response = client
        .get(format!("{base}/fhir/Basic/{MARKER_ID}"))
        .send()
        .await?;
    if response.status() == StatusCode::OK {
        let marker: Value = response.json().await?;
        if marker["identifier"][0]["value"] == population.marker_value().as_str() {
            return Ok(Holds::Population);
        }
        return Ok(Holds::Other);
    }
    let response = client
        .get(format!("{base}/fhir/_history?_count=1"))
        .send()
        .await?;
    anyhow::ensure!(
        response.status() == StatusCode::OK,
        "GET /fhir/_history: {}",
        response.status()
    );
    let history: Value = response.json().await?;
    Ok(match history["entry"].as_array() {
        Some(entries) if !entries.is_empty() => Holds::Other,
        _ => Holds::Nothing,
    })
}

/// The search bench's own flags.
struct SearchOptions {
    patients: usize,
    seed: u64,
    sqlite_path: Option<PathBuf>,
    keep: bool,
    postgres_database: Option<String>,
    fresh: bool,
    only: Option<String>,
}

impl SearchOptions {
    fn sqlite_path(&self) -> PathBuf {
        self.sqlite_path.clone().unwrap_or_else(|| {
            let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
            manifest
                .parent()
                .unwrap_or(manifest)
                .join("target")
                .join(format!("bench-search-{}.db", self.patients))
        })
    }

    fn runs(&self, name: &str) -> bool {
        self.only
            .as_deref()
            .is_none_or(|only| name.starts_with(only))
    }
}

/// The database the run uses on `backend`, created if it does not exist, and whether it is kept
/// afterwards.
async fn database(backend: Backend, search: &SearchOptions) -> anyhow::Result<(String, bool)> {
    match backend {
        Backend::Sqlite => Ok((format!("sqlite://{}", search.sqlite_path().display()), true)),
        Backend::Postgres => {
            if let Some(name) = &search.postgres_database {
                return Ok((common::postgres_database(name, true).await?, true));
            }
            let name = if search.keep {
                format!("telemed_bench_search_{}", search.patients)
            } else {
                format!("telemed_bench_search_{}", uuid::Uuid::new_v4().simple())
            };
            Ok((common::postgres_database(&name, true).await?, search.keep))
        }
    }
}

/// Empties the database at `url`: a new file or database in its place. No server may be using it.
async fn empty(url: &str) -> anyhow::Result<()> {
    common::remove_database(url).await;
    if url.starts_with("postgres")
        && let Some((_, name)) = url.rsplit_once('/')
    {
        common::postgres_database(name, false).await?;
    }
    Ok(())
}

/// Starts the server on the database at `url` with the population loaded, loading it unless the
/// database already holds it.
async fn prepare(
    backend: Backend,
    url: &str,
    options: &Options,
    population: Population,
) -> anyhow::Result<Server> {
    let mut server = common::start_server(common::server_config(url))?;
    let place = url.split_once("://").map_or(url, |(_, place)| place);
    match holds(&server.url, population).await? {
        Holds::Population => {
            println!("{}: reusing the population in {place}", backend.name());
            analyze(url).await?;
            return Ok(server);
        }
        Holds::Nothing => {}
        Holds::Other => {
            println!(
                "{}: {place} holds something else; emptying it",
                backend.name()
            );
            server.stop().await;
            empty(url).await?;
            server = common::start_server(common::server_config(url))?;
        }
    }
    println!(
        "{}: loading into {place} with {} clients",
        backend.name(),
        options.clients
    );
    load(&server.url, population, options.clients).await?;
    analyze(url).await?;
    Ok(server)
}

/// Gives PostgreSQL's planner statistics of the loaded tables and marks their pages all-visible,
/// as autovacuum would soon after a bulk load: without statistics it plans for empty tables,
/// and a search can take 50 times as long; without the visibility map an index-only scan reads
/// the table as well. Done here so the figures do not depend on whether autovacuum (off on some
/// test servers) has run yet; on a database vacuumed before, it takes a few seconds.
///
/// Then a checkpoint writes out the pages loading and vacuuming left dirty. Otherwise the
/// checkpointer writes them during the measurements, and after a load of 100,000 patients the
/// one-client p99s read 100 ms and more. Only a superuser (or a role with `pg_checkpoint`) may
/// ask for one; without that right the bench says so and goes on.
async fn analyze(url: &str) -> anyhow::Result<()> {
    if !url.starts_with("postgres") {
        return Ok(());
    }
    let started = Instant::now();
    let mut connection = sqlx::PgConnection::connect(url).await?;
    sqlx::query("VACUUM ANALYZE")
        .execute(&mut connection)
        .await?;
    println!(
        "postgres: VACUUM ANALYZE, as autovacuum would, in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    match sqlx::query("CHECKPOINT").execute(&mut connection).await {
        Ok(_) => println!(
            "postgres: CHECKPOINT, so that no page is written out during the measurements, in {:.1} s",
            started.elapsed().as_secs_f64()
        ),
        Err(e) => println!("postgres: no CHECKPOINT ({e}); the figures may include its writes"),
    }
    // How much of the database PostgreSQL can keep in its own buffers bears on every figure:
    // a page found in the operating system's cache instead costs a copy and an eviction.
    let (buffers, size): (String, String) = sqlx::query_as(
        "SELECT current_setting('shared_buffers'), \
         pg_size_pretty(pg_database_size(current_database()))",
    )
    .fetch_one(&mut connection)
    .await?;
    println!("postgres: shared_buffers {buffers}, database {size}");
    Ok(())
}

/// The baseline, measured once for all backends.
struct Baselines {
    /// With one client, for the searches one at a time.
    one: Report,
    /// With `--clients` clients, for the mix (when it runs).
    all: Option<Report>,
}

/// The mixed workload's name.
fn mix_name(options: &Options) -> String {
    format!("mix of all, {} clients", options.clients)
}

/// Measures each search with one client, then all of them mixed with `options.clients`.
async fn measure(
    base: &str,
    options: &Options,
    search: &SearchOptions,
    population: Population,
    baselines: &Baselines,
    label: &str,
) -> anyhow::Result<()> {
    let duration = options.duration();
    let client = reqwest::Client::new();
    common::print_header("sample request");
    common::print_row(
        &format!("{}, 1 client", common::BASELINE),
        &baselines.one,
        None,
        "",
    );
    for workload in Search::ALL {
        if !search.runs(workload.name()) {
            continue;
        }
        let note = sample(
            &client,
            &format!("{base}/fhir/{}", workload.sample_query(population)),
        )
        .await;
        let report = common::run(&[workload.generator(base, population)], 1, duration).await?;
        common::print_row(
            &format!("{label}: {}", workload.name()),
            &report,
            Some(&baselines.one),
            &note,
        );
    }
    if let Some(baseline) = &baselines.all {
        common::print_row(
            &format!("{}, {} clients", common::BASELINE, options.clients),
            baseline,
            None,
            "",
        );
        let generators: Vec<Generator> = Search::ALL
            .into_iter()
            .map(|workload| workload.generator(base, population))
            .collect();
        let report = common::run(&generators, options.clients, duration).await?;
        common::print_row(
            &format!("{label}: {}", mix_name(options)),
            &report,
            Some(baseline),
            "",
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let mut search = SearchOptions {
        patients: 100_000,
        seed: 1,
        sqlite_path: None,
        keep: false,
        postgres_database: None,
        fresh: false,
        only: None,
    };
    let options = Options {
        seconds: 10,
        clients: 32,
        backends: vec![Backend::Sqlite, Backend::Postgres],
    }
    .parse(|flag, value| match (flag, value) {
        ("--keep", _) => {
            search.keep = true;
            false
        }
        ("--fresh", _) => {
            search.fresh = true;
            false
        }
        ("--patients", Some(v)) => {
            search.patients = v.parse().unwrap_or(search.patients).max(1);
            true
        }
        ("--seed", Some(v)) => {
            search.seed = v.parse().unwrap_or(search.seed);
            true
        }
        ("--postgres-database", Some(v)) => {
            search.postgres_database = Some(v.to_owned());
            true
        }
        ("--sqlite-path", Some(v)) => {
            search.sqlite_path = Some(PathBuf::from(v));
            true
        }
        ("--only", Some(v)) => {
            search.only = Some(v.to_owned());
            true
        }
        _ => false,
    });
    let population = Population {
        patients: search.patients,
        seed: search.seed,
    };
    let counts: Vec<String> = Kind::ALL
        .into_iter()
        .map(|kind| format!("{} {}", population.count(kind), kind.type_name()))
        .collect();
    println!(
        "population (seed {}): {} = {} resources",
        population.seed,
        counts.join(", "),
        population.total()
    );
    println!("sample requests, under /fhir:");
    for workload in Search::ALL {
        println!(
            "  {:<24} {}",
            workload.name(),
            workload.sample_query(population)
        );
    }
    println!(
        "1 client per search, then {} mixed; {} s each; HTTP/1.1 keep-alive over loopback",
        options.clients, options.seconds
    );
    let duration = options.duration();
    common::client_runtime()?.block_on(async {
        let baseline_server = common::start_baseline()?;
        let ping = [common::ping(&baseline_server)];
        let baselines = Baselines {
            one: common::run(&ping, 1, duration).await?,
            all: if search.runs(&mix_name(&options)) {
                Some(common::run(&ping, options.clients, duration).await?)
            } else {
                None
            },
        };
        baseline_server.stop().await;

        for backend in options.backends.iter().copied() {
            let (url, keep) = match database(backend, &search).await {
                Ok(database) => database,
                Err(error) => {
                    println!("{}: skipped ({error:#})", backend.name());
                    continue;
                }
            };
            let benched = async {
                if search.fresh {
                    empty(&url).await?;
                }
                let server = prepare(backend, &url, &options, population).await?;
                let measured = measure(
                    &server.url,
                    &options,
                    &search,
                    population,
                    &baselines,
                    backend.name(),
                )
                .await;
                server.stop().await;
                measured
            }
            .await;
            if !keep {
                common::remove_database(&url).await;
            }
            benched?;
        }
        anyhow::Ok(())
    })
}
