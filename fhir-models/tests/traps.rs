//! The places where generating models from the FHIR schema goes wrong, one test each.

use fhir_models::models::{Extension, Identifier, Patient};
use fhir_models::{
    ModelError, Resource, ResourceType, check_typed, parse_resource, resource_from_value,
    resource_to_value, resource_to_vec,
};
use serde_json::{Value, json};

fn round_trip(value: &Value) -> Value {
    let resource = resource_from_value(value).expect("valid resource");
    resource_to_value(&resource)
}

fn error(value: &Value) -> ModelError {
    resource_from_value(value).expect_err("invalid resource")
}

#[test]
fn a_primitive_and_its_extension_are_both_kept() {
    let patient = json!({
        "resourceType": "Patient",
        "birthDate": "1970-03-30",
        "_birthDate": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime", "valueDateTime": "1970-03-30T14:35:45-05:00"}]}
    });
    assert_eq!(round_trip(&patient), patient);
}

#[test]
fn repeated_primitive_extensions_keep_their_nulls() {
    let patient = json!({
        "resourceType": "Patient",
        "name": [{"given": ["Peter", "James"], "_given": [null, {"extension": [{"url": "http://example.org/x", "valueString": "J"}]}]}]
    });
    assert_eq!(round_trip(&patient), patient);
}

#[test]
fn decimals_keep_their_precision() {
    let observation = json!({
        "resourceType": "Observation", "status": "final", "code": {"text": "x"},
        "valueQuantity": {"value": 4.50, "unit": "mmol/L"}
    });
    // `json!` would parse 4.50 as a float; the text must come from real JSON.
    let observation: Value =
        serde_json::from_str(&observation.to_string().replace("4.5", "4.50")).expect("json");
    let out = String::from_utf8(resource_to_vec(
        &resource_from_value(&observation).expect("valid"),
    ))
    .expect("utf-8");
    assert!(out.contains("\"value\":4.50"), "{out}");
}

#[test]
fn integers_stay_integers() {
    let observation = json!({
        "resourceType": "Observation", "status": "final", "code": {"text": "x"},
        "valueInteger": 5
    });
    let out = String::from_utf8(resource_to_vec(
        &resource_from_value(&observation).expect("valid"),
    ))
    .expect("utf-8");
    assert!(
        out.contains("\"valueInteger\":5}") || out.contains("\"valueInteger\":5,"),
        "{out}"
    );
    let fractional = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueInteger": 5.5});
    assert_eq!(error(&fractional).path, "Observation.valueInteger");
}

#[test]
fn booleans_are_booleans() {
    let patient = json!({"resourceType": "Patient", "active": true, "multipleBirthBoolean": false});
    assert_eq!(round_trip(&patient), patient);
    assert_eq!(
        error(&json!({"resourceType": "Patient", "active": "true"})).path,
        "Patient.active"
    );
}

#[test]
fn an_absent_identifier_assigner_is_not_written_as_null() {
    let patient =
        json!({"resourceType": "Patient", "identifier": [{"system": "urn:x", "value": "1"}]});
    assert_eq!(round_trip(&patient), patient);
    let with_assigner = json!({"resourceType": "Patient", "identifier": [{"value": "1", "assigner": {"display": "Acme", "identifier": {"value": "2"}}}]});
    assert_eq!(round_trip(&with_assigner), with_assigner);
}

#[test]
fn comparators_are_plain_strings() {
    let observation = json!({
        "resourceType": "Observation", "status": "final", "code": {"text": "x"},
        "valueQuantity": {"value": 5, "comparator": "<="}
    });
    assert_eq!(round_trip(&observation), observation);
}

#[test]
fn resources_are_read_by_their_resource_type() {
    let bundle = json!({
        "resourceType": "Bundle", "type": "collection",
        "entry": [
            {"resource": {"resourceType": "Patient", "id": "p"}},
            {"resource": {"resourceType": "Account", "id": "a", "status": "active"}}
        ]
    });
    let Resource::Bundle(parsed) = resource_from_value(&bundle).expect("valid bundle") else {
        panic!("not a Bundle");
    };
    let resources: Vec<_> = parsed
        .entry
        .iter()
        .map(|e| e.resource.as_ref().and_then(|r| r.resource_type()))
        .collect();
    assert_eq!(
        resources,
        [Some(ResourceType::Patient), Some(ResourceType::Account)]
    );
    assert!(matches!(
        parsed.entry[0].resource.as_ref(),
        Some(Resource::Patient(_))
    ));
    assert!(matches!(
        parsed.entry[1].resource.as_ref(),
        Some(Resource::Other(_))
    ));
    assert_eq!(round_trip(&bundle), bundle);
}

#[test]
fn errors_say_where_they_are() {
    let patient = json!({"resourceType": "Patient", "name": [{"given": ["a", 5]}]});
    let e = check_typed(ResourceType::Patient, &patient).expect_err("5 is not a string");
    assert_eq!(e.path, "Patient.name[0].given[1]");
    assert!(e.message.contains("invalid type"), "{}", e.message);
}

#[test]
fn errors_inside_nested_resources_say_where_they_are() {
    let bundle = json!({
        "resourceType": "Bundle", "type": "collection",
        "entry": [{"resource": {"resourceType": "Patient"}}, {"resource": {"resourceType": "Patient", "contained": [{"resourceType": "Organization", "active": "yes"}]}}]
    });
    assert_eq!(
        error(&bundle).path,
        "Bundle.entry[1].resource.contained[0].active"
    );
}

#[test]
fn resource_type_need_not_come_first() {
    let patient = json!({"id": "p", "gender": "female", "resourceType": "Patient"});
    assert!(matches!(
        resource_from_value(&patient),
        Ok(Resource::Patient(_))
    ));
    let bundle = json!({"type": "collection", "entry": [{"resource": {"birthDate": 1, "resourceType": "Patient"}}], "resourceType": "Bundle"});
    assert_eq!(error(&bundle).path, "Bundle.entry[0].resource.birthDate");
}

#[test]
fn unknown_or_missing_resource_types_are_errors() {
    assert_eq!(
        error(&json!({"resourceType": "Patient2"})).path,
        "Resource.resourceType"
    );
    let e = error(&json!({"id": "x"}));
    assert!(e.message.contains("resourceType"), "{}", e.message);
    let contained =
        error(&json!({"resourceType": "Patient", "contained": [{"resourceType": "patient"}]}));
    assert_eq!(contained.path, "Patient.contained[0].resourceType");
}

#[test]
fn a_model_accepts_only_its_own_resource_type() {
    let e = check_typed(
        ResourceType::Patient,
        &json!({"resourceType": "Observation"}),
    )
    .expect_err("wrong type");
    assert_eq!(e.path, "Patient.resourceType");
}

#[test]
fn unknown_properties_are_rejected_not_dropped() {
    let e = error(&json!({"resourceType": "Patient", "nickname": "Bob"}));
    assert_eq!(e.path, "Patient.nickname");
    let nested =
        error(&json!({"resourceType": "Patient", "name": [{"family": "X", "middle": "Y"}]}));
    assert_eq!(nested.path, "Patient.name[0].middle");
}

#[test]
fn codes_with_a_value_set_are_checked() {
    assert_eq!(
        error(&json!({"resourceType": "Patient", "gender": "F"})).path,
        "Patient.gender"
    );
}

#[test]
fn types_without_a_model_are_kept_as_json() {
    let account = json!({"resourceType": "Account", "status": "active", "anything": [1, 2.50]});
    assert!(!ResourceType::Account.has_typed_model());
    assert_eq!(check_typed(ResourceType::Account, &account), Ok(()));
    assert!(matches!(
        resource_from_value(&account),
        Ok(Resource::Other(_))
    ));
    assert_eq!(round_trip(&account), account);
}

#[test]
fn bytes_parse_to_the_same_resource() {
    let text = r#"{"resourceType":"Patient","id":"p","active":true}"#;
    let resource = parse_resource(text.as_bytes()).expect("valid");
    assert_eq!(
        String::from_utf8(resource_to_vec(&resource)).expect("utf-8"),
        text
    );
    assert_eq!(
        parse_resource(b"{\"resourceType\":")
            .expect_err("not JSON")
            .path,
        "Resource"
    );
}

#[test]
fn output_follows_fhir_element_order() {
    let text = r#"{"resourceType":"Patient","id":"p","meta":{"versionId":"1"},"identifier":[{"value":"1"}],"active":true,"name":[{"family":"F"}],"birthDate":"2000-01-01","_birthDate":{"id":"b"}}"#;
    let resource = parse_resource(text.as_bytes()).expect("valid");
    assert_eq!(
        String::from_utf8(resource_to_vec(&resource)).expect("utf-8"),
        text
    );
}

#[test]
fn every_typed_resource_type_has_a_model() {
    for rt in ResourceType::ALL.iter().filter(|rt| rt.has_typed_model()) {
        let minimal = json!({"resourceType": rt.as_str()});
        // A model exists iff the result is not `Other`; missing required elements may fail.
        match resource_from_value(&minimal) {
            Ok(resource) => assert!(!matches!(resource, Resource::Other(_)), "{rt}"),
            Err(e) => assert!(e.message.contains("missing field"), "{rt}: {e}"),
        }
    }
}

#[test]
fn models_stay_small_on_the_stack() {
    // Unboxed optional structs made Extension 32 KB and Patient 2.3 KB.
    assert!(
        size_of::<Extension>() <= 1024,
        "Extension is {} bytes",
        size_of::<Extension>()
    );
    assert!(
        size_of::<Patient>() <= 1024,
        "Patient is {} bytes",
        size_of::<Patient>()
    );
    assert!(
        size_of::<Identifier>() <= 512,
        "Identifier is {} bytes",
        size_of::<Identifier>()
    );
    assert!(size_of::<Resource>() <= 16);
}

#[test]
fn nulls_and_empty_arrays_are_rejected_not_dropped() {
    let null = error(&json!({"resourceType": "Patient", "name": [{"family": null}]}));
    assert_eq!(null.path, "Patient.name[0].family");
    let empty = error(&json!({"resourceType": "Patient", "name": [{"given": []}]}));
    assert_eq!(empty.path, "Patient.name[0].given");
    let null_item = check_typed(
        ResourceType::Patient,
        &json!({"resourceType": "Patient", "name": [{"given": [null]}]}),
    );
    assert_eq!(
        null_item.expect_err("null given").path,
        "Patient.name[0].given[0]"
    );
    let ext = json!({"resourceType": "Patient", "_active": null});
    assert_eq!(error(&ext).path, "Patient._active");
}

#[test]
fn resources_can_be_built_in_code() {
    let patient = Patient {
        id: Some("p1".to_owned()),
        active: Some(true),
        ..Default::default()
    };
    let value = resource_to_value(&Resource::from(patient));
    assert_eq!(
        value,
        json!({"resourceType": "Patient", "id": "p1", "active": true})
    );
}

#[test]
fn parameters_carry_typed_resources_and_values() {
    // No official Parameters example is vendored, so this stands in for one.
    let text = r#"{"resourceType":"Parameters","parameter":[{"name":"dose","valueDecimal":1.50},{"name":"patient","resource":{"resourceType":"Patient","id":"p"}},{"name":"group","part":[{"name":"n","valueInteger":3}]}]}"#;
    let Resource::Parameters(parameters) = parse_resource(text.as_bytes()).expect("valid") else {
        panic!("not Parameters");
    };
    assert!(matches!(
        parameters.parameter[1].resource,
        Some(Resource::Patient(_))
    ));
    let again = resource_to_vec(&Resource::Parameters(parameters));
    assert_eq!(String::from_utf8(again).expect("utf-8"), text);
}
