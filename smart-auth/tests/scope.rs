//! SMART App Launch 2.2 scopes: parsing, what a set allows and covers, display and description.

use fhir_models::ResourceType;
use smart_auth::scope::{
    Context, Filter, Grant, Permission, Permissions, ResourceScope, Scope, ScopeSet, Syntax,
};

const LAB: &str = "category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory";

fn resource(text: &str) -> ResourceScope {
    match Scope::parse(text) {
        Scope::Resource(scope) => scope,
        other => panic!("{text} is not a resource scope: {other:?}"),
    }
}

fn set(text: &str) -> ScopeSet {
    ScopeSet::parse(text)
}

fn filter(text: &str) -> Filter {
    Filter::parse(text).expect("a well-formed filter")
}

fn perms(letters: &str) -> Permissions {
    letters
        .chars()
        .map(|c| match c {
            'c' => Permission::Create,
            'r' => Permission::Read,
            'u' => Permission::Update,
            'd' => Permission::Delete,
            's' => Permission::Search,
            _ => panic!("not a permission letter: {c}"),
        })
        .collect()
}

// Valid forms.

#[test]
fn v1_read_is_read_and_search() {
    let scope = resource("patient/Observation.read");
    assert_eq!(scope.permissions, perms("rs"));
    assert_eq!(scope.syntax, Syntax::V1);
}

#[test]
fn v1_write_is_create_update_delete() {
    assert_eq!(
        resource("patient/Observation.write").permissions,
        perms("cud")
    );
}

#[test]
fn v1_star_is_all_five_permissions() {
    assert_eq!(resource("user/Observation.*").permissions, Permissions::ALL);
}

#[test]
fn each_v2_letter_is_its_permission_alone() {
    for permission in Permission::ALL {
        let scope = resource(&format!("patient/Observation.{}", permission.letter()));
        assert_eq!(scope.permissions, Permissions::from(permission));
        assert_eq!(scope.syntax, Syntax::V2);
    }
}

#[test]
fn v2_cruds_is_all_five_permissions() {
    assert_eq!(
        resource("user/Encounter.cruds").permissions,
        Permissions::ALL
    );
}

#[test]
fn v2_letters_may_skip_but_keep_order() {
    assert_eq!(resource("system/Encounter.cud").permissions, perms("cud"));
}

#[test]
fn each_context_prefix_is_its_context() {
    assert_eq!(resource("patient/Patient.r").context, Context::Patient);
    assert_eq!(resource("user/Patient.r").context, Context::User);
    assert_eq!(resource("system/Patient.r").context, Context::System);
}

#[test]
fn a_named_type_is_that_type() {
    assert_eq!(
        resource("patient/AllergyIntolerance.rs").resource_type,
        Some(ResourceType::AllergyIntolerance)
    );
}

#[test]
fn a_star_type_is_every_type() {
    assert_eq!(resource("patient/*.rs").resource_type, None);
}

#[test]
fn v1_star_on_star_type_parses() {
    let scope = resource("user/*.*");
    assert_eq!(scope.resource_type, None);
    assert_eq!(scope.permissions, Permissions::ALL);
}

#[test]
fn a_scope_without_query_has_no_filter() {
    assert_eq!(resource("patient/Observation.rs").filter, None);
}

#[test]
fn a_query_as_the_spec_writes_it_is_a_filter() {
    let scope = resource(&format!("patient/Observation.rs?{LAB}"));
    let filter = scope.filter.expect("a filter");
    assert_eq!(filter.as_str(), LAB);
    assert_eq!(
        filter.pairs(),
        [(
            "category".to_owned(),
            "http://terminology.hl7.org/CodeSystem/observation-category|laboratory".to_owned()
        )]
    );
}

#[test]
fn a_percent_encoded_query_is_decoded_and_kept_as_written() {
    let written = "category=http%3A%2F%2Fterminology.hl7.org%2FCodeSystem%2Fobservation-category%7Claboratory";
    let filter = resource(&format!("patient/Observation.rs?{written}"))
        .filter
        .expect("a filter");
    assert_eq!(filter.as_str(), written);
    assert_eq!(
        filter.pairs()[0].1,
        "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"
    );
}

#[test]
fn a_plus_in_a_query_is_a_space_as_in_any_url_query() {
    let filter = filter("code:text=blood+pressure");
    assert_eq!(filter.pairs()[0].1, "blood pressure");
}

#[test]
fn a_query_of_several_params_keeps_each_in_order() {
    let filter = resource("patient/Observation.rs?category=laboratory&date=ge2020-01-01")
        .filter
        .expect("a filter");
    assert_eq!(
        filter.pairs(),
        [
            ("category".to_owned(), "laboratory".to_owned()),
            ("date".to_owned(), "ge2020-01-01".to_owned())
        ]
    );
}

#[test]
fn a_query_may_follow_a_star_type() {
    let scope = resource("patient/*.rs?_security=N");
    assert_eq!(scope.resource_type, None);
    assert_eq!(scope.filter, Some(filter("_security=N")));
}

#[test]
fn identity_launch_and_refresh_scopes_are_their_variants() {
    let cases = [
        ("openid", Scope::OpenId),
        ("fhirUser", Scope::FhirUser),
        ("profile", Scope::Profile),
        ("launch", Scope::Launch),
        ("launch/patient", Scope::LaunchPatient),
        ("launch/encounter", Scope::LaunchEncounter),
        ("offline_access", Scope::OfflineAccess),
        ("online_access", Scope::OnlineAccess),
    ];
    for (text, want) in cases {
        assert_eq!(Scope::parse(text), want, "{text}");
    }
}

#[test]
fn other_launch_contexts_are_kept_as_other() {
    for text in [
        "launch/diagnosticreport",
        "launch/list?role=https://example.org/med-list-at-home",
    ] {
        assert_eq!(Scope::parse(text), Scope::Other(text.to_owned()));
    }
}

// Malformed forms: kept verbatim, granting nothing.

fn assert_other(text: &str) {
    assert_eq!(Scope::parse(text), Scope::Other(text.to_owned()), "{text}");
}

#[test]
fn unknown_permission_word_is_other() {
    assert_other("patient/Observation.xyz");
}

#[test]
fn unknown_resource_type_is_other() {
    assert_other("patient/Nope.rs");
}

#[test]
fn resource_type_in_the_wrong_case_is_other() {
    assert_other("patient/observation.rs");
}

#[test]
fn out_of_order_letters_are_other() {
    assert_other("patient/Observation.sr");
    assert_other("patient/Observation.dus");
}

#[test]
fn a_repeated_letter_is_other() {
    assert_other("patient/Observation.rr");
}

#[test]
fn no_permission_is_other() {
    assert_other("patient/Observation.");
}

#[test]
fn v1_with_a_query_is_other() {
    assert_other("patient/Observation.read?x=1");
}

#[test]
fn unknown_context_is_other() {
    assert_other("foo/Observation.rs");
    assert_other("Patient/Observation.rs");
}

#[test]
fn a_scope_without_dot_or_slash_is_other() {
    assert_other("patient/Observation");
    assert_other("Observation.rs");
}

#[test]
fn malformed_queries_are_other() {
    for query in ["", "category", "=x", "category=", "a=1&&b=2", "a=1&"] {
        assert_other(&format!("patient/Observation.rs?{query}"));
    }
}

// allows.

#[test]
fn other_scopes_grant_nothing() {
    let scopes = set("patient/Observation.sr patient/Nope.rs patient/Observation.read?x=1");
    for permission in Permission::ALL {
        assert!(
            scopes
                .allows(ResourceType::Observation, permission)
                .is_none()
        );
    }
}

#[test]
fn a_scope_allows_its_permissions_in_its_context() {
    let allowed = set("patient/Observation.rs").allows(ResourceType::Observation, Permission::Read);
    assert_eq!(allowed.patient, Grant::All);
    assert_eq!(allowed.user, Grant::None);
    assert_eq!(allowed.system, Grant::None);
}

#[test]
fn a_scope_does_not_allow_other_permissions() {
    let scopes = set("patient/Observation.rs");
    assert!(
        scopes
            .allows(ResourceType::Observation, Permission::Create)
            .is_none()
    );
}

#[test]
fn a_scope_does_not_allow_other_types() {
    let scopes = set("patient/Observation.rs");
    assert!(
        scopes
            .allows(ResourceType::Condition, Permission::Read)
            .is_none()
    );
}

#[test]
fn a_star_scope_allows_every_type() {
    let scopes = set("system/*.rs");
    for rt in ResourceType::ALL {
        assert_eq!(scopes.allows(*rt, Permission::Search).system, Grant::All);
    }
}

#[test]
fn each_context_is_answered_on_its_own() {
    let allowed = set(&format!("patient/Observation.rs?{LAB} user/Observation.r"))
        .allows(ResourceType::Observation, Permission::Read);
    assert_eq!(
        allowed.context(Context::Patient),
        &Grant::Filtered(vec![filter(LAB)])
    );
    assert_eq!(allowed.context(Context::User), &Grant::All);
    assert_eq!(allowed.context(Context::System), &Grant::None);
}

#[test]
fn a_filtered_scope_allows_only_its_filter() {
    let allowed = set(&format!("patient/Observation.rs?{LAB}"))
        .allows(ResourceType::Observation, Permission::Search);
    assert_eq!(allowed.patient, Grant::Filtered(vec![filter(LAB)]));
}

#[test]
fn several_filters_for_one_type_are_all_kept_in_order() {
    let allowed = set(
        "patient/Observation.rs?category=laboratory patient/*.s?_tag=shared patient/Observation.s?category=vital-signs",
    )
    .allows(ResourceType::Observation, Permission::Search);
    assert_eq!(
        allowed.patient,
        Grant::Filtered(vec![
            filter("category=laboratory"),
            filter("_tag=shared"),
            filter("category=vital-signs"),
        ])
    );
}

#[test]
fn a_filter_granted_twice_is_listed_once() {
    let allowed =
        set("patient/Observation.r?category=laboratory patient/Observation.rs?category=laboratory")
            .allows(ResourceType::Observation, Permission::Read);
    assert_eq!(
        allowed.patient,
        Grant::Filtered(vec![filter("category=laboratory")])
    );
}

#[test]
fn one_unfiltered_scope_makes_the_grant_all() {
    let allowed = set(&format!("patient/Observation.rs?{LAB} patient/*.r"))
        .allows(ResourceType::Observation, Permission::Read);
    assert_eq!(allowed.patient, Grant::All);
}

#[test]
fn a_filtered_scope_without_the_permission_does_not_count() {
    let allowed = set("patient/Observation.r patient/Observation.s?category=laboratory")
        .allows(ResourceType::Observation, Permission::Read);
    assert_eq!(allowed.patient, Grant::All);
}

#[test]
fn v1_read_allows_search_but_not_write() {
    let scopes = set("patient/Observation.read");
    assert_eq!(
        scopes
            .allows(ResourceType::Observation, Permission::Search)
            .patient,
        Grant::All
    );
    assert!(
        scopes
            .allows(ResourceType::Observation, Permission::Update)
            .is_none()
    );
}

#[test]
fn an_empty_set_allows_nothing() {
    assert!(
        ScopeSet::parse("")
            .allows(ResourceType::Patient, Permission::Read)
            .is_none()
    );
}

// covers and within.

fn covers(limit: &str, scope: &str) -> bool {
    set(limit).covers(&Scope::parse(scope))
}

#[test]
fn narrower_permissions_are_covered() {
    assert!(covers(
        "patient/Observation.cruds",
        "patient/Observation.rs"
    ));
}

#[test]
fn wider_permissions_are_not_covered() {
    assert!(!covers("patient/Observation.rs", "patient/Observation.rsd"));
}

#[test]
fn star_covers_a_named_type() {
    assert!(covers("patient/*.rs", "patient/Observation.r"));
}

#[test]
fn a_named_type_does_not_cover_star() {
    assert!(!covers("patient/Observation.rs", "patient/*.rs"));
}

#[test]
fn a_named_type_does_not_cover_another() {
    assert!(!covers("patient/Observation.rs", "patient/Condition.rs"));
}

#[test]
fn contexts_never_cross() {
    assert!(!covers("user/*.cruds", "patient/Observation.r"));
    assert!(!covers("patient/*.cruds", "user/Observation.r"));
    assert!(!covers("system/*.cruds", "user/Observation.r"));
}

#[test]
fn an_unfiltered_scope_covers_a_filtered_one() {
    assert!(covers(
        "patient/Observation.rs",
        &format!("patient/Observation.rs?{LAB}")
    ));
}

#[test]
fn a_filter_covers_the_same_filter() {
    assert!(covers(
        &format!("patient/Observation.rs?{LAB}"),
        &format!("patient/Observation.r?{LAB}")
    ));
}

#[test]
fn a_filter_does_not_cover_a_different_filter() {
    assert!(!covers(
        "patient/Observation.rs?category=laboratory",
        "patient/Observation.rs?category=vital-signs"
    ));
}

#[test]
fn a_filter_does_not_cover_the_unfiltered_scope() {
    assert!(!covers(
        "patient/Observation.rs?category=laboratory",
        "patient/Observation.rs"
    ));
}

#[test]
fn scopes_together_cover_their_union() {
    assert!(covers(
        "patient/Observation.r patient/Observation.s",
        "patient/Observation.rs"
    ));
}

#[test]
fn v1_read_covers_v2_read_and_search() {
    assert!(covers("patient/Observation.read", "patient/Observation.rs"));
}

#[test]
fn a_non_resource_scope_is_covered_when_present() {
    assert!(covers("openid fhirUser", "fhirUser"));
    assert!(!covers("openid", "offline_access"));
    assert!(covers("__custom.scope", "__custom.scope"));
}

#[test]
fn within_keeps_the_covered_scopes_in_order() {
    let asked =
        set("launch/patient patient/Observation.cruds openid patient/Condition.rs offline_access");
    let registered = set("openid launch/patient patient/*.rs");
    assert_eq!(
        asked.within(&registered).to_string(),
        "launch/patient openid patient/Condition.rs"
    );
}

#[test]
fn within_a_grant_a_narrower_refresh_is_kept_whole() {
    let granted = set("patient/Observation.rs patient/Condition.rs offline_access");
    let asked = set("patient/Observation.r offline_access");
    assert_eq!(asked.within(&granted), asked);
}

// Display and equality.

#[test]
fn v1_scopes_display_as_written() {
    let text = "patient/Observation.read user/*.write system/*.*";
    assert_eq!(set(text).to_string(), text);
}

#[test]
fn v2_scopes_display_as_written() {
    let text = "patient/Observation.rs?category=http%3A%2F%2Fexample.org%7Clab&date=ge2020 user/*.cud system/Encounter.c";
    assert_eq!(set(text).to_string(), text);
}

#[test]
fn a_whole_request_displays_as_written() {
    let text = "launch/patient openid fhirUser offline_access patient/*.rs __profilePhoto.manage patient/Observation.sr";
    assert_eq!(set(text).to_string(), text);
}

#[test]
fn displayed_text_parses_back_to_the_same_set() {
    let scopes = set(&format!(
        "openid patient/Observation.rs?{LAB} user/*.read launch"
    ));
    assert_eq!(ScopeSet::parse(&scopes.to_string()), scopes);
}

#[test]
fn v1_syntax_without_a_v1_word_displays_as_v2() {
    let scope = ResourceScope {
        context: Context::Patient,
        resource_type: Some(ResourceType::Observation),
        permissions: perms("r"),
        filter: None,
        syntax: Syntax::V1,
    };
    assert_eq!(scope.to_string(), "patient/Observation.r");
}

#[test]
fn permissions_display_in_cruds_order() {
    let set: Permissions = [Permission::Search, Permission::Create, Permission::Read]
        .into_iter()
        .collect();
    assert_eq!(set.to_string(), "crs");
}

#[test]
fn duplicates_are_removed_keeping_the_first() {
    let scopes = set("openid patient/Observation.rs openid patient/Observation.rs launch");
    assert_eq!(scopes.to_string(), "openid patient/Observation.rs launch");
}

#[test]
fn runs_of_whitespace_separate_like_one_space() {
    assert_eq!(set("  openid \t launch  ").to_string(), "openid launch");
}

#[test]
fn sets_with_the_same_scopes_in_another_order_are_equal() {
    assert_eq!(set("openid launch"), set("launch openid"));
}

#[test]
fn filters_written_differently_are_different() {
    assert_ne!(filter("category=a%7Cb"), filter("category=a|b"));
}

#[test]
fn contains_compares_scopes_as_written() {
    let scopes = set("patient/Observation.read");
    assert!(scopes.contains(&Scope::parse("patient/Observation.read")));
    assert!(!scopes.contains(&Scope::parse("patient/Observation.rs")));
}

#[test]
fn has_context_sees_resource_scopes_only() {
    let scopes = set("launch/patient user/Practitioner.r");
    assert!(scopes.has_context(Context::User));
    assert!(!scopes.has_context(Context::Patient));
}

// Permissions.

#[test]
fn permissions_union_and_superset() {
    let rs = perms("rs");
    let cud = perms("cud");
    assert_eq!(rs.union(cud), Permissions::ALL);
    assert!(Permissions::ALL.is_superset_of(rs));
    assert!(!rs.is_superset_of(Permissions::ALL));
    assert!(rs.contains(Permission::Search));
    assert!(!rs.contains(Permission::Delete));
}

#[test]
fn permissions_iterate_in_cruds_order() {
    let listed: Vec<Permission> = Permissions::V1_WRITE.iter().collect();
    assert_eq!(
        listed,
        [Permission::Create, Permission::Update, Permission::Delete]
    );
}

// describe.

fn describe(text: &str) -> String {
    Scope::parse(text).describe()
}

#[test]
fn a_patient_scope_describes_your_data() {
    assert_eq!(
        describe("patient/Observation.rs"),
        "Read and search your observations"
    );
}

#[test]
fn three_permissions_are_listed_with_commas() {
    assert_eq!(
        describe("patient/AllergyIntolerance.write"),
        "Create, update and delete your allergy intolerances"
    );
}

#[test]
fn a_user_scope_describes_what_you_can_access() {
    assert_eq!(
        describe("user/Appointment.r"),
        "Read the appointments you can access"
    );
}

#[test]
fn a_system_scope_describes_all_of_a_type() {
    assert_eq!(describe("system/Encounter.c"), "Create all encounters");
}

#[test]
fn a_star_scope_warns_of_kinds_added_later() {
    assert_eq!(
        describe("patient/*.cruds"),
        "Create, read, update, delete and search all of your data, including kinds added later"
    );
}

#[test]
fn a_filter_is_described_by_its_decoded_conditions() {
    assert_eq!(
        describe("patient/Observation.rs?category=laboratory&code=http%3A%2F%2Floinc.org%7C1234-5"),
        "Read and search your observations that match category=laboratory and code=http://loinc.org|1234-5"
    );
}

#[test]
fn an_unknown_scope_says_it_grants_nothing() {
    assert!(describe("patient/Observation.sr").contains("grants nothing"));
}
