//! SQL for a parsed search, the same text for SQLite and PostgreSQL.
//!
//! Every filter becomes a condition on a resource's `rid` (or `id`), most of them
//! `rid IN (SELECT rid FROM search_x WHERE resource_type = … AND param = … AND value …)`, so each
//! can be answered from one index and the database is free to start from the most selective
//! one. Chains and `_has` nest the same shape through `search_reference`. Paging is keyset:
//! rows come ordered by the sort keys and `rid`, and a page starts after the last row of the
//! one before, so rows written meanwhile never shift a page.

use fhir_models::ResourceType;
use fhir_models::search::{SearchParamType, SearchParameterDef};

use super::query::{Cursor, Filter, Modifier, Prefix, SearchNumber, SearchQuery, SearchValue};
use crate::store::{Cell, Kind};

/// SQL text with its values; placeholders are `$1, $2, …` in order of appearance.
#[derive(Debug, Default, Clone)]
pub struct Sql {
    pub text: String,
    pub binds: Vec<Cell>,
}

impl Sql {
    fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    fn bind(&mut self, value: Cell) -> &mut Self {
        self.binds.push(value);
        let n = self.binds.len();
        self.text.push_str(&format!("${n}"));
        self
    }

    fn text(&mut self, value: &str) -> &mut Self {
        self.bind(Cell::Text(value.to_owned()))
    }

    fn int(&mut self, value: i64) -> &mut Self {
        self.bind(Cell::Int(value))
    }

    fn real(&mut self, value: f64) -> &mut Self {
        self.bind(Cell::Real(value))
    }
}

/// The end of a prefix range: every text that starts with `prefix` is below `prefix` + this.
const ABOVE_ALL: char = '\u{10FFFF}';

/// The columns of a found resource, before its sort keys.
pub const ROW_COLUMNS: [Kind; 8] = [
    Kind::Int,
    Kind::Int,
    Kind::Text,
    Kind::Text,
    Kind::Int,
    Kind::Int,
    Kind::Text,
    Kind::Blob,
];
const SELECT_ROW: &str =
    "r.rid, v.seq, v.resource_type, v.id, v.version_id, v.last_updated, v.method, v.body";

/// The sort key values of the resource `rid` (where a cursor points), and their kinds.
pub fn sort_keys_of(query: &SearchQuery, rid: i64) -> (Sql, Vec<Kind>) {
    let mut sql = Sql::default();
    sql.push("SELECT ");
    for (i, key) in query.sort.iter().enumerate() {
        if i > 0 {
            sql.push(", ");
        }
        sort_expression(&mut sql, key.def, &key.code, key.descending);
    }
    sql.push(" FROM resources r WHERE r.rid = ").int(rid);
    let kinds = query
        .sort
        .iter()
        .map(|key| sort_kind(key.def, &key.code))
        .collect();
    (sql, kinds)
}

/// The query of one page (`count + 1` rows, to know whether there is another), and the kinds
/// of its sort key columns. `cursor_keys` are the sort key values of the cursor's resource.
pub fn page(query: &SearchQuery, cursor_keys: &[Cell]) -> (Sql, Vec<Kind>) {
    let mut sql = Sql::default();
    let keys: Vec<(Kind, bool)> = query
        .sort
        .iter()
        .map(|key| (sort_kind(key.def, &key.code), key.descending))
        .collect();
    let backwards = query.cursor.as_ref().is_some_and(|c| c.backwards);
    if keys.is_empty() {
        sql.push("SELECT ")
            .push(SELECT_ROW)
            .push(" FROM resources r JOIN resource_versions v ON v.seq = r.seq WHERE ");
        matches(&mut sql, query);
        if let Some(cursor) = &query.cursor {
            sql.push(if backwards {
                " AND r.rid < "
            } else {
                " AND r.rid > "
            })
            .int(cursor.rid);
        }
        sql.push(if backwards {
            " ORDER BY r.rid DESC"
        } else {
            " ORDER BY r.rid"
        });
    } else {
        // Sort keys are computed in a subquery so the keyset condition can name them.
        sql.push("SELECT * FROM (SELECT ").push(SELECT_ROW);
        for (i, key) in query.sort.iter().enumerate() {
            sql.push(", ");
            sort_expression(&mut sql, key.def, &key.code, key.descending);
            sql.push(&format!(" AS k{i}"));
        }
        sql.push(" FROM resources r JOIN resource_versions v ON v.seq = r.seq WHERE ");
        matches(&mut sql, query);
        sql.push(") page");
        if let Some(cursor) = &query.cursor {
            sql.push(" WHERE ");
            keyset(&mut sql, &keys, cursor, cursor_keys);
        }
        sql.push(" ORDER BY ");
        for (i, (_, descending)) in keys.iter().enumerate() {
            let descending = *descending != backwards;
            sql.push(&format!("k{i}{}, ", if descending { " DESC" } else { "" }));
        }
        sql.push(if backwards { "rid DESC" } else { "rid" });
    }
    sql.push(" LIMIT ").int(i64::from(query.count) + 1);
    (sql, keys.into_iter().map(|(kind, _)| kind).collect())
}

/// How many resources match.
pub fn count(query: &SearchQuery) -> Sql {
    let mut sql = Sql::default();
    sql.push("SELECT COUNT(*) FROM resources r WHERE ");
    matches(&mut sql, query);
    sql
}

/// `(k0, k1, …, rid) > (v0, v1, …, rid)` with each key's direction, as an OR of prefixes.
fn keyset(sql: &mut Sql, keys: &[(Kind, bool)], cursor: &Cursor, values: &[Cell]) {
    sql.push("(");
    for i in 0..=keys.len() {
        if i > 0 {
            sql.push(" OR ");
        }
        sql.push("(");
        for j in 0..i {
            sql.push(&format!("k{j} = "));
            sql.bind(values.get(j).cloned().unwrap_or(Cell::Null));
            sql.push(" AND ");
        }
        if i == keys.len() {
            sql.push(if cursor.backwards { "rid < " } else { "rid > " })
                .int(cursor.rid);
        } else {
            let (_, descending) = &keys[i];
            let greater = *descending == cursor.backwards;
            sql.push(&format!("k{i} {} ", if greater { ">" } else { "<" }));
            sql.bind(values.get(i).cloned().unwrap_or(Cell::Null));
        }
        sql.push(")");
    }
    sql.push(")");
}

/// The kind of a sort key's values.
fn sort_kind(def: Option<&SearchParameterDef>, code: &str) -> Kind {
    match def.map(|d| d.kind) {
        None if code == "_id" => Kind::Text,
        None => Kind::Int,
        Some(SearchParamType::Date) => Kind::Int,
        Some(SearchParamType::Number | SearchParamType::Quantity) => Kind::Real,
        Some(_) => Kind::Text,
    }
}

/// A sort key's expression on `r`. A resource without a value sorts last either way.
fn sort_expression(sql: &mut Sql, def: Option<&SearchParameterDef>, code: &str, descending: bool) {
    let Some(def) = def else {
        sql.push(if code == "_id" {
            "r.id"
        } else {
            "r.last_updated"
        });
        return;
    };
    let aggregate = if descending { "MAX" } else { "MIN" };
    let (table, column, kind) = match def.kind {
        SearchParamType::String => ("search_string", "normalized", Kind::Text),
        SearchParamType::Date => (
            "search_date",
            if descending { "high" } else { "low" },
            Kind::Int,
        ),
        SearchParamType::Token => ("search_token", "code", Kind::Text),
        SearchParamType::Number => ("search_number", "low", Kind::Real),
        SearchParamType::Quantity => ("search_quantity", "low", Kind::Real),
        SearchParamType::Uri => ("search_uri", "uri", Kind::Text),
        SearchParamType::Reference | SearchParamType::Special => {
            ("search_reference", "target_id", Kind::Text)
        }
    };
    sql.push(&format!(
        "COALESCE((SELECT {aggregate}(x.{column}) FROM {table} x WHERE x.rid = r.rid AND x.param = "
    ));
    sql.text(def.code).push("), ");
    match (kind, descending) {
        (Kind::Int, false) => sql.int(i64::MAX),
        (Kind::Int, true) => sql.int(i64::MIN),
        (Kind::Real, false) => sql.real(f64::MAX),
        (Kind::Real, true) => sql.real(f64::MIN),
        (_, false) => sql.text(&ABOVE_ALL.to_string()),
        (_, true) => sql.text(""),
    };
    sql.push(")");
}

/// The condition every match meets: live, of a searched type, passing every filter.
fn matches(sql: &mut Sql, query: &SearchQuery) {
    sql.push("NOT r.deleted AND r.resource_type IN (");
    for (i, rt) in query.types.iter().enumerate() {
        if i > 0 {
            sql.push(", ");
        }
        sql.text(rt.as_str());
    }
    sql.push(")");
    let single = (query.types.len() == 1).then(|| query.types[0]);
    for filter in &query.filters {
        sql.push(" AND ");
        filter_condition(sql, "r", single, filter);
    }
}

/// `AND x.resource_type = $n` when the search is on one type (which lets the index narrow).
fn type_condition(sql: &mut Sql, alias: &str, rt: Option<ResourceType>) {
    if let Some(rt) = rt {
        sql.push(&format!(" AND {alias}.resource_type = "))
            .text(rt.as_str());
    }
}

fn table_of(kind: SearchParamType) -> &'static str {
    match kind {
        SearchParamType::Token => "search_token",
        SearchParamType::String => "search_string",
        SearchParamType::Date => "search_date",
        SearchParamType::Reference => "search_reference",
        SearchParamType::Number => "search_number",
        SearchParamType::Quantity => "search_quantity",
        SearchParamType::Uri => "search_uri",
        SearchParamType::Special => "search_position",
    }
}

/// A condition on the resource `alias` (a row of `resources`) of type `rt`.
fn filter_condition(sql: &mut Sql, alias: &str, rt: Option<ResourceType>, filter: &Filter) {
    match filter {
        Filter::Id(ids) => {
            sql.push(&format!("{alias}.id IN ("));
            for (i, id) in ids.iter().enumerate() {
                if i > 0 {
                    sql.push(", ");
                }
                sql.text(id);
            }
            sql.push(")");
        }
        Filter::LastUpdated(values) => {
            sql.push("(");
            for (i, value) in values.iter().enumerate() {
                if i > 0 {
                    sql.push(" OR ");
                }
                if let SearchValue::Date(prefix, range) = value {
                    let column = format!("{alias}.last_updated");
                    date_condition(sql, &column, &column, *prefix, range.low, range.high);
                }
            }
            sql.push(")");
        }
        Filter::Missing { def, missing } => {
            sql.push(&format!(
                "{alias}.rid {}IN (SELECT x.rid FROM {} x WHERE x.param = ",
                if *missing { "NOT " } else { "" },
                table_of(def.kind)
            ));
            sql.text(def.code);
            type_condition(sql, "x", rt);
            sql.push(")");
        }
        Filter::Param {
            def,
            modifier,
            values,
        } => {
            let negate = *modifier == Modifier::Not;
            let (table, param) = match (def.kind, modifier) {
                (SearchParamType::Token, Modifier::OfType) => {
                    ("search_token", format!("{}:of-type", def.code))
                }
                (SearchParamType::Reference, Modifier::Identifier) => {
                    ("search_token", format!("{}:identifier", def.code))
                }
                (kind, _) => (table_of(kind), def.code.to_owned()),
            };
            sql.push(&format!(
                "{alias}.rid {}IN (SELECT x.rid FROM {table} x WHERE x.param = ",
                if negate { "NOT " } else { "" }
            ));
            sql.text(&param);
            type_condition(sql, "x", rt);
            sql.push(" AND (");
            for (i, value) in values.iter().enumerate() {
                if i > 0 {
                    sql.push(" OR ");
                }
                value_condition(sql, *modifier, value);
            }
            sql.push("))");
        }
        Filter::Chain { def, targets } => {
            sql.push(&format!(
                "{alias}.rid IN (SELECT x.rid FROM search_reference x WHERE x.param = "
            ));
            sql.text(def.code);
            type_condition(sql, "x", rt);
            sql.push(" AND (");
            let inner = format!("{alias}c");
            for (i, (target, filter)) in targets.iter().enumerate() {
                if i > 0 {
                    sql.push(" OR ");
                }
                sql.push("(x.target_type = ").text(target.as_str());
                sql.push(&format!(
                    " AND x.target_id IN (SELECT {inner}.id FROM resources {inner} \
                     WHERE {inner}.resource_type = "
                ));
                sql.text(target.as_str());
                sql.push(&format!(" AND NOT {inner}.deleted AND "));
                filter_condition(sql, &inner, Some(*target), filter);
                sql.push("))");
            }
            sql.push("))");
        }
        Filter::Has {
            source,
            param,
            filter,
        } => {
            let inner = format!("{alias}h");
            sql.push(&format!(
                "{alias}.id IN (SELECT y.target_id FROM search_reference y WHERE y.resource_type = "
            ));
            sql.text(source.as_str());
            sql.push(" AND y.param = ").text(param.code);
            if let Some(rt) = rt {
                sql.push(" AND y.target_type = ").text(rt.as_str());
            }
            sql.push(&format!(
                " AND y.rid IN (SELECT {inner}.rid FROM resources {inner} WHERE {inner}.resource_type = "
            ));
            sql.text(source.as_str());
            sql.push(&format!(" AND NOT {inner}.deleted AND "));
            filter_condition(sql, &inner, Some(*source), filter);
            sql.push("))");
        }
    }
}

/// A condition on the index row `x` for one value.
fn value_condition(sql: &mut Sql, modifier: Modifier, value: &SearchValue) {
    match value {
        SearchValue::Token { system, code } => {
            sql.push("(");
            match (system.as_deref(), code) {
                (Some(""), Some(code)) => {
                    sql.push("x.system IS NULL AND x.code = ").text(code);
                }
                (Some(system), Some(code)) => {
                    sql.push("x.code = ").text(code);
                    sql.push(" AND x.system = ").text(system);
                }
                (Some(system), None) => {
                    sql.push("x.system = ").text(system);
                }
                (None, Some(code)) => {
                    sql.push("x.code = ").text(code);
                }
                (None, None) => {
                    sql.push("1 = 0");
                }
            }
            sql.push(")");
        }
        SearchValue::String(text) => match modifier {
            Modifier::Exact => {
                sql.push("x.exact = ").text(text);
            }
            Modifier::Contains => {
                let pattern = format!(
                    "%{}%",
                    text.replace('\\', "\\\\")
                        .replace('%', "\\%")
                        .replace('_', "\\_")
                );
                sql.push("x.normalized LIKE ")
                    .text(&pattern)
                    .push(" ESCAPE '\\'");
            }
            Modifier::Text => {
                sql.push("(x.text >= ").text(text);
                sql.push(" AND x.text < ")
                    .text(&format!("{text}{ABOVE_ALL}"));
                sql.push(")");
            }
            _ => {
                sql.push("(x.normalized >= ").text(text);
                sql.push(" AND x.normalized < ")
                    .text(&format!("{text}{ABOVE_ALL}"));
                sql.push(")");
            }
        },
        SearchValue::Date(prefix, range) => {
            date_condition(sql, "x.low", "x.high", *prefix, range.low, range.high);
        }
        SearchValue::Number(prefix, number) => number_condition(sql, *prefix, number),
        SearchValue::Quantity {
            prefix,
            number,
            system,
            code,
        } => {
            sql.push("(");
            number_condition(sql, *prefix, number);
            if let Some(system) = system {
                sql.push(" AND x.system = ").text(system);
            }
            if let Some(code) = code {
                sql.push(" AND x.code = ").text(code);
            }
            sql.push(")");
        }
        SearchValue::Reference {
            target_type,
            id,
            url,
        } => {
            sql.push("(");
            match (target_type, id, url) {
                (_, _, Some(url)) => {
                    sql.push("x.url = ").text(url);
                }
                (Some(ty), Some(id), None) => {
                    sql.push("x.target_id = ").text(id);
                    sql.push(" AND x.target_type = ").text(ty.as_str());
                }
                (None, Some(id), None) => {
                    sql.push("x.target_id = ").text(id);
                }
                _ => {
                    sql.push("1 = 0");
                }
            }
            sql.push(")");
        }
        SearchValue::Uri(uri) => match modifier {
            Modifier::Below => {
                sql.push("(x.uri >= ").text(uri);
                sql.push(" AND x.uri < ").text(&format!("{uri}{ABOVE_ALL}"));
                sql.push(")");
            }
            Modifier::Above => {
                sql.push("substr(CAST(").text(uri);
                sql.push(" AS TEXT), 1, length(x.uri)) = x.uri");
            }
            _ => {
                sql.push("x.uri = ").text(uri);
            }
        },
        SearchValue::Near {
            latitude,
            longitude,
            km,
        } => {
            // An equirectangular distance: exact enough at the distances a clinic finder
            // asks for, and plain arithmetic on both databases.
            const KM_PER_DEGREE: f64 = 111.195;
            let radius = km / KM_PER_DEGREE;
            let scale = latitude.to_radians().cos();
            sql.push("(x.latitude BETWEEN ").real(latitude - radius);
            sql.push(" AND ").real(latitude + radius);
            sql.push(" AND (x.latitude - ").real(*latitude);
            sql.push(") * (x.latitude - ").real(*latitude);
            sql.push(") + ((x.longitude - ").real(*longitude);
            sql.push(") * ").real(scale);
            sql.push(") * ((x.longitude - ").real(*longitude);
            sql.push(") * ").real(scale);
            sql.push(") <= ").real(radius * radius);
            sql.push(")");
        }
    }
}

/// A date prefix (http://hl7.org/fhir/R4/search.html#prefix) on a target range
/// `[low, high]` against the search range `[search_low, search_high]`.
fn date_condition(
    sql: &mut Sql,
    low: &str,
    high: &str,
    prefix: Prefix,
    search_low: i64,
    search_high: i64,
) {
    let within = |sql: &mut Sql| {
        sql.push(&format!("({low} >= ")).int(search_low);
        sql.push(&format!(" AND {high} <= ")).int(search_high);
        sql.push(")");
    };
    match prefix {
        Prefix::Eq => within(sql),
        Prefix::Ne => {
            sql.push("NOT ");
            within(sql);
        }
        Prefix::Gt => {
            sql.push(&format!("{high} > ")).int(search_high);
        }
        Prefix::Lt => {
            sql.push(&format!("{low} < ")).int(search_low);
        }
        Prefix::Ge => {
            sql.push(&format!("({high} > ")).int(search_high);
            sql.push(" OR ");
            within(sql);
            sql.push(")");
        }
        Prefix::Le => {
            sql.push(&format!("({low} < ")).int(search_low);
            sql.push(" OR ");
            within(sql);
            sql.push(")");
        }
        Prefix::Sa => {
            sql.push(&format!("{low} > ")).int(search_high);
        }
        Prefix::Eb => {
            sql.push(&format!("{high} < ")).int(search_low);
        }
        Prefix::Ap => {
            // Approximately: the ranges overlap once the search range is widened by a tenth
            // of its distance from now (at least a day).
            let now = crate::store::Micros::now().0;
            let gap = (now - search_low).abs().max((now - search_high).abs()) / 10;
            let slack = gap.max(86_400_000_000);
            sql.push(&format!("({low} <= "))
                .int(search_high.saturating_add(slack));
            sql.push(&format!(" AND {high} >= "))
                .int(search_low.saturating_sub(slack));
            sql.push(")");
        }
    }
}

/// A number prefix on the target range `[x.low, x.high]`; `eq` uses the search value's
/// precision (`5.4` matches 5.35 ≤ v < 5.45), the others its value.
fn number_condition(sql: &mut Sql, prefix: Prefix, number: &SearchNumber) {
    let within = |sql: &mut Sql| {
        sql.push("(x.low >= ").real(number.low);
        sql.push(" AND x.high < ").real(number.high);
        sql.push(")");
    };
    match prefix {
        Prefix::Eq => within(sql),
        Prefix::Ne => {
            sql.push("NOT ");
            within(sql);
        }
        Prefix::Gt => {
            sql.push("x.high > ").real(number.value);
        }
        Prefix::Lt => {
            sql.push("x.low < ").real(number.value);
        }
        Prefix::Ge => {
            sql.push("x.high >= ").real(number.value);
        }
        Prefix::Le => {
            sql.push("x.low <= ").real(number.value);
        }
        Prefix::Sa => {
            sql.push("x.low > ").real(number.value);
        }
        Prefix::Eb => {
            sql.push("x.high < ").real(number.value);
        }
        Prefix::Ap => {
            let slack = number.value.abs() / 10.0;
            sql.push("(x.low <= ").real(number.value + slack);
            sql.push(" AND x.high >= ").real(number.value - slack);
            sql.push(")");
        }
    }
}

/// The references from the resources `rids` through `include` (`_include`): target type and id.
pub fn include_targets(rids: &[i64], param: Option<&str>, target: Option<ResourceType>) -> Sql {
    let mut sql = Sql::default();
    sql.push("SELECT DISTINCT x.target_type, x.target_id FROM search_reference x WHERE x.rid IN (");
    for (i, rid) in rids.iter().enumerate() {
        if i > 0 {
            sql.push(", ");
        }
        sql.int(*rid);
    }
    sql.push(") AND x.target_id IS NOT NULL AND x.target_type IS NOT NULL");
    if let Some(param) = param {
        sql.push(" AND x.param = ").text(param);
    }
    if let Some(target) = target {
        sql.push(" AND x.target_type = ").text(target.as_str());
    }
    sql
}

/// The live resources named by `(type, id)` pairs.
pub fn resources_by_id(targets: &[(String, String)]) -> Sql {
    let mut sql = Sql::default();
    sql.push("SELECT ").push(SELECT_ROW).push(
        " FROM resources r JOIN resource_versions v ON v.seq = r.seq WHERE NOT r.deleted AND (",
    );
    for (i, (rt, id)) in targets.iter().enumerate() {
        if i > 0 {
            sql.push(" OR ");
        }
        sql.push("(r.resource_type = ").text(rt);
        sql.push(" AND r.id = ").text(id);
        sql.push(")");
    }
    sql.push(")");
    sql
}

/// The live resources that refer to any of `targets` (`_revinclude`).
pub fn referring(
    targets: &[(ResourceType, String)],
    source: Option<ResourceType>,
    param: Option<&str>,
) -> Sql {
    let mut sql = Sql::default();
    sql.push("SELECT ").push(SELECT_ROW).push(
        " FROM resources r JOIN resource_versions v ON v.seq = r.seq WHERE NOT r.deleted \
         AND r.rid IN (SELECT x.rid FROM search_reference x WHERE (",
    );
    for (i, (rt, id)) in targets.iter().enumerate() {
        if i > 0 {
            sql.push(" OR ");
        }
        sql.push("(x.target_id = ").text(id);
        sql.push(" AND x.target_type = ").text(rt.as_str());
        sql.push(")");
    }
    sql.push(")");
    if let Some(source) = source {
        sql.push(" AND x.resource_type = ").text(source.as_str());
    }
    if let Some(param) = param {
        sql.push(" AND x.param = ").text(param);
    }
    sql.push(")");
    sql
}
