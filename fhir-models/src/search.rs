//! The official R4 search parameters, as data: what the server indexes and what a search may ask.

use crate::ResourceType;

/// The type of a search parameter (http://hl7.org/fhir/R4/search.html#ptypes). Composite
/// parameters are not in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SearchParamType {
    Number,
    Date,
    String,
    Token,
    Reference,
    Quantity,
    Uri,
    /// A parameter with its own rules: `Location.near`.
    Special,
}

impl SearchParamType {
    /// The code of `SearchParamType` in FHIR (`token`, `reference`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Number => "number",
            Self::Date => "date",
            Self::String => "string",
            Self::Token => "token",
            Self::Reference => "reference",
            Self::Quantity => "quantity",
            Self::Uri => "uri",
            Self::Special => "special",
        }
    }
}

/// One search parameter of one resource type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SearchParameterDef {
    /// The name used in a query (`birthdate`, `_tag`).
    pub code: &'static str,
    pub kind: SearchParamType,
    /// The FHIRPath expression that finds the values, only the branches for this type.
    pub expression: &'static str,
    /// For a reference parameter, the types it may point at.
    pub targets: &'static [ResourceType],
    /// The canonical URL of the SearchParameter definition.
    pub url: &'static str,
    /// Whether a resource has at most one value of this parameter, and so at most one index
    /// row: a date parameter on one element of at most one date, dateTime, instant or Period
    /// (`Appointment.start`, `Encounter.period`). Two conditions on such a parameter hold
    /// together exactly when one row meets both.
    pub one_row: bool,
}

/// The parameter `code` of `rt` (its own or a common one such as `_tag`).
pub fn search_parameter(rt: ResourceType, code: &str) -> Option<&'static SearchParameterDef> {
    let own = crate::generated::search_parameters::search_parameters(rt);
    own.iter()
        .chain(crate::generated::search_parameters::COMMON)
        .find(|p| p.code == code)
}
