//! AuditEvent through the FHIR API: read and search the audit trail ([`crate::audit`]), never
//! write it. An AuditEvent's id is its place in the chain (`chain_pos`); it has one version.
//!
//! Search takes `_id`, `date` (with prefixes), `patient`, `agent`, `entity`, `type`,
//! `subtype`, `action` and `outcome` (each comma-separated for OR, repeated for AND),
//! `_count`, `_sort` (`date` or `-date`, the default) and the paging cursor; any other
//! parameter is an error rather than ignored, so that no search of the trail silently widens.
//! What a token reaches of the trail follows its scopes like any type in the Patient
//! compartment: a `patient/AuditEvent.rs` token sees the events about its patient.

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use fhir_models::ResourceType;
use serde_json::Value;
use serde_json::value::RawValue;
use smart_auth::scope::Permission;

use super::bundle::{Bundle, BundleLink};
use super::format::{FHIR_JSON, Shape};
use crate::access::{Access, Patients, Reach};
use crate::app::AppState;
use crate::audit::{self, AuditRecord};
use crate::error::{FhirError, FhirResult, Issue};
use crate::search::query::{Filter, Prefix, SearchValue};
use crate::store::Cell;

/// The error of any write to the trail.
pub fn append_only() -> FhirError {
    FhirError::MethodNotAllowed(
        "the audit trail is append-only: AuditEvents are recorded by the server and cannot \
         be created, changed or deleted through the API"
            .to_owned(),
    )
}

/// Refuses a write to AuditEvent.
pub fn refuse_write(rt: ResourceType) -> FhirResult<()> {
    if rt == ResourceType::AuditEvent {
        Err(append_only())
    } else {
        Ok(())
    }
}

/// SQL text with its binds, `$n` numbered in order.
#[derive(Default)]
struct Sql {
    text: String,
    binds: Vec<Cell>,
}

impl Sql {
    fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    fn bind(&mut self, cell: Cell) -> &mut Self {
        self.binds.push(cell);
        self.text.push_str(&format!("${}", self.binds.len()));
        self
    }
}

/// The records of the trail a query of `RECORD_COLUMNS` found, with their positions. Every
/// record appended before the query is in the trail by then.
async fn records(state: &AppState, sql: &Sql) -> FhirResult<Vec<(i64, AuditRecord)>> {
    if let Some(auditor) = &state.auditor {
        auditor.settle().await.map_err(FhirError::Internal)?;
    }
    let rows = state
        .store
        .query(&sql.text, &sql.binds, &audit::record_kinds())
        .await?;
    Ok(rows
        .into_iter()
        .map(|row| audit::read_record(&mut row.into_iter()))
        .collect())
}

/// The condition that keeps a search of the trail within a token's reach, or an error when a
/// scope filter asks for what the trail cannot tell.
async fn reach_condition(state: &AppState, access: &Access, sql: &mut Sql) -> FhirResult<()> {
    let reach = access
        .reach(state, ResourceType::AuditEvent, Permission::Search)
        .await?;
    let Reach::Some(terms) = reach else {
        return Ok(());
    };
    sql.push(" AND (1 = 0");
    for term in terms {
        if term.filter.is_some() {
            // A v2 scope filter on AuditEvent is not one the trail's columns can answer.
            continue;
        }
        match &term.patients {
            Patients::Any => {
                sql.push(" OR 1 = 1");
            }
            Patients::These(patients) => {
                for patient in patients.iter() {
                    sql.push(" OR patient = ").bind(Cell::Text(patient.clone()));
                }
            }
        }
    }
    sql.push(")");
    Ok(())
}

/// `GET /fhir/AuditEvent/{id}` (and `_history/1`).
pub async fn read(
    state: &AppState,
    access: &Access,
    id: &str,
    version: Option<&str>,
    shape: &Shape,
) -> FhirResult<Response> {
    let not_found = || FhirError::NotFound("AuditEvent has no resource with that id".to_owned());
    let pos: i64 = id.parse().map_err(|_| not_found())?;
    if version.is_some_and(|v| v != "1") {
        return Err(FhirError::NotFound(format!(
            "AuditEvent/{id} has one version, 1"
        )));
    }
    let reach = access
        .reach(state, ResourceType::AuditEvent, Permission::Read)
        .await?;
    let mut sql = Sql::default();
    sql.push(&format!(
        "SELECT {} FROM audit_events WHERE chain_pos = ",
        audit::RECORD_COLUMNS
    ))
    .bind(Cell::Int(pos));
    let found = records(state, &sql).await?;
    let (_, row) = found.first().ok_or_else(not_found)?;
    let visible = match &reach {
        Reach::All => true,
        Reach::Some(terms) => terms.iter().any(|term| {
            term.filter.is_none()
                && match &term.patients {
                    Patients::Any => true,
                    Patients::These(patients) => {
                        row.patient.as_ref().is_some_and(|p| patients.contains(p))
                    }
                }
        }),
    };
    if !visible {
        return Err(not_found());
    }
    let mut value = audit::render(pos, row);
    shape.subset(&mut value);
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, FHIR_JSON.to_owned()),
            (header::ETAG, "W/\"1\"".to_owned()),
        ],
        shape.to_bytes(&value)?,
    )
        .into_response())
}

fn bad(name: &str, problem: &str) -> FhirError {
    FhirError::BadRequest(vec![
        Issue::error(
            "not-supported",
            format!("search parameter {name}: {problem}"),
        )
        .at(name),
    ])
}

/// The condition of one parsed filter on the trail's columns.
fn condition(sql: &mut Sql, filter: &Filter) -> FhirResult<()> {
    match filter {
        Filter::Id(ids) => {
            sql.push(" AND chain_pos IN (");
            for (i, id) in ids.iter().enumerate() {
                if i > 0 {
                    sql.push(", ");
                }
                sql.bind(Cell::Int(id.parse().unwrap_or(-1)));
            }
            sql.push(")");
        }
        Filter::Param {
            def,
            modifier: crate::search::query::Modifier::None,
            values,
        } => {
            let column = match def.code {
                "date" => "recorded",
                "patient" => "patient",
                "agent" => "agent",
                "entity" => "entity",
                "type" => "type_code",
                "subtype" => "subtype",
                "action" => "action",
                "outcome" => "outcome",
                other => {
                    return Err(bad(other, "is not searchable on the audit trail"));
                }
            };
            sql.push(" AND (1 = 0");
            for value in values {
                sql.push(" OR ");
                value_condition(sql, def.code, column, value)?;
            }
            sql.push(")");
        }
        Filter::Param { def, .. } | Filter::Missing { def, .. } => {
            return Err(bad(def.code, "takes no modifier on the audit trail"));
        }
        _ => {
            return Err(bad(
                "AuditEvent",
                "the audit trail takes _id, date, patient, agent, entity, type, subtype, \
                 action and outcome",
            ));
        }
    }
    Ok(())
}

fn value_condition(sql: &mut Sql, code: &str, column: &str, value: &SearchValue) -> FhirResult<()> {
    match value {
        SearchValue::Date(prefix, range) => {
            let (op, bound) = match prefix {
                Prefix::Gt | Prefix::Sa => (">", range.high),
                Prefix::Ge => (">=", range.low),
                Prefix::Lt | Prefix::Eb => ("<", range.low),
                Prefix::Le => ("<=", range.high),
                Prefix::Ne => {
                    sql.push(&format!("({column} < "))
                        .bind(Cell::Int(range.low))
                        .push(&format!(" OR {column} > "))
                        .bind(Cell::Int(range.high))
                        .push(")");
                    return Ok(());
                }
                Prefix::Eq | Prefix::Ap => {
                    sql.push(&format!("({column} >= "))
                        .bind(Cell::Int(range.low))
                        .push(&format!(" AND {column} <= "))
                        .bind(Cell::Int(range.high))
                        .push(")");
                    return Ok(());
                }
            };
            sql.push(&format!("{column} {op} ")).bind(Cell::Int(bound));
        }
        SearchValue::Reference {
            target_type, id, ..
        } => {
            let Some(id) = id else {
                return Err(bad(code, "names a resource by Type/id on the audit trail"));
            };
            // `patient` holds ids; `agent` and `entity` hold `Type/id` (or `client/{id}`).
            let text = match (code, target_type) {
                ("patient", _) => id.clone(),
                (_, Some(rt)) => format!("{rt}/{id}"),
                (_, None) => id.clone(),
            };
            sql.push(&format!("{column} = ")).bind(Cell::Text(text));
        }
        SearchValue::Token {
            code: Some(token), ..
        } => {
            sql.push(&format!("{column} = "))
                .bind(Cell::Text(token.clone()));
        }
        // A date's repeats (`date=ge…&date=lt…`), joined as they hold on one column.
        SearchValue::AllOf(values) => {
            sql.push("(1 = 1");
            for value in values {
                sql.push(" AND ");
                value_condition(sql, code, column, value)?;
            }
            sql.push(")");
        }
        _ => {
            return Err(bad(
                code,
                "this form of value is not supported on the audit trail",
            ));
        }
    }
    Ok(())
}

/// `GET /fhir/AuditEvent?…`: a page of the trail, newest first unless `_sort=date`.
pub async fn search(
    state: &AppState,
    access: &Access,
    pairs: &[(String, String)],
    headers: &HeaderMap,
) -> FhirResult<Response> {
    let shape = Shape::from_request(pairs, headers)?;
    let query = state.parse_search(vec![ResourceType::AuditEvent], pairs, true)?;
    if !query.includes.is_empty() || !query.revincludes.is_empty() {
        return Err(bad("_include", "is not supported on the audit trail"));
    }
    let ascending = match query.sort.as_slice() {
        [] => false,
        [key] if key.code == "date" || key.code == "_lastUpdated" => !key.descending,
        _ => return Err(bad("_sort", "the audit trail sorts by date only")),
    };
    let mut sql = Sql::default();
    sql.push(&format!(
        "SELECT {} FROM audit_events WHERE 1 = 1",
        audit::RECORD_COLUMNS
    ));
    reach_condition(state, access, &mut sql).await?;
    for filter in &query.filters {
        condition(&mut sql, filter)?;
    }
    // By date, then by chain position. The chain's order is not the order of `recorded`: a
    // read's record joins the chain from the SQLite audit journal after writes that came later,
    // and the journal of a server that died joins it when the database next opens. The cursor
    // is the chain position of the last record shown; the page goes on from its date.
    if let Some(cursor) = query.cursor {
        sql.push(if ascending != cursor.backwards {
            " AND (recorded, chain_pos) > "
        } else {
            " AND (recorded, chain_pos) < "
        })
        .push("(SELECT recorded, chain_pos FROM audit_events WHERE chain_pos = ")
        .bind(Cell::Int(cursor.rid))
        .push(")");
    }
    sql.push(if ascending {
        " ORDER BY recorded, chain_pos"
    } else {
        " ORDER BY recorded DESC, chain_pos DESC"
    });
    sql.push(" LIMIT ")
        .bind(Cell::Int(i64::from(query.count) + 1));
    let mut found = records(state, &sql).await?;
    let more = found.len() > query.count as usize;
    found.truncate(query.count as usize);

    let link = |cursor: Option<String>| {
        let mut pairs: Vec<(&str, String)> = query
            .canonical
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        pairs.push(("_count", query.count.to_string()));
        if let Some(cursor) = cursor {
            pairs.push(("_cursor", cursor));
        }
        format!(
            "{}/AuditEvent?{}",
            state.fhir_base,
            serde_urlencoded::to_string(&pairs).unwrap_or_default()
        )
    };
    let mut links = vec![BundleLink {
        relation: "self",
        url: link(query.cursor.map(|c| c.encode())),
    }];
    if more && let Some((last, _)) = found.last() {
        links.push(BundleLink {
            relation: "next",
            url: link(Some(format!("n{last}"))),
        });
    }
    let entries = found
        .iter()
        .map(|(pos, row)| {
            let mut value = audit::render(*pos, row);
            shape.subset(&mut value);
            let text = value.to_string();
            Ok(serde_json::json!({
                "fullUrl": format!("{}/AuditEvent/{pos}", state.fhir_base),
                "resource": RawValue::from_string(text).map_err(|e| FhirError::Internal(e.into()))?,
                "search": { "mode": "match" },
            }))
        })
        .collect::<FhirResult<Vec<Value>>>()?;
    let bundle = Bundle::new("searchset", None, links, entries);
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, FHIR_JSON)],
        shape.to_bytes(&bundle)?,
    )
        .into_response())
}
