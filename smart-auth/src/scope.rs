//! SMART App Launch 2.2 scopes: what a token asked for, was granted, and therefore may do
//! (<https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html>).
//!
//! A `scope` string is parsed once per token into a [`ScopeSet`]; the FHIR server then asks it
//! [`ScopeSet::allows`] on every request, and the authorization server uses
//! [`ScopeSet::within`] to keep a request inside what a client is registered for or a refresh
//! inside what was granted. Parsing never fails: a token that is not a scope this module knows
//! (a typo, `.sr` out of order, an unknown resource type, an extension scope) is kept verbatim as
//! [`Scope::Other`] and grants nothing, because a token request with unknown scopes is not an
//! error, it just grants less.
//!
//! Pure: no I/O, no clock.

use std::fmt;
use std::sync::Arc;

use fhir_models::ResourceType;

/// Whose data a resource scope reaches: the `patient/`, `user/` or `system/` prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Context {
    /// `patient/`: the data of the patient in context, and nothing else.
    Patient,
    /// `user/`: the data the signed-in user may reach.
    User,
    /// `system/`: the data a client is allowed without a user (SMART Backend Services).
    System,
}

impl Context {
    /// The three contexts, in the order `Allowed` lists them.
    pub const ALL: [Context; 3] = [Context::Patient, Context::User, Context::System];

    /// The prefix as written, without its slash: `patient`, `user` or `system`.
    pub fn as_str(self) -> &'static str {
        match self {
            Context::Patient => "patient",
            Context::User => "user",
            Context::System => "system",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "patient" => Some(Context::Patient),
            "user" => Some(Context::User),
            "system" => Some(Context::System),
            _ => None,
        }
    }
}

impl fmt::Display for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One of the five SMART v2 permissions, each a group of FHIR interactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Permission {
    /// `c`: type-level create.
    Create,
    /// `r`: read, vread and instance history.
    Read,
    /// `u`: update (including update-as-create) and patch.
    Update,
    /// `d`: delete.
    Delete,
    /// `s`: type- and system-level search and history.
    Search,
}

impl Permission {
    /// The five permissions in `cruds` order.
    pub const ALL: [Permission; 5] = [
        Permission::Create,
        Permission::Read,
        Permission::Update,
        Permission::Delete,
        Permission::Search,
    ];

    /// The letter of this permission in a v2 scope (`c`, `r`, `u`, `d` or `s`).
    pub fn letter(self) -> char {
        match self {
            Permission::Create => 'c',
            Permission::Read => 'r',
            Permission::Update => 'u',
            Permission::Delete => 'd',
            Permission::Search => 's',
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Permission::Create => "create",
            Permission::Read => "read",
            Permission::Update => "update",
            Permission::Delete => "delete",
            Permission::Search => "search",
        }
    }

    const fn bit(self) -> u8 {
        1 << self as u8
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.letter())
    }
}

/// A set of [`Permission`]s. Displays as its letters in `cruds` order (`rs`, `cud`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Permissions(u8);

impl Permissions {
    /// No permission at all.
    pub const NONE: Permissions = Permissions(0);
    /// All five: v2 `cruds`, v1 `*`.
    pub const ALL: Permissions = Permissions(0b1_1111);
    /// What v1 `read` means in v2: `rs`.
    pub const V1_READ: Permissions = Permissions(Permission::Read.bit() | Permission::Search.bit());
    /// What v1 `write` means in v2: `cud`.
    pub const V1_WRITE: Permissions =
        Permissions(Permission::Create.bit() | Permission::Update.bit() | Permission::Delete.bit());

    /// Whether `permission` is in the set.
    pub fn contains(self, permission: Permission) -> bool {
        self.0 & permission.bit() != 0
    }

    /// The permissions in either set.
    #[must_use]
    pub fn union(self, other: Permissions) -> Permissions {
        Permissions(self.0 | other.0)
    }

    /// Whether every permission of `other` is also in `self`.
    pub fn is_superset_of(self, other: Permissions) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The permissions in the set, in `cruds` order.
    pub fn iter(self) -> impl Iterator<Item = Permission> {
        Permission::ALL
            .into_iter()
            .filter(move |p| self.contains(*p))
    }

    /// A v2 suffix: a non-empty subset of `cruds`, each letter once, in that order. `sr`, `rr`
    /// and `dus` are not in the grammar; the spec lets a server ignore them, so they are `None`
    /// rather than being read leniently (that is how `.read` could turn into `.rd`).
    fn parse_v2(text: &str) -> Option<Permissions> {
        let mut rest = Permission::ALL.as_slice();
        let mut set = Permissions::NONE;
        for letter in text.chars() {
            let at = rest.iter().position(|p| p.letter() == letter)?;
            set = set.union(rest[at].into());
            rest = &rest[at + 1..];
        }
        (!set.is_empty()).then_some(set)
    }

    fn parse_v1(text: &str) -> Option<Permissions> {
        match text {
            "read" => Some(Permissions::V1_READ),
            "write" => Some(Permissions::V1_WRITE),
            "*" => Some(Permissions::ALL),
            _ => None,
        }
    }

    /// The v1 word for this set, if it has one.
    fn v1_word(self) -> Option<&'static str> {
        match self {
            Permissions::V1_READ => Some("read"),
            Permissions::V1_WRITE => Some("write"),
            Permissions::ALL => Some("*"),
            _ => None,
        }
    }
}

impl From<Permission> for Permissions {
    fn from(permission: Permission) -> Self {
        Permissions(permission.bit())
    }
}

impl FromIterator<Permission> for Permissions {
    fn from_iter<I: IntoIterator<Item = Permission>>(iter: I) -> Self {
        iter.into_iter()
            .fold(Permissions::NONE, |set, p| set.union(p.into()))
    }
}

impl fmt::Display for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.iter().try_for_each(|p| write!(f, "{p}"))
    }
}

/// The query of a v2 scope, the part after `?`: `category=http://…|laboratory` in
/// `patient/Observation.rs?category=http://…|laboratory`.
///
/// It keeps the text as written, which is what it displays and what equality compares (two
/// filters are the same filter only when written the same way), and its name/value pairs decoded
/// as a URL query is (`%7C` is `|`, `+` is a space), ready for the search engine. A resource is
/// within a filter when the FHIR search made of these pairs would return it. The enforcement must
/// refuse, not skip, a pair it cannot apply: skipping one would widen the grant. Cheap to clone.
#[derive(Clone)]
pub struct Filter(Arc<FilterInner>);

struct FilterInner {
    text: Box<str>,
    pairs: Box<[(String, String)]>,
}

impl Filter {
    /// Reads `name=value(&name=value)*`; `None` when a pair is empty or lacks its name, its `=`
    /// or its value. An empty value is refused because FHIR search ignores such a parameter, so
    /// `?category=` would silently grant every resource of the type.
    pub fn parse(text: &str) -> Option<Filter> {
        let well_formed = text.split('&').all(|pair| {
            pair.split_once('=')
                .is_some_and(|(name, value)| !name.is_empty() && !value.is_empty())
        });
        if !well_formed {
            return None;
        }
        let pairs = form_urlencoded::parse(text.as_bytes())
            .map(|(name, value)| (name.into_owned(), value.into_owned()))
            .collect();
        Some(Filter(Arc::new(FilterInner {
            text: text.into(),
            pairs,
        })))
    }

    /// The query as written, without the `?`.
    pub fn as_str(&self) -> &str {
        &self.0.text
    }

    /// The decoded name/value pairs, in the order written.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.0.pairs
    }
}

impl PartialEq for Filter {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Filter {}

impl std::hash::Hash for Filter {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl fmt::Debug for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Filter").field(&self.as_str()).finish()
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a resource scope was written, so that it is given back the way it was asked for (the
/// spec: servers SHOULD return v1 scopes when v1 scopes are requested and granted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Syntax {
    /// SMART 1.0: `read`, `write` or `*` after the dot.
    V1,
    /// SMART 2.x: letters of `cruds`, and perhaps a query.
    #[default]
    V2,
}

/// A scope on FHIR resources: `(patient|user|system)/(ResourceType|*).(permissions)[?query]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResourceScope {
    /// Whose data it reaches.
    pub context: Context,
    /// The resource type, or `None` for `*` (every type, including those a later server adds).
    pub resource_type: Option<ResourceType>,
    /// What it allows. A hand-built scope with no permission grants nothing.
    pub permissions: Permissions,
    /// The v2 query that narrows it to some resources of the type.
    pub filter: Option<Filter>,
    /// How it displays: v1 is used only when the permissions have a v1 word (`rs`, `cud`,
    /// `cruds`) and there is no filter; otherwise v2.
    pub syntax: Syntax,
}

impl ResourceScope {
    /// Reads one resource scope; `None` when it is not one (see [`Scope::parse`]).
    pub fn parse(text: &str) -> Option<ResourceScope> {
        let (head, query) = match text.split_once('?') {
            Some((head, query)) => (head, Some(query)),
            None => (text, None),
        };
        let (context, rest) = head.split_once('/')?;
        let context = Context::parse(context)?;
        let (resource_type, permissions) = rest.split_once('.')?;
        let resource_type = match resource_type {
            "*" => None,
            name => Some(name.parse::<ResourceType>().ok()?),
        };
        let (permissions, syntax) = match Permissions::parse_v1(permissions) {
            Some(set) => (set, Syntax::V1),
            None => (Permissions::parse_v2(permissions)?, Syntax::V2),
        };
        let filter = match (query, syntax) {
            (None, _) => None,
            (Some(query), Syntax::V2) => Some(Filter::parse(query)?),
            // The query syntax is SMART 2 only; `.read?…` mixes the two.
            (Some(_), Syntax::V1) => return None,
        };
        Some(ResourceScope {
            context,
            resource_type,
            permissions,
            filter,
            syntax,
        })
    }

    /// Whether it is about resources of type `rt` (it names `rt` or `*`).
    pub fn applies_to(&self, rt: ResourceType) -> bool {
        self.resource_type.is_none_or(|own| own == rt)
    }

    /// One plain-English line for a consent page, e.g. "Read and search your observations".
    pub fn describe(&self) -> String {
        let verbs: Vec<&str> = self.permissions.iter().map(Permission::verb).collect();
        let mut line = match verbs.as_slice() {
            [] => String::from("Nothing on"),
            [only] => (*only).to_owned(),
            [init @ .., last] => format!("{} and {last}", init.join(", ")),
        };
        if let Some(first) = line.get_mut(..1) {
            first.make_ascii_uppercase();
        }
        line.push(' ');
        match (self.context, self.resource_type) {
            (Context::Patient, Some(rt)) => line += &format!("your {}", plural(rt)),
            (Context::User, Some(rt)) => line += &format!("the {} you can access", plural(rt)),
            (Context::System, Some(rt)) => line += &format!("all {}", plural(rt)),
            // The spec asks that a wildcard be explained as reaching data kinds added later too.
            (Context::Patient, None) => line += "all of your data, including kinds added later",
            (Context::User, None) => line += "all data you can access, including kinds added later",
            (Context::System, None) => line += "all data, including kinds added later",
        }
        if let Some(filter) = &self.filter {
            let conditions: Vec<String> = filter
                .pairs()
                .iter()
                .map(|(name, value)| format!("{name}={value}"))
                .collect();
            line += &format!(" that match {}", conditions.join(" and "));
        }
        line
    }
}

impl fmt::Display for ResourceScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/", self.context)?;
        match self.resource_type {
            Some(rt) => f.write_str(rt.as_str())?,
            None => f.write_str("*")?,
        }
        let v1_word = match (self.syntax, &self.filter) {
            (Syntax::V1, None) => self.permissions.v1_word(),
            _ => None,
        };
        match v1_word {
            Some(word) => write!(f, ".{word}")?,
            None => write!(f, ".{}", self.permissions)?,
        }
        if let Some(filter) = &self.filter {
            write!(f, "?{filter}")?;
        }
        Ok(())
    }
}

/// One scope token.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Access to FHIR resources.
    Resource(ResourceScope),
    /// `openid`: authenticate the user (an `id_token`).
    OpenId,
    /// `fhirUser`: the `id_token` names the FHIR resource that is the user.
    FhirUser,
    /// `profile`: the OpenID Connect profile claims.
    Profile,
    /// `launch`: the context of an EHR launch.
    Launch,
    /// `launch/patient`: a patient in context (picked at launch when standalone).
    LaunchPatient,
    /// `launch/encounter`: an encounter in context.
    LaunchEncounter,
    /// `offline_access`: a refresh token that outlives the user's session.
    OfflineAccess,
    /// `online_access`: a refresh token usable while the user stays online.
    OnlineAccess,
    /// Anything else, kept verbatim: malformed scopes, other `launch/…` context requests,
    /// extension scopes. Never grants access to a resource.
    Other(String),
}

impl Scope {
    /// Reads one scope token (no spaces). Never fails: what is not a known scope is
    /// [`Scope::Other`].
    pub fn parse(token: &str) -> Scope {
        match token {
            "openid" => Scope::OpenId,
            "fhirUser" => Scope::FhirUser,
            "profile" => Scope::Profile,
            "launch" => Scope::Launch,
            "launch/patient" => Scope::LaunchPatient,
            "launch/encounter" => Scope::LaunchEncounter,
            "offline_access" => Scope::OfflineAccess,
            "online_access" => Scope::OnlineAccess,
            _ => match ResourceScope::parse(token) {
                Some(scope) => Scope::Resource(scope),
                None => Scope::Other(token.to_owned()),
            },
        }
    }

    /// The resource scope, if it is one.
    pub fn as_resource(&self) -> Option<&ResourceScope> {
        match self {
            Scope::Resource(scope) => Some(scope),
            _ => None,
        }
    }

    /// One plain-English line for a consent page, e.g. "Read and search your observations".
    /// Patient scopes say "your", as the patient is the reader in a standalone patient launch.
    pub fn describe(&self) -> String {
        match self {
            Scope::Resource(scope) => scope.describe(),
            Scope::OpenId => "Confirm who you are".to_owned(),
            Scope::FhirUser => "Know which record in this system is you".to_owned(),
            Scope::Profile => "See your name and basic profile".to_owned(),
            Scope::Launch => "Know the patient and visit open in the EHR when it starts".to_owned(),
            Scope::LaunchPatient => "Know which patient is chosen when it starts".to_owned(),
            Scope::LaunchEncounter => "Know which visit is chosen when it starts".to_owned(),
            Scope::OfflineAccess => {
                "Keep its access when you are not signed in, until you revoke it".to_owned()
            }
            Scope::OnlineAccess => "Keep its access while you stay signed in".to_owned(),
            Scope::Other(text) => {
                format!("\u{201c}{text}\u{201d} (not recognised; grants nothing)")
            }
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Resource(scope) => scope.fmt(f),
            Scope::OpenId => f.write_str("openid"),
            Scope::FhirUser => f.write_str("fhirUser"),
            Scope::Profile => f.write_str("profile"),
            Scope::Launch => f.write_str("launch"),
            Scope::LaunchPatient => f.write_str("launch/patient"),
            Scope::LaunchEncounter => f.write_str("launch/encounter"),
            Scope::OfflineAccess => f.write_str("offline_access"),
            Scope::OnlineAccess => f.write_str("online_access"),
            Scope::Other(text) => f.write_str(text),
        }
    }
}

/// The scopes of a request or a token, in the order first written, without duplicates.
/// Displays space-separated. Two sets are equal when they hold the same scopes, in any order.
#[derive(Debug, Clone, Default)]
pub struct ScopeSet(Vec<Scope>);

impl ScopeSet {
    /// Reads a space-separated `scope` parameter (RFC 6749 §3.3). Never fails; runs of
    /// whitespace are one separator and a repeated scope is kept once.
    pub fn parse(text: &str) -> Self {
        text.split_ascii_whitespace().map(Scope::parse).collect()
    }

    /// The scopes, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Scope> {
        self.0.iter()
    }

    /// The resource scopes, in order.
    pub fn resource_scopes(&self) -> impl Iterator<Item = &ResourceScope> {
        self.0.iter().filter_map(Scope::as_resource)
    }

    /// Whether `scope` is in the set as such. `patient/Observation.read` and
    /// `patient/Observation.rs` are different scopes here; [`ScopeSet::covers`] compares meaning.
    pub fn contains(&self, scope: &Scope) -> bool {
        self.0.contains(scope)
    }

    /// Whether some resource scope is in `context` (a `patient/` scope needs a patient in
    /// context).
    pub fn has_context(&self, context: Context) -> bool {
        self.resource_scopes().any(|s| s.context == context)
    }

    /// What the set allows for `permission` on resources of type `rt`, in each context: the
    /// resource scopes naming `rt` or `*` whose permissions hold `permission`. Scopes add up, so
    /// one without a filter makes the context [`Grant::All`]; otherwise their filters together
    /// make it [`Grant::Filtered`]. Allocates only in that last case.
    pub fn allows(&self, rt: ResourceType, permission: Permission) -> Allowed {
        let matching = || {
            self.resource_scopes()
                .filter(move |s| s.applies_to(rt) && s.permissions.contains(permission))
        };
        // A first pass without allocating answers All and None, the common cases.
        let mut unfiltered = [false; 3];
        let mut filtered = [false; 3];
        for scope in matching() {
            let seen = match scope.filter {
                None => &mut unfiltered,
                Some(_) => &mut filtered,
            };
            seen[scope.context as usize] = true;
        }
        let grant = |context: Context| {
            let at = context as usize;
            if unfiltered[at] {
                return Grant::All;
            }
            if !filtered[at] {
                return Grant::None;
            }
            let mut filters: Vec<Filter> = Vec::new();
            for filter in matching()
                .filter(|s| s.context == context)
                .filter_map(|s| s.filter.as_ref())
            {
                if !filters.contains(filter) {
                    filters.push(filter.clone());
                }
            }
            Grant::Filtered(filters)
        };
        Allowed {
            patient: grant(Context::Patient),
            user: grant(Context::User),
            system: grant(Context::System),
        }
    }

    /// Whether `scope` asks for nothing this set does not already allow.
    ///
    /// A resource scope is covered when the resource scopes of this set in the same context
    /// (contexts never cross), naming its type or `*`, and without a filter or with the very
    /// same filter, hold all its permissions between them: scopes combine as a union, so
    /// `patient/Observation.r patient/Observation.s` covers `patient/Observation.rs`. A scope
    /// without a filter is never covered by filtered ones, nor `*` by named types. Any other
    /// scope is covered when it is in the set.
    pub fn covers(&self, scope: &Scope) -> bool {
        let Scope::Resource(wanted) = scope else {
            return self.contains(scope);
        };
        let held: Permissions = self
            .resource_scopes()
            .filter(|s| {
                s.context == wanted.context
                    && (s.resource_type.is_none() || s.resource_type == wanted.resource_type)
                    && (s.filter.is_none() || s.filter == wanted.filter)
            })
            .fold(Permissions::NONE, |held, s| held.union(s.permissions));
        held.is_superset_of(wanted.permissions)
    }

    /// The scopes of `self` that `limit` covers, in order: a client asking for more than it is
    /// registered for, or a refresh asking for more than was granted, keeps only these.
    #[must_use]
    pub fn within(&self, limit: &ScopeSet) -> ScopeSet {
        ScopeSet(self.0.iter().filter(|s| limit.covers(s)).cloned().collect())
    }

    /// Whether the set holds no scope.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many scopes the set holds.
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl FromIterator<Scope> for ScopeSet {
    /// Keeps the first of each repeated scope.
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        let mut scopes: Vec<Scope> = Vec::new();
        for scope in iter {
            if !scopes.contains(&scope) {
                scopes.push(scope);
            }
        }
        ScopeSet(scopes)
    }
}

impl<'a> IntoIterator for &'a ScopeSet {
    type Item = &'a Scope;
    type IntoIter = std::slice::Iter<'a, Scope>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl PartialEq for ScopeSet {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().all(|s| other.contains(s))
    }
}

impl Eq for ScopeSet {}

impl fmt::Display for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, scope) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{scope}")?;
        }
        Ok(())
    }
}

/// What a [`ScopeSet`] allows for one permission on one resource type, per context. How the
/// contexts combine is the enforcement's business: `patient` reaches only the patient in
/// context's compartment, `user` only what the user may reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    /// Through `patient/` scopes.
    pub patient: Grant,
    /// Through `user/` scopes.
    pub user: Grant,
    /// Through `system/` scopes.
    pub system: Grant,
}

impl Allowed {
    /// Whether no context allows anything.
    pub fn is_none(&self) -> bool {
        Context::ALL.iter().all(|c| self.context(*c).is_none())
    }

    /// The grant in `context`.
    pub fn context(&self, context: Context) -> &Grant {
        match context {
            Context::Patient => &self.patient,
            Context::User => &self.user,
            Context::System => &self.system,
        }
    }
}

/// What one context allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// Nothing.
    None,
    /// Every resource of the type (within the context).
    All,
    /// The resources that match at least one of these filters (each one a FHIR search whose
    /// parameters must all match), never empty, without repeats.
    Filtered(Vec<Filter>),
}

impl Grant {
    /// Whether it allows nothing.
    pub fn is_none(&self) -> bool {
        matches!(self, Grant::None)
    }

    /// Whether it allows every resource of the type.
    pub fn is_all(&self) -> bool {
        matches!(self, Grant::All)
    }
}

/// The plural of a resource type in lowercase words, for a consent page: `AllergyIntolerance`
/// is "allergy intolerances", `EpisodeOfCare` "episodes of care".
fn plural(rt: ResourceType) -> String {
    match rt {
        ResourceType::Patient => return "patient records".to_owned(),
        ResourceType::Person => return "person records".to_owned(),
        ResourceType::Provenance => return "provenance records".to_owned(),
        ResourceType::Basic => return "basic resources".to_owned(),
        ResourceType::Binary => return "binary files".to_owned(),
        ResourceType::MedicinalProductManufactured => {
            return "manufactured medicinal products".to_owned();
        }
        ResourceType::MedicinalProductPackaged => return "packaged medicinal products".to_owned(),
        _ => {}
    }
    let mut words: Vec<String> = Vec::new();
    for c in rt.as_str().chars() {
        if c.is_ascii_uppercase() || words.is_empty() {
            words.push(String::new());
        }
        if let Some(word) = words.last_mut() {
            word.push(c.to_ascii_lowercase());
        }
    }
    // "episode of care": the head noun is the one before "of".
    let head = words
        .iter()
        .position(|w| w == "of")
        .map_or(words.len() - 1, |of| of.saturating_sub(1));
    words[head] = plural_word(&words[head]);
    words.join(" ")
}

fn plural_word(word: &str) -> String {
    const UNCOUNTED: &[&str] = &[
        "evidence",
        "media",
        "knowledge",
        "information",
        "parameters",
        "capabilities",
    ];
    if UNCOUNTED.contains(&word) {
        return word.to_owned();
    }
    if word == "person" {
        return "people".to_owned();
    }
    if let Some(stem) = word.strip_suffix("sis") {
        return format!("{stem}ses");
    }
    if let Some(stem) = word.strip_suffix('y')
        && !stem.ends_with(['a', 'e', 'i', 'o', 'u'])
    {
        return format!("{stem}ies");
    }
    if word.ends_with(['s', 'x']) || word.ends_with("ch") || word.ends_with("sh") {
        return format!("{word}es");
    }
    format!("{word}s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_resource_type_has_a_plural_of_lowercase_words() {
        for rt in ResourceType::ALL {
            let text = plural(*rt);
            assert!(
                text.chars().all(|c| c.is_ascii_lowercase() || c == ' '),
                "{rt:?}: {text}"
            );
        }
    }

    #[test]
    fn plurals_follow_english_spelling() {
        let cases = [
            (ResourceType::Observation, "observations"),
            (ResourceType::AllergyIntolerance, "allergy intolerances"),
            (ResourceType::ImagingStudy, "imaging studies"),
            (ResourceType::EpisodeOfCare, "episodes of care"),
            (
                ResourceType::RiskEvidenceSynthesis,
                "risk evidence syntheses",
            ),
            (ResourceType::RelatedPerson, "related people"),
            (ResourceType::MedicationKnowledge, "medication knowledge"),
        ];
        for (rt, want) in cases {
            assert_eq!(plural(rt), want);
        }
    }
}
