//! The AuditEvent resource of a row of the trail, made when it is read (IHE Basic Audit Log
//! Patterns style): recording stores columns only.

use base64::Engine as _;
use serde_json::{Value, json};

use super::{AUTHENTICATION, AuditRecord};

/// The AuditEvent of the record at `pos` in the chain (its id).
pub fn render(pos: i64, record: &AuditRecord) -> Value {
    let authentication = record.type_code == AUTHENTICATION;
    let (event_type, subtype, observer) = if authentication {
        let subtype = if record.subtype == "login" {
            json!({
                "system": "http://dicom.nema.org/resources/ontology/DCM",
                "code": "110122", "display": "Login",
            })
        } else {
            json!({ "system": "urn:telemed:auth-event", "code": record.subtype })
        };
        (
            json!({
                "system": "http://dicom.nema.org/resources/ontology/DCM",
                "code": AUTHENTICATION, "display": "User Authentication",
            }),
            subtype,
            "telemed authorization server",
        )
    } else {
        (
            json!({
                "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
                "code": "rest", "display": "RESTful Operation",
            }),
            json!({ "system": "http://hl7.org/fhir/restful-interaction", "code": record.subtype }),
            "telemed",
        )
    };
    let mut event = json!({
        "resourceType": "AuditEvent",
        "id": pos.to_string(),
        "meta": { "versionId": "1", "lastUpdated": record.recorded.to_instant() },
        "type": event_type,
        "subtype": [subtype],
        "action": record.action,
        "recorded": record.recorded.to_instant(),
        "outcome": record.outcome,
        "agent": agents(record, authentication),
        "source": {
            "observer": { "display": observer },
            "type": [{
                "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                "code": "4", "display": "Application Server",
            }],
        },
    });
    if let Some(detail) = &record.detail {
        event["outcomeDesc"] = json!(detail);
    }
    if let Some(reason) = &record.purpose {
        event["purposeOfEvent"] = json!([{
            "coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                "code": "BTG", "display": "break the glass",
            }],
            "text": reason,
        }]);
    }
    let entities = entities(record);
    if !entities.is_empty() {
        event["entity"] = Value::Array(entities);
    }
    event
}

/// Who took part: the user (or the backend service, or nobody known) as requestor, with the
/// address; the app beside a user.
fn agents(record: &AuditRecord, authentication: bool) -> Vec<Value> {
    let client = |requestor: bool| {
        json!({
            "type": { "coding": [{
                "system": "http://dicom.nema.org/resources/ontology/DCM",
                "code": "110150", "display": "Application",
            }]},
            "who": { "identifier": { "system": "urn:telemed:client", "value": record.client_id } },
            "requestor": requestor,
        })
    };
    let is_client = record
        .agent
        .as_deref()
        .is_some_and(|agent| agent.starts_with("client/"));
    let mut first = match (&record.agent, &record.user_name) {
        (None, None) => json!({ "who": { "display": "anonymous" }, "requestor": true }),
        (Some(_), _) if is_client => client(true),
        (agent, name) => {
            let mut who = serde_json::Map::new();
            if let Some(agent) = agent.as_deref().filter(|a| a.contains('/')) {
                who.insert("reference".to_owned(), json!(agent));
            }
            // An agent that is no reference is a name itself (a username, or a command run
            // on the server's machine, whose user is then the altId).
            let named = agent.as_deref().filter(|a| !a.contains('/'));
            if let Some(name) = named.or(name.as_deref()) {
                who.insert("display".to_owned(), json!(name));
            }
            let mut user = json!({ "who": who, "requestor": true });
            if !authentication {
                user["type"] = json!({ "coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                    "code": "IRCP", "display": "information recipient",
                }]});
            }
            if let Some(name) = &record.user_name {
                user["altId"] = json!(name);
            }
            user
        }
    };
    if let Some(address) = &record.address {
        first["network"] = json!({ "address": address, "type": "2" });
    }
    let mut agents = vec![first];
    if !is_client && record.client_id.is_some() {
        agents.push(client(false));
    }
    agents
}

/// What the event was about: the patient, the resources, the query.
fn entities(record: &AuditRecord) -> Vec<Value> {
    let mut entity = Vec::new();
    if let Some(patient) = &record.patient {
        entity.push(json!({
            "what": { "reference": format!("Patient/{patient}") },
            "type": { "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1" },
            "role": { "system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1" },
        }));
    }
    let listed = record
        .entities
        .as_deref()
        .or(record.entity.as_deref())
        .unwrap_or("");
    for what in listed.split(' ').filter(|w| !w.is_empty()) {
        entity.push(json!({
            "what": { "reference": what },
            "type": { "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2" },
        }));
    }
    if let Some(query) = record.query.as_deref().filter(|q| !q.is_empty()) {
        entity.push(json!({
            "type": { "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2" },
            "role": { "system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "24" },
            "query": base64::engine::general_purpose::STANDARD.encode(query),
        }));
    }
    entity
}
