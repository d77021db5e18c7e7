//! The subset of FHIRPath that the R4 SearchParameter expressions use, evaluated over JSON.
//!
//! Supported: paths (`Patient.name.family`; choice elements by their base name, so
//! `Observation.value` finds `valueQuantity`), `|` unions, parentheses, `[n]` indexers,
//! `as T` / `ofType(T)` on choice elements, `where(resolve() is T)` on references,
//! `where(field = 'literal')`, `exists()`, `and`, `=`, `!=` against literals (the one
//! boolean expression, `Patient.deceased.exists() and Patient.deceased != false`). Anything
//! else is a parse error, which `codegen`'s table is tested against, so no expression of the
//! table is silently skipped.

use serde_json::Value;

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// The resource itself, named by its type (`Patient`, or `Resource` for any).
    Root(String),
    /// A child element; a choice element is found by its name without the type suffix.
    Child(Box<Expr>, String),
    /// `x[n]`.
    Index(Box<Expr>, usize),
    /// `x as T`, `x.as(T)`, `x.ofType(T)`: only the items of type `T`.
    OfType(Box<Expr>, String),
    /// `x.where(resolve() is T)`: only references to a `T`.
    WhereResolvesTo(Box<Expr>, String),
    /// `x.where(field = 'literal')`.
    WhereEquals(Box<Expr>, String, Literal),
    /// `x.exists()`.
    Exists(Box<Expr>),
    Union(Vec<Expr>),
    And(Box<Expr>, Box<Expr>),
    Equals(Box<Expr>, Literal),
    NotEquals(Box<Expr>, Literal),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    String(String),
    Boolean(bool),
}

/// One item an expression found: a JSON value, and the FHIR type a choice element's name gave
/// it (`valueQuantity` → `Quantity`), or a boolean the expression computed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Item<'a> {
    Json {
        value: &'a Value,
        choice_type: Option<&'a str>,
    },
    Boolean(bool),
}

impl<'a> Item<'a> {
    fn json(value: &'a Value) -> Self {
        Self::Json {
            value,
            choice_type: None,
        }
    }
}

pub fn parse(source: &str) -> Result<Expr, String> {
    let tokens = tokenize(source)?;
    let mut parser = Parser { tokens, at: 0 };
    let expr = parser.and()?;
    match parser.peek() {
        None => Ok(expr),
        Some(token) => Err(format!("unexpected {token:?} in {source:?}")),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Str(String),
    Number(usize),
    Symbol(char),
    NotEquals,
}

fn tokenize(source: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut chars = source.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '\'' => {
                let mut text = String::new();
                loop {
                    match chars.next() {
                        Some((_, '\'')) => break,
                        Some((_, c)) => text.push(c),
                        None => return Err(format!("unterminated string in {source:?}")),
                    }
                }
                tokens.push(Token::Str(text));
            }
            '!' if chars.peek().map(|(_, c)| *c) == Some('=') => {
                chars.next();
                tokens.push(Token::NotEquals);
            }
            '.' | '|' | '(' | ')' | '[' | ']' | '=' => tokens.push(Token::Symbol(c)),
            c if c.is_ascii_digit() => {
                let mut end = start + 1;
                while let Some((i, d)) = chars.peek().copied() {
                    if !d.is_ascii_digit() {
                        break;
                    }
                    end = i + 1;
                    chars.next();
                }
                let n = source[start..end]
                    .parse()
                    .map_err(|_| format!("bad number in {source:?}"))?;
                tokens.push(Token::Number(n));
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let mut end = start + 1;
                while let Some((i, d)) = chars.peek().copied() {
                    if !(d.is_ascii_alphanumeric() || d == '_') {
                        break;
                    }
                    end = i + 1;
                    chars.next();
                }
                tokens.push(Token::Ident(source[start..end].to_owned()));
            }
            other => return Err(format!("unexpected {other:?} in {source:?}")),
        }
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.at).cloned();
        self.at += 1;
        token
    }

    fn expect(&mut self, symbol: char) -> Result<(), String> {
        match self.next() {
            Some(Token::Symbol(c)) if c == symbol => Ok(()),
            other => Err(format!("expected {symbol:?}, found {other:?}")),
        }
    }

    fn ident(&mut self) -> Result<String, String> {
        match self.next() {
            Some(Token::Ident(name)) => Ok(name),
            other => Err(format!("expected a name, found {other:?}")),
        }
    }

    fn is_ident(&self, name: &str) -> bool {
        matches!(self.peek(), Some(Token::Ident(n)) if n == name)
    }

    fn and(&mut self) -> Result<Expr, String> {
        let mut left = self.comparison()?;
        while self.is_ident("and") {
            self.at += 1;
            let right = self.comparison()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn comparison(&mut self) -> Result<Expr, String> {
        let left = self.union()?;
        match self.peek() {
            Some(Token::Symbol('=')) => {
                self.at += 1;
                Ok(Expr::Equals(Box::new(left), self.literal()?))
            }
            Some(Token::NotEquals) => {
                self.at += 1;
                Ok(Expr::NotEquals(Box::new(left), self.literal()?))
            }
            _ => Ok(left),
        }
    }

    fn literal(&mut self) -> Result<Literal, String> {
        match self.next() {
            Some(Token::Str(text)) => Ok(Literal::String(text)),
            Some(Token::Ident(word)) if word == "true" => Ok(Literal::Boolean(true)),
            Some(Token::Ident(word)) if word == "false" => Ok(Literal::Boolean(false)),
            other => Err(format!("expected a literal, found {other:?}")),
        }
    }

    fn union(&mut self) -> Result<Expr, String> {
        let mut branches = vec![self.term()?];
        while self.peek() == Some(&Token::Symbol('|')) {
            self.at += 1;
            branches.push(self.term()?);
        }
        Ok(if branches.len() == 1 {
            branches.remove(0)
        } else {
            Expr::Union(branches)
        })
    }

    fn term(&mut self) -> Result<Expr, String> {
        let mut expr = match self.next() {
            Some(Token::Symbol('(')) => {
                let inner = self.and()?;
                self.expect(')')?;
                inner
            }
            Some(Token::Ident(name)) => Expr::Root(name),
            other => return Err(format!("expected a path, found {other:?}")),
        };
        loop {
            match self.peek() {
                Some(Token::Symbol('.')) => {
                    self.at += 1;
                    let name = self.ident()?;
                    if self.peek() == Some(&Token::Symbol('(')) {
                        self.at += 1;
                        expr = self.function(expr, &name)?;
                        self.expect(')')?;
                    } else {
                        expr = Expr::Child(Box::new(expr), name);
                    }
                }
                Some(Token::Symbol('[')) => {
                    self.at += 1;
                    let Some(Token::Number(n)) = self.next() else {
                        return Err("expected an index".to_owned());
                    };
                    self.expect(']')?;
                    expr = Expr::Index(Box::new(expr), n);
                }
                Some(Token::Ident(word)) if word == "as" || word == "ofType" => {
                    self.at += 1;
                    let ty = self.ident()?;
                    expr = Expr::OfType(Box::new(expr), ty);
                }
                _ => return Ok(expr),
            }
        }
    }

    fn function(&mut self, target: Expr, name: &str) -> Result<Expr, String> {
        let target = Box::new(target);
        match name {
            "as" | "ofType" => Ok(Expr::OfType(target, self.ident()?)),
            "exists" => Ok(Expr::Exists(target)),
            "where" => {
                if self.is_ident("resolve") {
                    self.at += 1;
                    self.expect('(')?;
                    self.expect(')')?;
                    if !self.is_ident("is") {
                        return Err("expected `resolve() is Type`".to_owned());
                    }
                    self.at += 1;
                    Ok(Expr::WhereResolvesTo(target, self.ident()?))
                } else {
                    let field = self.ident()?;
                    self.expect('=')?;
                    Ok(Expr::WhereEquals(target, field, self.literal()?))
                }
            }
            other => Err(format!("the function {other}() is not supported")),
        }
    }
}

/// Evaluates `expr` on `resource`.
pub fn evaluate<'a>(expr: &Expr, resource: &'a Value) -> Vec<Item<'a>> {
    let mut out = Vec::new();
    eval(expr, resource, &mut out);
    out
}

fn eval<'a>(expr: &Expr, resource: &'a Value, out: &mut Vec<Item<'a>>) {
    match expr {
        Expr::Root(name) => {
            let matches = name == "Resource"
                || name == "DomainResource"
                || resource.get("resourceType").and_then(Value::as_str) == Some(name);
            if matches {
                out.push(Item::json(resource));
            }
        }
        Expr::Child(parent, name) => {
            for item in evaluate(parent, resource) {
                if let Item::Json { value, .. } = item {
                    child(value, name, out);
                }
            }
        }
        Expr::Index(inner, n) => {
            if let Some(item) = evaluate(inner, resource).into_iter().nth(*n) {
                out.push(item);
            }
        }
        Expr::OfType(inner, ty) => out.extend(
            evaluate(inner, resource)
                .into_iter()
                .filter(|item| is_of_type(item, ty)),
        ),
        Expr::WhereResolvesTo(inner, ty) => {
            out.extend(evaluate(inner, resource).into_iter().filter(|item| {
                matches!(item, Item::Json { value, .. } if reference_type(value) == Some(ty.as_str()))
            }));
        }
        Expr::WhereEquals(inner, field, literal) => {
            out.extend(evaluate(inner, resource).into_iter().filter(|item| {
                matches!(item, Item::Json { value, .. }
                    if value.get(field).is_some_and(|v| literal.equals(v)))
            }));
        }
        Expr::Exists(inner) => out.push(Item::Boolean(!evaluate(inner, resource).is_empty())),
        Expr::Union(branches) => {
            for branch in branches {
                eval(branch, resource, out);
            }
        }
        Expr::And(left, right) => {
            // Three-valued logic: an empty operand is unknown.
            let left = boolean(&evaluate(left, resource));
            let right = boolean(&evaluate(right, resource));
            let result = match (left, right) {
                (Some(false), _) | (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            };
            out.extend(result.map(Item::Boolean));
        }
        Expr::Equals(inner, literal) | Expr::NotEquals(inner, literal) => {
            let items = evaluate(inner, resource);
            if let [Item::Json { value, .. }] = items.as_slice() {
                let equal = literal.equals(value);
                out.push(Item::Boolean(equal == matches!(expr, Expr::Equals(..))));
            }
        }
    }
}

impl Literal {
    fn equals(&self, value: &Value) -> bool {
        match self {
            Self::String(text) => value.as_str() == Some(text),
            Self::Boolean(b) => value.as_bool() == Some(*b),
        }
    }
}

fn boolean(items: &[Item<'_>]) -> Option<bool> {
    match items {
        [Item::Boolean(b)] => Some(*b),
        [Item::Json { value, .. }] => value.as_bool(),
        _ => None,
    }
}

/// The children named `name` of `value`: arrays are flattened, and a choice element
/// (`value[x]`) is found under its typed name (`valueQuantity`).
fn child<'a>(value: &'a Value, name: &str, out: &mut Vec<Item<'a>>) {
    let Some(object) = value.as_object() else {
        return;
    };
    let (found, choice_type) = match object.get(name) {
        Some(found) => (found, None),
        None => {
            let choice = object.iter().find_map(|(key, found)| {
                let suffix = key.strip_prefix(name)?;
                is_type_suffix(suffix).then_some((found, suffix))
            });
            match choice {
                Some((found, suffix)) => (found, Some(suffix)),
                None => return,
            }
        }
    };
    match found {
        Value::Array(items) => {
            out.extend(items.iter().map(|value| Item::Json { value, choice_type }))
        }
        value => out.push(Item::Json { value, choice_type }),
    }
}

/// Whether a key's suffix names a FHIR data type, as in a choice element's JSON name.
fn is_type_suffix(suffix: &str) -> bool {
    DATA_TYPES.contains(&suffix)
}

/// The R4 data types a choice element may take, as they appear in its JSON name.
const DATA_TYPES: &[&str] = &[
    "Base64Binary",
    "Boolean",
    "Canonical",
    "Code",
    "Date",
    "DateTime",
    "Decimal",
    "Id",
    "Instant",
    "Integer",
    "Markdown",
    "Oid",
    "PositiveInt",
    "String",
    "Time",
    "UnsignedInt",
    "Uri",
    "Url",
    "Uuid",
    "Address",
    "Age",
    "Annotation",
    "Attachment",
    "CodeableConcept",
    "Coding",
    "ContactPoint",
    "Count",
    "Distance",
    "Duration",
    "HumanName",
    "Identifier",
    "Money",
    "Period",
    "Quantity",
    "Range",
    "Ratio",
    "Reference",
    "SampledData",
    "Signature",
    "Timing",
    "ContactDetail",
    "Contributor",
    "DataRequirement",
    "Expression",
    "ParameterDefinition",
    "RelatedArtifact",
    "TriggerDefinition",
    "UsageContext",
    "Dosage",
    "Meta",
];

fn is_of_type(item: &Item<'_>, ty: &str) -> bool {
    match item {
        Item::Json {
            choice_type: Some(found),
            ..
        } => {
            // `as dateTime` names the type as FHIR does; the JSON name capitalises it.
            let mut chars = ty.chars();
            chars.next().is_some_and(|first| {
                found.len() == ty.len()
                    && found.starts_with(first.to_ascii_uppercase())
                    && found[1..] == *chars.as_str()
            })
        }
        // Not a choice element: its type is fixed by its definition, which the expressions
        // only ever name correctly.
        Item::Json { .. } => true,
        Item::Boolean(_) => ty.eq_ignore_ascii_case("boolean"),
    }
}

/// The resource type a Reference points at: from `reference` (`Patient/1`,
/// `http://x/fhir/Patient/1/_history/2`), else from `type`.
pub fn reference_type(reference: &Value) -> Option<&str> {
    if let Some(text) = reference.get("reference").and_then(Value::as_str) {
        return parse_reference(text).map(|(ty, _)| ty);
    }
    reference.get("type").and_then(Value::as_str)
}

/// The type and id of a literal reference, relative or absolute, with or without a version.
pub fn parse_reference(text: &str) -> Option<(&str, &str)> {
    let path = text.split(['?', '#']).next()?;
    let mut segments: Vec<&str> = path.split('/').collect();
    if segments.len() >= 4 && segments[segments.len() - 2] == "_history" {
        segments.truncate(segments.len() - 2);
    }
    let [.., ty, id] = segments.as_slice() else {
        return None;
    };
    let is_type = ty.starts_with(|c: char| c.is_ascii_uppercase())
        && ty.chars().all(|c| c.is_ascii_alphanumeric());
    (is_type && !id.is_empty()).then_some((ty, id))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn values<'a>(expression: &str, resource: &'a Value) -> Vec<&'a Value> {
        let expr = parse(expression).expect("parses");
        evaluate(&expr, resource)
            .into_iter()
            .filter_map(|item| match item {
                Item::Json { value, .. } => Some(value),
                Item::Boolean(_) => None,
            })
            .collect()
    }

    #[test]
    fn every_expression_of_the_table_parses() {
        for rt in fhir_models::ResourceType::ALL {
            for parameter in fhir_models::search_parameters(*rt)
                .iter()
                .chain(fhir_models::COMMON_SEARCH_PARAMETERS)
            {
                if let Err(error) = parse(parameter.expression) {
                    panic!("{rt}.{}: {error}", parameter.code);
                }
            }
        }
    }

    #[test]
    fn paths_flatten_arrays() {
        let patient = json!({"resourceType": "Patient",
            "name": [{"given": ["A", "B"]}, {"given": ["C"]}]});
        assert_eq!(values("Patient.name.given", &patient), ["A", "B", "C"]);
    }

    #[test]
    fn a_choice_element_is_found_by_its_base_name_and_filtered_by_as() {
        let observation = json!({"resourceType": "Observation",
            "valueQuantity": {"value": 1}});
        assert_eq!(values("Observation.value", &observation).len(), 1);
        assert_eq!(
            values("(Observation.value as Quantity)", &observation).len(),
            1
        );
        assert!(values("(Observation.value as CodeableConcept)", &observation).is_empty());
        let goal = json!({"resourceType": "Goal", "startDate": "2024-01-01"});
        assert_eq!(values("(Goal.start as date)", &goal), ["2024-01-01"]);
    }

    #[test]
    fn a_key_that_only_starts_with_the_name_is_not_a_choice() {
        let requirement = json!({"resourceType": "Library", "codeFilter": [{}]});
        assert!(values("Library.code", &requirement).is_empty());
    }

    #[test]
    fn where_resolve_is_keeps_references_to_that_type() {
        let encounter = json!({"resourceType": "Encounter",
            "participant": [{"individual": {"reference": "Practitioner/1"}},
                            {"individual": {"reference": "http://x/fhir/RelatedPerson/2/_history/1"}}]});
        let found = values(
            "Encounter.participant.individual.where(resolve() is RelatedPerson)",
            &encounter,
        );
        assert_eq!(found.len(), 1);
        assert_eq!(
            found[0]["reference"],
            "http://x/fhir/RelatedPerson/2/_history/1"
        );
    }

    #[test]
    fn where_equals_filters_on_a_field() {
        let patient = json!({"resourceType": "Patient",
            "telecom": [{"system": "phone", "value": "1"}, {"system": "email", "value": "a@b"}]});
        let found = values("Patient.telecom.where(system='email')", &patient);
        assert_eq!(found, [&json!({"system": "email", "value": "a@b"})]);
    }

    #[test]
    fn the_deceased_expression_gives_a_boolean() {
        let expr =
            parse("Patient.deceased.exists() and Patient.deceased != false").expect("parses");
        let alive = json!({"resourceType": "Patient", "deceasedBoolean": false});
        let dead = json!({"resourceType": "Patient", "deceasedDateTime": "2020-01-01"});
        let unknown = json!({"resourceType": "Patient"});
        assert_eq!(evaluate(&expr, &alive), [Item::Boolean(false)]);
        assert_eq!(evaluate(&expr, &dead), [Item::Boolean(true)]);
        assert_eq!(evaluate(&expr, &unknown), [Item::Boolean(false)]);
    }

    #[test]
    fn indexers_pick_one_item() {
        let bundle = json!({"resourceType": "Bundle", "entry": [
            {"resource": {"resourceType": "Composition"}}, {"resource": {"resourceType": "Patient"}}]});
        assert_eq!(
            values("Bundle.entry[0].resource", &bundle),
            [&json!({"resourceType": "Composition"})]
        );
    }

    #[test]
    fn references_parse_relative_absolute_and_versioned() {
        assert_eq!(parse_reference("Patient/1"), Some(("Patient", "1")));
        assert_eq!(
            parse_reference("https://h/fhir/Patient/1/_history/3"),
            Some(("Patient", "1"))
        );
        assert_eq!(parse_reference("#contained"), None);
        assert_eq!(parse_reference("urn:uuid:1234"), None);
    }
}
