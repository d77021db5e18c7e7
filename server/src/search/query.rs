//! A search request, parsed: which resources match (filters), in which order, how many per
//! page, and what else to include. Everything a client can get wrong is found here and answered
//! with a 400 that names the parameter; parameters this server does not know are ignored with a
//! warning, or refused under `Prefer: handling=strict`.

use std::str::FromStr;

use fhir_models::ResourceType;
use fhir_models::search::{SearchParamType, SearchParameterDef, search_parameter};

use super::dates::{DateRange, parse_date_range};
use super::normalize;
use crate::error::{FhirError, Issue, Severity};

/// The comparison a prefix asks for (http://hl7.org/fhir/R4/search.html#prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
    Ap,
}

impl Prefix {
    /// Splits a prefix off a date, number or quantity value. A value that starts with two
    /// letters that are not a prefix is an error.
    fn split(value: &str) -> Result<(Self, &str), String> {
        let prefixes = [
            ("eq", Self::Eq),
            ("ne", Self::Ne),
            ("gt", Self::Gt),
            ("lt", Self::Lt),
            ("ge", Self::Ge),
            ("le", Self::Le),
            ("sa", Self::Sa),
            ("eb", Self::Eb),
            ("ap", Self::Ap),
        ];
        for (text, prefix) in prefixes {
            if let Some(rest) = value.strip_prefix(text) {
                return Ok((prefix, rest));
            }
        }
        if value.starts_with(|c: char| c.is_ascii_alphabetic()) {
            return Err(format!(
                "{value:?} starts with an unknown prefix; use eq, ne, gt, lt, ge, le, sa, eb or ap"
            ));
        }
        Ok((Self::Eq, value))
    }
}

/// A number as searched: its value and the range its precision implies (`5.4` is [5.35, 5.45)).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SearchNumber {
    pub value: f64,
    pub low: f64,
    pub high: f64,
}

fn parse_number(text: &str) -> Result<SearchNumber, String> {
    let value: f64 = text
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && !text.is_empty())
        .ok_or_else(|| format!("{text:?} is not a number"))?;
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(at) => (&text[..at], text[at + 1..].parse::<i32>().unwrap_or(0)),
        None => (text, 0),
    };
    let decimals = mantissa.split_once('.').map_or(0, |(_, fraction)| {
        i32::try_from(fraction.len()).unwrap_or(0)
    });
    let half = 0.5 * 10f64.powi(exponent - decimals);
    Ok(SearchNumber {
        value,
        low: value - half,
        high: value + half,
    })
}

/// One value of a parameter; a comma-separated list gives several, any of which may match.
#[derive(Debug, Clone, PartialEq)]
pub enum SearchValue {
    /// `system|code`, `|code` (no system: `system` is `Some("")`), `system|`, `code`.
    Token {
        system: Option<String>,
        code: Option<String>,
    },
    /// Normalised for the default and `:contains` searches, as sent for `:exact`.
    String(String),
    Date(Prefix, DateRange),
    Number(Prefix, SearchNumber),
    Quantity {
        prefix: Prefix,
        number: SearchNumber,
        system: Option<String>,
        code: Option<String>,
    },
    /// A local reference (`Patient/1`, `1` with the type left open) or a URL.
    Reference {
        target_type: Option<ResourceType>,
        id: Option<String>,
        url: Option<String>,
    },
    Uri(String),
    /// `near`: latitude, longitude, distance in km.
    Near {
        latitude: f64,
        longitude: f64,
        km: f64,
    },
    /// All of these, on one index row: the values of a parameter's repeats that
    /// `join_one_row_conditions` joined.
    AllOf(Vec<SearchValue>),
}

/// How a value is compared, from the parameter's modifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Modifier {
    None,
    Exact,
    Contains,
    Text,
    Not,
    OfType,
    Identifier,
    Below,
    Above,
    /// `subject:Patient=1`: a reference to this type.
    Type(ResourceType),
}

/// One condition on the resources of a type; a search's filters all hold (AND).
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// `_id`: any of these ids.
    Id(Vec<String>),
    /// `_lastUpdated`: any of these.
    LastUpdated(Vec<SearchValue>),
    /// A parameter of the type with any of `values`.
    Param {
        def: &'static SearchParameterDef,
        modifier: Modifier,
        values: Vec<SearchValue>,
    },
    /// `param:missing=true|false`.
    Missing {
        def: &'static SearchParameterDef,
        missing: bool,
    },
    /// `param[:Type].rest`: a reference to a resource that matches `filter`, of one of
    /// `targets`, each with its own form of the chained filter.
    Chain {
        def: &'static SearchParameterDef,
        targets: Vec<(ResourceType, Filter)>,
    },
    /// `_has:Type:param:rest`: some `source` resource referring through `param` matches.
    Has {
        source: ResourceType,
        param: &'static SearchParameterDef,
        filter: Box<Filter>,
    },
    /// Any one of these groups holds, each group being filters that all hold (OR of ANDs). Never
    /// produced by parsing a client's query: the server adds it to narrow a search.
    Any(Vec<Vec<Filter>>),
}

/// One key of `_sort`.
#[derive(Debug, Clone, PartialEq)]
pub struct SortKey {
    /// `None` for `_id` and `_lastUpdated`, which are columns.
    pub def: Option<&'static SearchParameterDef>,
    pub code: String,
    pub descending: bool,
}

/// `_include` or `_revinclude`: `Source:param[:Target]`, or `*`.
#[derive(Debug, Clone, PartialEq)]
pub struct Include {
    pub source: Option<ResourceType>,
    /// `None` for `*`: every reference parameter.
    pub param: Option<&'static SearchParameterDef>,
    pub target: Option<ResourceType>,
    pub iterate: bool,
}

/// What `_total` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Total {
    /// Given when it costs nothing (a first page that holds every match).
    Cheap,
    Accurate,
    None,
}

/// Where a page starts: after (or, going back, before) the resource `rid` in the search's
/// order. The cursor names only the resource; its sort key values are looked up when the page
/// is read, so a paging link never carries data from a resource (names, dates) in its URL.
/// A page in the order of a value also names the resource's version it found, whose value
/// marks the place even after the resource changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub backwards: bool,
    pub rid: i64,
    pub version: Option<i64>,
}

impl Cursor {
    /// The `_cursor` value: `n123` (after 123) or `p123` (before 123), with `v4` after it for
    /// version 4.
    pub fn encode(self) -> String {
        let direction = if self.backwards { 'p' } else { 'n' };
        match self.version {
            Some(version) => format!("{direction}{}v{version}", self.rid),
            None => format!("{direction}{}", self.rid),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SearchQuery {
    /// The types searched: one for a type search, those of `_type` (or all) for a system search.
    pub types: Vec<ResourceType>,
    pub filters: Vec<Filter>,
    pub sort: Vec<SortKey>,
    pub count: u32,
    pub total: Total,
    pub includes: Vec<Include>,
    pub revincludes: Vec<Include>,
    pub cursor: Option<Cursor>,
    /// The parameters as they define the result set, for the `self` and paging links.
    pub canonical: Vec<(String, String)>,
    /// Parameters ignored, as warnings for the Bundle.
    pub warnings: Vec<Issue>,
}

impl SearchQuery {
    /// Narrows the search to the resources that match any one of `groups`, each group being
    /// filters that all hold (see [`parse_filters`] to build them): how the server limits what
    /// a client may find, such as the compartment of the patient a token is for. Called after
    /// parsing and before [`super::execute`] runs the query; every page of the search must be
    /// narrowed again, as the paging links do not carry it. An empty list of groups matches
    /// nothing.
    pub fn narrow(&mut self, groups: Vec<Vec<Filter>>) {
        self.filters.push(Filter::Any(groups));
    }
}

/// Parameters that shape the response rather than select resources; read elsewhere.
const RESULT_PARAMETERS: [&str; 4] = ["_format", "_pretty", "_summary", "_elements"];

pub struct Limits {
    pub default_count: u32,
    pub max_count: u32,
}

fn bad(name: &str, problem: impl std::fmt::Display) -> FhirError {
    FhirError::BadRequest(vec![
        Issue::error("invalid", format!("search parameter {name}: {problem}")).at(name),
    ])
}

/// Parses the query of a search on `types` (one type, or several for a system search).
pub fn parse(
    types: Vec<ResourceType>,
    pairs: &[(String, String)],
    strict: bool,
    fhir_base: &str,
    limits: &Limits,
) -> Result<SearchQuery, FhirError> {
    let mut query = SearchQuery {
        types,
        filters: Vec::new(),
        sort: Vec::new(),
        count: limits.default_count,
        total: Total::Cheap,
        includes: Vec::new(),
        revincludes: Vec::new(),
        cursor: None,
        canonical: Vec::new(),
        warnings: Vec::new(),
    };
    let single = (query.types.len() == 1).then(|| query.types[0]);
    for (name, value) in pairs {
        let name = name.as_str();
        if RESULT_PARAMETERS.contains(&name) || name == "_type" {
            continue;
        }
        match name {
            "_count" => {
                let count: u32 = value
                    .parse()
                    .map_err(|_| bad(name, "must be a whole number"))?;
                query.count = count.min(limits.max_count);
                continue;
            }
            "_total" => {
                query.total = match value.as_str() {
                    "accurate" => Total::Accurate,
                    "none" => Total::None,
                    "estimate" => Total::Cheap,
                    _ => return Err(bad(name, "must be none, estimate or accurate")),
                };
                continue;
            }
            "_cursor" => {
                query.cursor = Some(
                    parse_cursor(value)
                        .ok_or_else(|| bad(name, "is not a cursor this server gave"))?,
                );
                continue;
            }
            "_sort" => {
                for key in value.split(',').filter(|k| !k.is_empty()) {
                    let (descending, code) = match key.strip_prefix('-') {
                        Some(code) => (true, code),
                        None => (false, key),
                    };
                    let def = match code {
                        "_id" | "_lastUpdated" => None,
                        _ => Some(
                            single
                                .and_then(|rt| search_parameter(rt, code))
                                .filter(|def| def.kind != SearchParamType::Special)
                                .ok_or_else(|| bad(name, format!("cannot sort by {code:?}")))?,
                        ),
                    };
                    query.sort.push(SortKey {
                        def,
                        code: code.to_owned(),
                        descending,
                    });
                }
                query.canonical.push((name.to_owned(), value.clone()));
                continue;
            }
            _ => {}
        }
        let (base, modifier) = name
            .split_once(':')
            .map_or((name, None), |(b, m)| (b, Some(m)));
        if base == "_include" || base == "_revinclude" {
            let iterate = match modifier {
                None => false,
                Some("iterate" | "recurse") => true,
                Some(other) => return Err(bad(name, format!("unknown modifier :{other}"))),
            };
            let include = parse_include(value, iterate).map_err(|e| bad(name, e))?;
            if base == "_include" {
                query.includes.push(include);
            } else {
                query.revincludes.push(include);
            }
            query.canonical.push((name.to_owned(), value.clone()));
            continue;
        }
        let filter = if base == "_has" {
            Some(parse_has(single, name, value, fhir_base)?)
        } else {
            parse_filter(&query.types, name, value, fhir_base)?
        };
        match filter {
            Some(filter) => {
                query.filters.push(filter);
                query.canonical.push((name.to_owned(), value.clone()));
            }
            None if strict => {
                return Err(FhirError::BadRequest(vec![
                    Issue::error(
                        "not-supported",
                        format!(
                            "search parameter {name} is not supported (Prefer: handling=strict)"
                        ),
                    )
                    .at(name),
                ]));
            }
            None => query.warnings.push(Issue {
                severity: Severity::Warning,
                code: "not-supported",
                diagnostics: format!("search parameter {name} is not supported and was ignored"),
                expression: Some(name.to_owned()),
            }),
        }
    }
    if query.types.len() == 1 {
        join_one_row_conditions(&mut query.filters);
    }
    Ok(query)
}

/// Joins the repeats of a parameter a resource has at most one index row of
/// ([`SearchParameterDef::one_row`]), each with one value and no modifier, into one filter whose
/// value holds them all: `Appointment?date=ge2025-03-01&date=lt2025-04-01` is tested on the
/// one row of each appointment's start, with one probe, rather than a probe for each bound. On
/// one row, "some row meets each" and "one row meets all" are the same. The filters are those of
/// one type, whose parameters are its own.
fn join_one_row_conditions(filters: &mut Vec<Filter>) {
    let joinable = |filter: &Filter| match filter {
        Filter::Param {
            def,
            modifier: Modifier::None,
            values,
        } if def.one_row && values.len() == 1 => Some(def.code),
        _ => None,
    };
    let mut i = 0;
    while i < filters.len() {
        let Some(code) = joinable(&filters[i]) else {
            i += 1;
            continue;
        };
        let mut joined = Vec::new();
        let mut j = i + 1;
        while j < filters.len() {
            if joinable(&filters[j]) == Some(code) {
                if let Filter::Param { values, .. } = filters.remove(j) {
                    joined.extend(values);
                }
            } else {
                j += 1;
            }
        }
        if !joined.is_empty()
            && let Filter::Param { values, .. } = &mut filters[i]
        {
            values.extend(joined);
            *values = vec![SearchValue::AllOf(std::mem::take(values))];
        }
        i += 1;
    }
}

/// The filters of `name=value` pairs on resources of `types`, all of which must hold: one group
/// of a [`SearchQuery::narrow`]. Only parameters that select resources are taken, and an
/// unknown one is an error rather than ignored, so that a narrowing never silently widens.
pub fn parse_filters(
    types: &[ResourceType],
    pairs: &[(String, String)],
    fhir_base: &str,
) -> Result<Vec<Filter>, FhirError> {
    let single = (types.len() == 1).then(|| types[0]);
    let mut filters = Vec::with_capacity(pairs.len());
    for (name, value) in pairs {
        let filter = if name.starts_with("_has:") {
            Some(parse_has(single, name, value, fhir_base)?)
        } else {
            parse_filter(types, name, value, fhir_base)?
        };
        filters.push(filter.ok_or_else(|| {
            bad(
                name,
                "is not a search parameter that selects resources of these types",
            )
        })?);
    }
    Ok(filters)
}

fn parse_cursor(value: &str) -> Option<Cursor> {
    let (direction, rest) = value.split_at_checked(1)?;
    let backwards = match direction {
        "n" => false,
        "p" => true,
        _ => return None,
    };
    let (rid, version) = match rest.split_once('v') {
        Some((rid, version)) => (rid, Some(version.parse().ok()?)),
        None => (rest, None),
    };
    Some(Cursor {
        backwards,
        rid: rid.parse().ok()?,
        version,
    })
}

fn parse_include(value: &str, iterate: bool) -> Result<Include, String> {
    if value == "*" {
        return Ok(Include {
            source: None,
            param: None,
            target: None,
            iterate,
        });
    }
    let mut parts = value.split(':');
    let source_name = parts.next().unwrap_or_default();
    let source = ResourceType::from_str(source_name)
        .map_err(|_| format!("{source_name:?} is not a resource type"))?;
    let param = match parts.next() {
        Some("*") | None => None,
        Some(code) => Some(
            search_parameter(source, code)
                .filter(|def| def.kind == SearchParamType::Reference)
                .ok_or_else(|| format!("{source} has no reference parameter {code:?}"))?,
        ),
    };
    let target = parts
        .next()
        .map(|t| ResourceType::from_str(t).map_err(|_| format!("{t:?} is not a resource type")))
        .transpose()?;
    Ok(Include {
        source: Some(source),
        param,
        target,
        iterate,
    })
}

/// `_has:Source:param:rest=value`.
fn parse_has(
    single: Option<ResourceType>,
    name: &str,
    value: &str,
    fhir_base: &str,
) -> Result<Filter, FhirError> {
    let Some(target) = single else {
        return Err(bad(name, "_has needs a search on one resource type"));
    };
    let mut parts = name.splitn(4, ':');
    parts.next();
    let (Some(source), Some(param), Some(rest)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad(name, "is _has:Type:reference-parameter:parameter"));
    };
    let source = ResourceType::from_str(source)
        .map_err(|_| bad(name, format!("{source:?} is not a resource type")))?;
    let param = search_parameter(source, param)
        .filter(|def| def.kind == SearchParamType::Reference)
        .ok_or_else(|| {
            bad(
                name,
                format!("{source} has no reference parameter {param:?}"),
            )
        })?;
    if !param.targets.is_empty() && !param.targets.contains(&target) {
        return Err(bad(
            name,
            format!("{source}.{} cannot refer to a {target}", param.code),
        ));
    }
    let filter = if rest.starts_with("_has:") {
        parse_has(Some(source), rest, value, fhir_base)?
    } else {
        parse_filter(&[source], rest, value, fhir_base)?
            .ok_or_else(|| bad(name, format!("{source} has no search parameter {rest:?}")))?
    };
    Ok(Filter::Has {
        source,
        param,
        filter: Box::new(filter),
    })
}

/// One `name=value` pair on `types`; `None` when the parameter is unknown.
fn parse_filter(
    types: &[ResourceType],
    name: &str,
    value: &str,
    fhir_base: &str,
) -> Result<Option<Filter>, FhirError> {
    // A chain: `subject:Patient.name`, `subject.name`.
    let (head, chained) = match name.split_once('.') {
        Some((head, rest)) => (head, Some(rest)),
        None => (name, None),
    };
    let (code, modifier) = head
        .split_once(':')
        .map_or((head, None), |(c, m)| (c, Some(m)));
    if code == "_id" || code == "_lastUpdated" {
        if chained.is_some() {
            return Err(bad(name, "cannot be chained"));
        }
        return match (code, modifier) {
            ("_id", None) => Ok(Some(Filter::Id(
                split_values(value).map(str::to_owned).collect(),
            ))),
            ("_lastUpdated", None) => {
                let values = split_values(value)
                    .map(|v| parse_date_value(v).map_err(|e| bad(name, e)))
                    .collect::<Result<_, _>>()?;
                Ok(Some(Filter::LastUpdated(values)))
            }
            (_, Some(other)) => Err(bad(name, format!("unknown modifier :{other}"))),
            _ => Ok(None),
        };
    }
    // A system search only takes parameters every one of its types has.
    let Some(def) = types
        .first()
        .and_then(|rt| search_parameter(*rt, code))
        .filter(|def| {
            types
                .iter()
                .all(|rt| search_parameter(*rt, code).is_some_and(|d| d.kind == def.kind))
        })
    else {
        return Ok(None);
    };
    if let Some(rest) = chained {
        if def.kind != SearchParamType::Reference {
            return Err(bad(
                name,
                format!("{code} is not a reference parameter and cannot be chained"),
            ));
        }
        let candidates: Vec<ResourceType> = match modifier {
            Some(ty) => vec![
                ResourceType::from_str(ty)
                    .map_err(|_| bad(name, format!("{ty:?} is not a resource type")))?,
            ],
            None => def.targets.to_vec(),
        };
        let mut targets = Vec::new();
        for target in candidates {
            if let Some(filter) = parse_filter(&[target], rest, value, fhir_base)? {
                targets.push((target, filter));
            }
        }
        if targets.is_empty() {
            return Err(bad(
                name,
                format!("no target of {code} has a search parameter {rest:?}"),
            ));
        }
        return Ok(Some(Filter::Chain { def, targets }));
    }
    let modifier = match modifier {
        Some("missing") => {
            let missing = match value {
                "true" => true,
                "false" => false,
                _ => return Err(bad(name, "must be true or false")),
            };
            return Ok(Some(Filter::Missing { def, missing }));
        }
        None => Modifier::None,
        Some(text) => parse_modifier(def, text).ok_or_else(|| {
            bad(
                name,
                format!(
                    "the modifier :{text} does not apply to a {} parameter",
                    def.kind.as_str()
                ),
            )
        })?,
    };
    let values = split_values(value)
        .map(|v| parse_value(def, modifier, v, fhir_base).map_err(|e| bad(name, e)))
        .collect::<Result<Vec<_>, _>>()?;
    if values.is_empty() {
        return Err(bad(name, "has no value"));
    }
    Ok(Some(Filter::Param {
        def,
        modifier,
        values,
    }))
}

fn parse_modifier(def: &SearchParameterDef, text: &str) -> Option<Modifier> {
    use SearchParamType as T;
    Some(match (def.kind, text) {
        (T::String, "exact") => Modifier::Exact,
        (T::String, "contains") => Modifier::Contains,
        (T::Token, "text") => Modifier::Text,
        (T::Token, "not") => Modifier::Not,
        (T::Token, "of-type") if def.code == "identifier" => Modifier::OfType,
        (T::Reference, "identifier") => Modifier::Identifier,
        (T::Uri, "below") => Modifier::Below,
        (T::Uri, "above") => Modifier::Above,
        (T::Reference, ty) => {
            // `subject:Patient=1` is `subject=Patient/1`; handled as a type, not a modifier.
            let ty = ResourceType::from_str(ty).ok()?;
            if !def.targets.is_empty() && !def.targets.contains(&ty) {
                return None;
            }
            Modifier::Type(ty)
        }
        _ => return None,
    })
}

/// Splits a value at commas that are not escaped (`\,`).
fn split_values(value: &str) -> impl Iterator<Item = &str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let bytes = value.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b',' && (i == 0 || bytes[i - 1] != b'\\') {
            parts.push(&value[start..i]);
            start = i + 1;
        }
    }
    parts.push(&value[start..]);
    parts.into_iter().filter(|p| !p.is_empty())
}

/// Removes the escapes of `,`, `|`, `$` and `\`, and cuts the value as index rows are cut.
fn unescape(value: &str) -> String {
    let text = value
        .replace("\\,", ",")
        .replace("\\|", "|")
        .replace("\\$", "$")
        .replace("\\\\", "\\");
    super::indexed(&text).to_owned()
}

/// Splits `a|b` at the first unescaped `|`.
fn split_pipe(value: &str) -> Option<(&str, &str)> {
    let bytes = value.as_bytes();
    (0..bytes.len())
        .find(|&i| bytes[i] == b'|' && (i == 0 || bytes[i - 1] != b'\\'))
        .map(|i| (&value[..i], &value[i + 1..]))
}

fn parse_date_value(value: &str) -> Result<SearchValue, String> {
    let (prefix, rest) = Prefix::split(value)?;
    let range = parse_date_range(rest).map_err(|e| format!("{rest:?} is not a date: {e}"))?;
    Ok(SearchValue::Date(prefix, range))
}

fn parse_value(
    def: &SearchParameterDef,
    modifier: Modifier,
    value: &str,
    fhir_base: &str,
) -> Result<SearchValue, String> {
    Ok(match def.kind {
        SearchParamType::Token => {
            if modifier == Modifier::Text {
                return Ok(SearchValue::String(normalize(&unescape(value))));
            }
            if modifier == Modifier::OfType {
                // `type-system|type-code|value`.
                let mut parts = value.splitn(3, '|');
                let (Some(system), Some(code), Some(id)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    return Err("of-type takes system|code|value".to_owned());
                };
                return Ok(SearchValue::Token {
                    system: Some(format!("{system}|{code}")),
                    code: Some(unescape(id)),
                });
            }
            token(value)
        }
        SearchParamType::String => SearchValue::String(match modifier {
            Modifier::Exact => unescape(value),
            _ => normalize(&unescape(value)),
        }),
        SearchParamType::Date => parse_date_value(value)?,
        SearchParamType::Number => {
            let (prefix, rest) = Prefix::split(value)?;
            SearchValue::Number(prefix, parse_number(rest)?)
        }
        SearchParamType::Quantity => {
            let (prefix, rest) = Prefix::split(value)?;
            let mut parts = rest.splitn(3, '|');
            let number = parse_number(parts.next().unwrap_or_default())?;
            let system = parts.next().filter(|s| !s.is_empty()).map(unescape);
            let code = parts.next().filter(|s| !s.is_empty()).map(unescape);
            SearchValue::Quantity {
                prefix,
                number,
                system,
                code,
            }
        }
        SearchParamType::Reference => {
            if modifier == Modifier::Identifier {
                return Ok(token(value));
            }
            match (modifier, reference(value, fhir_base)) {
                (
                    Modifier::Type(ty),
                    SearchValue::Reference {
                        target_type: None,
                        id: Some(id),
                        url: None,
                    },
                ) => SearchValue::Reference {
                    target_type: Some(ty),
                    id: Some(id),
                    url: None,
                },
                (
                    Modifier::Type(ty),
                    SearchValue::Reference {
                        target_type: Some(found),
                        ..
                    },
                ) if found != ty => {
                    return Err(format!("the modifier :{ty} does not agree with {value:?}"));
                }
                (_, parsed) => parsed,
            }
        }
        SearchParamType::Uri => SearchValue::Uri(unescape(value)),
        SearchParamType::Special => {
            // near=latitude|longitude|distance|unit (http://hl7.org/fhir/R4/location.html#positional)
            let mut parts = value.split('|');
            let latitude = parts.next().and_then(|v| v.parse::<f64>().ok());
            let longitude = parts.next().and_then(|v| v.parse::<f64>().ok());
            let (Some(latitude), Some(longitude)) = (latitude, longitude) else {
                return Err("near is latitude|longitude|distance|unit".to_owned());
            };
            let distance = match parts.next() {
                Some(d) if !d.is_empty() => d
                    .parse::<f64>()
                    .map_err(|_| format!("{d:?} is not a distance"))?,
                _ => 50.0,
            };
            let km = match parts.next().unwrap_or("km") {
                "km" | "" => distance,
                "m" => distance / 1000.0,
                "mi" | "[mi_i]" => distance * 1.609_344,
                unit => return Err(format!("unknown distance unit {unit:?}; use km, m or mi")),
            };
            SearchValue::Near {
                latitude,
                longitude,
                km,
            }
        }
    })
}

fn token(value: &str) -> SearchValue {
    match split_pipe(value) {
        Some((system, code)) => SearchValue::Token {
            system: Some(unescape(system)),
            code: (!code.is_empty()).then(|| unescape(code)),
        },
        None => SearchValue::Token {
            system: None,
            code: Some(unescape(value)),
        },
    }
}

fn reference(value: &str, fhir_base: &str) -> SearchValue {
    let local = value
        .strip_prefix(fhir_base)
        .and_then(|rest| rest.strip_prefix('/'))
        .or_else(|| (!value.contains(':')).then_some(value));
    match local {
        Some(local) => match super::fhirpath::parse_reference(local) {
            Some((ty, id)) => SearchValue::Reference {
                target_type: ResourceType::from_str(ty).ok(),
                id: Some(id.to_owned()),
                url: None,
            },
            None => SearchValue::Reference {
                target_type: None,
                id: Some(local.to_owned()),
                url: None,
            },
        },
        None => SearchValue::Reference {
            target_type: None,
            id: None,
            url: Some(super::indexed(value).to_owned()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filters_of(rt: ResourceType, query: &str) -> Vec<Filter> {
        let pairs: Vec<(String, String)> = query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let limits = Limits {
            default_count: 50,
            max_count: 1000,
        };
        parse(vec![rt], &pairs, false, "http://h/fhir", &limits)
            .expect("a valid query")
            .filters
    }

    /// The number of values each filter holds, with a `+` for values joined on one row.
    fn shape(filters: &[Filter]) -> Vec<String> {
        filters
            .iter()
            .map(|filter| match filter {
                Filter::Param { values, .. } => match values.as_slice() {
                    [SearchValue::AllOf(all)] => format!("+{}", all.len()),
                    values => values.len().to_string(),
                },
                _ => "other".to_owned(),
            })
            .collect()
    }

    #[test]
    fn the_repeats_of_a_one_row_parameter_are_joined_and_no_others() {
        use ResourceType::{Appointment, Encounter, Observation};
        let cases: [(ResourceType, &str, &[&str]); 8] = [
            (
                Appointment,
                "practitioner=Practitioner/p&date=ge2025-03-01&date=lt2025-04-01",
                &["1", "+2"],
            ),
            (Encounter, "date=ge2025&date=le2026&date=ne2025-06", &["+3"]),
            // One repeat, nothing to join.
            (Appointment, "date=ge2025-03-01", &["1"]),
            // A comma is an OR within one repeat: kept apart.
            (Appointment, "date=lt2025,gt2026&date=ge2020", &["2", "1"]),
            // A modifier keeps its own test.
            (
                Appointment,
                "date:missing=false&date=ge2025",
                &["other", "1"],
            ),
            // Several rows a resource (a Timing's events): each repeat may hold on its own row.
            (
                Observation,
                "date=ge2024-01-01&date=lt2024-02-01",
                &["1", "1"],
            ),
            (Appointment, "status=booked&status=arrived", &["1", "1"]),
            (
                Appointment,
                "date=ge2025&status=booked&date=lt2026",
                &["+2", "1"],
            ),
        ];
        for (rt, query, expected) in cases {
            assert_eq!(shape(&filters_of(rt, query)), expected, "{rt} {query}");
        }
    }

    #[test]
    fn numbers_carry_their_precision() {
        let n = parse_number("5.4").expect("number");
        assert!((n.low - 5.35).abs() < 1e-9 && (n.high - 5.45).abs() < 1e-9);
        let n = parse_number("100").expect("number");
        assert!((n.low - 99.5).abs() < 1e-9);
        assert!(parse_number("abc").is_err());
    }

    #[test]
    fn prefixes_split_and_bad_ones_are_refused() {
        assert_eq!(
            Prefix::split("ge2024").expect("prefix"),
            (Prefix::Ge, "2024")
        );
        assert_eq!(
            Prefix::split("2024").expect("no prefix"),
            (Prefix::Eq, "2024")
        );
        assert!(Prefix::split("xx2024").is_err());
    }

    #[test]
    fn a_cursor_reads_back_as_it_was_written_and_nothing_else_reads() {
        for cursor in [
            Cursor {
                backwards: false,
                rid: 12,
                version: None,
            },
            Cursor {
                backwards: true,
                rid: 7,
                version: Some(3),
            },
        ] {
            assert_eq!(parse_cursor(&cursor.encode()), Some(cursor));
        }
        for bad in ["", "n", "x12", "n12v", "n12vx", "nv3", "p-", "n1.5"] {
            assert_eq!(parse_cursor(bad), None, "{bad}");
        }
    }

    #[test]
    fn commas_split_values_unless_escaped() {
        assert_eq!(split_values("a,b\\,c").collect::<Vec<_>>(), ["a", "b\\,c"]);
    }
}
