//! The one list of resource types that get typed models. Adding a type is a one-line change
//! here followed by `cargo run -p codegen`; every datatype and backbone it references follows.

/// Resource types our own logic reads, so they get typed Rust structs. Every other type stays
/// JSON validated by the schema: typed models for all 146 would cost ~80 s of debug build.
pub const TYPED_RESOURCES: &[&str] = &[
    "Patient",
    "Practitioner",
    "PractitionerRole",
    "Organization",
    "Location",
    "HealthcareService",
    "Schedule",
    "Slot",
    "Appointment",
    "Encounter",
    "CareTeam",
    "Condition",
    "Observation",
    "Medication",
    "MedicationRequest",
    "Communication",
    "CommunicationRequest",
    "Binary",
    "DocumentReference",
    "Composition",
    "Consent",
    "AuditEvent",
    "Provenance",
    "Claim",
    "Questionnaire",
    "QuestionnaireResponse",
    "Subscription",
    "Bundle",
    "OperationOutcome",
    "CapabilityStatement",
    "Parameters",
];
