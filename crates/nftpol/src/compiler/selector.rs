//! Label selectors as the compiler matches them: parsed once, with a
//! canonical text that names equal selectors alike (shared sets, shared
//! copies). Objects ([`snapshot`](super::snapshot)) carry labels and
//! implement [`LabelLookup`]; policies ([`policy`](super::policy)) carry
//! selectors; neither needs the other to match.

use std::fmt;
use std::sync::{Arc, LazyLock};

use kube::core::Expression;
use regex::Regex;

/// Label lookup by key, for selectors: namespaces keep a
/// [`Labels`](super::snapshot::Labels) map,
/// pods a [`PodLabels`](super::snapshot::PodLabels).
pub trait LabelLookup {
    fn label(&self, key: &str) -> Option<&str>;
}

/// A validated label selector with a canonical text form (used to share sets
/// between identical selectors).
///
/// Cheap to clone: the parsed form is shared, and the policies kept by the
/// controller share one copy of each distinct selector (an
/// [`Interner`](super::snapshot::Interner) hands it out by its text).
#[derive(Clone)]
pub struct LabelSel(Arc<SelectorParts>);

struct SelectorParts {
    /// kube's parsed selector, as a list: its own `matches` reads only a
    /// `BTreeMap<String, String>`, and pods keep their labels in a more
    /// compact form ([`PodLabels`](super::snapshot::PodLabels)).
    exprs: Vec<Expression>,
    canonical: String,
}

static EVERYTHING: LazyLock<LabelSel> = LazyLock::new(|| LabelSel::new(Vec::new()));

impl LabelSel {
    pub(super) fn new(exprs: Vec<Expression>) -> Self {
        Self(Arc::new(SelectorParts {
            canonical: canonical(&exprs),
            exprs,
        }))
    }

    pub fn everything() -> Self {
        EVERYTHING.clone()
    }

    /// Whether labels match, as kube's `Selector::matches` decides it.
    pub fn matches(&self, labels: &impl LabelLookup) -> bool {
        self.0.exprs.iter().all(|e| match e {
            Expression::In(key, values) => labels.label(key).is_some_and(|v| values.contains(v)),
            Expression::NotIn(key, values) => labels.label(key).is_none_or(|v| !values.contains(v)),
            Expression::Exists(key) => labels.label(key).is_some(),
            Expression::DoesNotExist(key) => labels.label(key).is_none(),
            Expression::Equal(key, value) => labels.label(key) == Some(value.as_str()),
            Expression::NotEqual(key, value) => labels.label(key) != Some(value.as_str()),
        })
    }

    pub fn selects_all(&self) -> bool {
        self.0.exprs.is_empty()
    }

    /// Canonical text, e.g. `app=web,tier in (a,b)`; empty for "everything".
    /// Two selectors with the same text select alike: a value that is not
    /// plain label syntax is written as a JSON string (`app="a,b"`), so
    /// that no value can pass for a list of them.
    pub fn canonical(&self) -> &str {
        &self.0.canonical
    }

    /// Whether two selectors are one shared copy.
    pub fn is_shared_with(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// How many holders share this copy.
    pub(super) fn holders(&self) -> usize {
        Arc::strong_count(&self.0)
    }
}

/// Selectors are equal when their canonical texts are (which determine
/// what they select).
impl PartialEq for LabelSel {
    fn eq(&self, other: &Self) -> bool {
        self.canonical() == other.canonical()
    }
}

impl Eq for LabelSel {}

/// Hashes as its canonical text, which it borrows as.
impl std::hash::Hash for LabelSel {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.canonical().hash(h)
    }
}

impl std::borrow::Borrow<str> for LabelSel {
    fn borrow(&self) -> &str {
        self.canonical()
    }
}

impl fmt::Debug for LabelSel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LabelSel")
            .field("exprs", &self.0.exprs)
            .field("canonical", &self.0.canonical)
            .finish()
    }
}

impl fmt::Display for LabelSel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.canonical().is_empty() {
            f.write_str("{}")
        } else {
            f.write_str(self.canonical())
        }
    }
}

/// The text of a selector (kube's, with unusual values quoted).
fn canonical(exprs: &[Expression]) -> String {
    let value = |v: &str| {
        if is_label_value(v) {
            v.to_string()
        } else {
            serde_json::to_string(v).expect("a string serializes")
        }
    };
    let list = |vs: &std::collections::BTreeSet<String>| {
        vs.iter().map(|v| value(v)).collect::<Vec<_>>().join(",")
    };
    let parts: Vec<String> = exprs
        .iter()
        .map(|e| match e {
            Expression::In(k, vs) => format!("{k} in ({})", list(vs)),
            Expression::NotIn(k, vs) => format!("{k} notin ({})", list(vs)),
            Expression::Equal(k, v) => format!("{k}={}", value(v)),
            Expression::NotEqual(k, v) => format!("{k}!={}", value(v)),
            Expression::Exists(k) => k.clone(),
            Expression::DoesNotExist(k) => format!("!{k}"),
        })
        .collect();
    parts.join(",")
}

static NAME_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$").unwrap());
static DNS1123_SUBDOMAIN_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$").unwrap()
});

/// A label key: `[prefix/]name`.
pub(super) fn is_label_key(key: &str) -> bool {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let prefix_ok =
        prefix.is_none_or(|p| !p.is_empty() && p.len() <= 253 && DNS1123_SUBDOMAIN_RE.is_match(p));
    prefix_ok && !name.is_empty() && name.len() <= 63 && NAME_RE.is_match(name)
}

/// A label value as the API server takes it today.
pub(super) fn is_label_value(v: &str) -> bool {
    v.is_empty() || (v.len() <= 63 && NAME_RE.is_match(v))
}
