//! A Patient's compartment (http://hl7.org/fhir/R4/compartmentdefinition-patient.html), read a
//! page at a time for `Patient/{id}/$everything`.
//!
//! A resource is in a Patient's compartment when one of the reference parameters that
//! [`fhir_models::patient_compartment_params`] names for its type points at that Patient; the
//! Patient is in its own. The reference index holds the references of live resources only, and
//! its `search_reference_target` index (referring type, target type and id, parameter, in an
//! order that differs by backend, then `rid`) finds the members of one type with one seek per
//! parameter, reading the index alone: the compartment is a `UNION ALL` of one such probe per
//! type. A page is the next members in `rid` order after the cursor (keyset
//! paging, as in search), so resources written between pages never shift or repeat one.
//!
//! Resources the page's members refer to come with it as includes, but only of types the
//! compartment does not hold (Practitioner, Organization, Medication, Location, …): a
//! referenced Encounter or Patient is either in this compartment, and then a match of its own
//! page, or belongs to someone else, and then it is not this Patient's to return.

use std::collections::HashSet;

use fhir_models::{ResourceType, patient_compartment_params};

use super::execute::{Found, Page, fetch};
use super::sql::{self, Sql};
use crate::error::FhirError;
use crate::store::{Cell, Kind, Micros, Store};

/// One page of a Patient's compartment.
#[derive(Debug, Clone)]
pub struct CompartmentQuery<'a> {
    /// The Patient's logical id.
    pub patient: &'a str,
    /// The types to return (`_type`, or every type).
    pub types: &'a [ResourceType],
    /// Only resources last updated at or after this instant (`_since`).
    pub since: Option<Micros>,
    /// The paging cursor: only members whose `rid` is greater.
    pub after: Option<i64>,
    /// The page size.
    pub count: u32,
}

impl CompartmentQuery<'_> {
    /// The types asked for that the compartment holds, with their parameters.
    fn member_types(&self) -> impl Iterator<Item = (ResourceType, &'static [&'static str])> {
        self.types
            .iter()
            .map(|&rt| (rt, patient_compartment_params(rt)))
            .filter(|(_, params)| !params.is_empty())
    }

    /// The types asked for that may come as includes: those the compartment never holds.
    fn include_types(&self) -> Vec<ResourceType> {
        self.types
            .iter()
            .copied()
            .filter(|&rt| patient_compartment_params(rt).is_empty())
            .collect()
    }
}

/// `(SELECT rid … UNION ALL …)`: the `rid`s of the compartment's members of the types asked
/// for, after `after`; a resource that refers to the Patient through several parameters comes
/// more than once. The Patient itself is found by its id.
fn members(sql: &mut Sql, query: &CompartmentQuery<'_>, after: Option<i64>) {
    sql.push("(");
    for (i, (rt, params)) in query.member_types().enumerate() {
        if i > 0 {
            sql.push(" UNION ALL ");
        }
        sql.push("SELECT x.rid FROM search_reference x WHERE x.resource_type = ")
            .text(rt.as_str());
        sql.push(" AND x.target_type = ")
            .text(ResourceType::Patient.as_str());
        sql.push(" AND x.target_id = ").text(query.patient);
        sql.push(" AND x.param IN (");
        for (j, param) in params.iter().enumerate() {
            if j > 0 {
                sql.push(", ");
            }
            sql.text(param);
        }
        sql.push(")");
        if let Some(after) = after {
            sql.push(" AND x.rid > ").int(after);
        }
        if rt == ResourceType::Patient {
            sql.push(" UNION ALL SELECT s.rid FROM resources s WHERE s.resource_type = ")
                .text(rt.as_str());
            sql.push(" AND s.id = ").text(query.patient);
            if let Some(after) = after {
                sql.push(" AND s.rid > ").int(after);
            }
        }
    }
    sql.push(")");
}

/// `FROM resources r WHERE …`: the live members, updated since `_since`.
fn live_members(sql: &mut Sql, query: &CompartmentQuery<'_>, after: Option<i64>) {
    sql.push(" FROM resources r WHERE r.rid IN ");
    members(sql, query, after);
    // `deleted = FALSE`, not `NOT deleted`, as in every other query of `resources`.
    sql.push(" AND r.deleted = FALSE");
    if let Some(since) = query.since {
        sql.push(" AND r.last_updated >= ").int(since.0);
    }
}

/// The page: `count + 1` members after the cursor (to know whether there is another), with
/// their bodies, in `rid` order. The members are chosen first and only their bodies read.
fn page_sql(query: &CompartmentQuery<'_>) -> Sql {
    let mut sql = Sql::default();
    sql.push(&format!(
        "SELECT p.rid, {} FROM (SELECT r.rid",
        sql::current_columns("b")
    ));
    live_members(&mut sql, query, query.after);
    sql.push(" ORDER BY r.rid LIMIT ")
        .int(i64::from(query.count) + 1);
    sql.push(") p JOIN resources b ON b.rid = p.rid ORDER BY p.rid");
    sql
}

/// How many members there are on all pages together.
fn count_sql(query: &CompartmentQuery<'_>) -> Sql {
    let mut sql = Sql::default();
    sql.push("SELECT COUNT(*)");
    live_members(&mut sql, query, None);
    sql
}

/// One page of the compartment, its includes, the total and the cursor of the next page.
pub async fn page(store: &Store, query: &CompartmentQuery<'_>) -> Result<Page, FhirError> {
    if query.member_types().next().is_none() {
        return Ok(Page {
            total: Some(0),
            ..Page::default()
        });
    }
    let total = count(store, query).await?;
    if query.count == 0 {
        return Ok(Page {
            total: Some(total),
            ..Page::default()
        });
    }
    let mut matches = fetch(store, page_sql(query)).await?;
    let more = matches.len() > query.count as usize;
    matches.truncate(query.count as usize);
    let next = more
        .then(|| matches.last().map(|f| f.rid.to_string()))
        .flatten();
    let included = referenced(store, query, &matches).await?;
    Ok(Page {
        matches,
        included,
        total: Some(total),
        next,
        previous: None,
    })
}

async fn count(store: &Store, query: &CompartmentQuery<'_>) -> Result<i64, FhirError> {
    let sql = count_sql(query);
    let rows = store.query(&sql.text, &sql.binds, &[Kind::Int]).await?;
    Ok(match rows.first().and_then(|row| row.first()) {
        Some(Cell::Int(n)) => *n,
        _ => 0,
    })
}

/// The includes of a page: what its members refer to, each once.
async fn referenced(
    store: &Store,
    query: &CompartmentQuery<'_>,
    matches: &[Found],
) -> Result<Vec<Found>, FhirError> {
    let types = query.include_types();
    if matches.is_empty() || types.is_empty() {
        return Ok(Vec::new());
    }
    let rids: Vec<i64> = matches.iter().map(|f| f.rid).collect();
    let found = fetch(store, sql::referenced(&rids, None, &types)).await?;
    // The members are of compartment types and the includes are not, so they never overlap;
    // one resource referred to from several members comes back once from `IN`.
    let mut seen = HashSet::new();
    Ok(found.into_iter().filter(|f| seen.insert(f.rid)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(types: &[ResourceType]) -> CompartmentQuery<'_> {
        CompartmentQuery {
            patient: "p1",
            types,
            since: None,
            after: Some(7),
            count: 10,
        }
    }

    #[test]
    fn each_compartment_type_is_one_probe_of_the_reference_index() {
        let types = [ResourceType::Observation, ResourceType::Practitioner];
        let sql = page_sql(&query(&types));
        assert_eq!(sql.text.matches("FROM search_reference x").count(), 1);
        assert!(
            sql.text
                .contains("x.param IN ($4, $5) AND x.rid > $6) AND r.deleted = FALSE"),
            "{}",
            sql.text
        );
        assert_eq!(
            sql.binds[..5],
            [
                Cell::Text("Observation".to_owned()),
                Cell::Text("Patient".to_owned()),
                Cell::Text("p1".to_owned()),
                Cell::Text("subject".to_owned()),
                Cell::Text("performer".to_owned()),
            ]
        );
    }

    #[test]
    fn the_patient_is_in_its_own_compartment() {
        let types = [ResourceType::Patient];
        let sql = count_sql(&query(&types));
        assert!(
            sql.text
                .contains("UNION ALL SELECT s.rid FROM resources s WHERE s.resource_type = $5"),
            "{}",
            sql.text
        );
        assert!(!sql.text.contains("rid >"), "a count has no cursor");
    }

    #[test]
    fn includes_are_of_types_the_compartment_never_holds() {
        let types = query(ResourceType::ALL).include_types();
        assert!(types.contains(&ResourceType::Practitioner));
        assert!(types.contains(&ResourceType::Medication));
        assert!(!types.contains(&ResourceType::Patient));
        assert!(!types.contains(&ResourceType::Encounter));
    }

    /// The query plan SQLite makes for `sql`, one line a step.
    fn sqlite_plan(sql: &Sql) -> Vec<String> {
        let connection = rusqlite::Connection::open_in_memory().expect("an in-memory database");
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite");
        let mut migrations: Vec<_> = std::fs::read_dir(dir)
            .expect("the SQLite migrations")
            .map(|entry| entry.expect("a migration").path())
            .collect();
        migrations.sort();
        for path in migrations {
            let text = std::fs::read_to_string(&path).expect("a migration");
            connection.execute_batch(&text).expect("the migration runs");
        }
        let mut statement = connection
            .prepare(&format!("EXPLAIN QUERY PLAN {}", sql.text))
            .expect("the query prepares");
        statement
            .query_map(rusqlite::params_from_iter(&sql.binds), |row| row.get(3))
            .expect("the plan")
            .collect::<Result<_, _>>()
            .expect("the plan's rows")
    }

    #[test]
    fn sqlite_finds_a_page_by_one_index_seek_a_type_and_scans_nothing() {
        let q = CompartmentQuery {
            since: Some(Micros(0)),
            ..query(ResourceType::ALL)
        };
        let member_types = q.member_types().count();
        for sql in [page_sql(&q), count_sql(&q)] {
            let plan = sqlite_plan(&sql);
            let seeks = plan
                .iter()
                .filter(|step| {
                    step.starts_with("SEARCH x USING COVERING INDEX search_reference_target")
                })
                .count();
            assert_eq!(seeks, member_types, "{plan:#?}");
            // Only the page itself (at most `count + 1` rows) is walked.
            let scans: Vec<&String> = plan
                .iter()
                .filter(|step| step.starts_with("SCAN") && *step != "SCAN p")
                .collect();
            assert!(scans.is_empty(), "{scans:?}");
            assert!(
                plan.iter()
                    .any(|step| step == "SEARCH r USING INTEGER PRIMARY KEY (rowid=?)"),
                "{plan:#?}"
            );
        }
    }

    #[test]
    fn sqlite_finds_includes_from_the_page_rids() {
        let plan = sqlite_plan(&sql::referenced(
            &[1, 2],
            None,
            &[ResourceType::Practitioner],
        ));
        assert!(
            plan.iter()
                .any(|step| step.starts_with("SEARCH x USING COVERING INDEX search_reference_rid")),
            "{plan:#?}"
        );
        assert!(
            !plan.iter().any(|step| step.starts_with("SCAN")),
            "{plan:#?}"
        );
    }
}
