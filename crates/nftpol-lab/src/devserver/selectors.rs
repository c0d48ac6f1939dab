//! `labelSelector` and `fieldSelector` query parameters.

use std::collections::BTreeSet;

use serde_json::Value;

use super::error::ApiError;

type MakeReq = fn(String, String) -> Option<LabelReq>;

#[derive(Clone, Debug, PartialEq, Eq)]
enum LabelReq {
    Eq(String, String),
    NotEq(String, String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    DoesNotExist(String),
    Gt(String, i64),
    Lt(String, i64),
}

/// A parsed label selector (`app=web,tier in (a,b),!legacy`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<LabelReq>);

/// Splits at commas outside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let (mut depth, mut start, mut out) = (0i32, 0usize, Vec::new());
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn valid_value(v: &str) -> bool {
    v.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl LabelSelector {
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let bad = |part: &str| {
            ApiError::bad_request(format!(
                "unable to parse requirement: invalid label selector {s:?} at {:?}",
                part.trim()
            ))
        };
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(Self(reqs));
        }
        for part in split_top(s) {
            let p = part.trim();
            if let Some(key) = p.strip_prefix('!') {
                let key = key.trim();
                if !valid_key(key) {
                    return Err(bad(part));
                }
                reqs.push(LabelReq::DoesNotExist(key.into()));
                continue;
            }
            if let Some(open) = p.find('(') {
                let head = p[..open].trim();
                let Some(body) = p[open + 1..].strip_suffix(')') else {
                    return Err(bad(part));
                };
                let values: BTreeSet<String> = body
                    .split(',')
                    .map(|v| v.trim().to_string())
                    .filter(|v| !v.is_empty())
                    .collect();
                if values.iter().any(|v| !valid_value(v)) {
                    return Err(bad(part));
                }
                let mut words = head.split_whitespace();
                let (Some(key), Some(op), None) = (words.next(), words.next(), words.next()) else {
                    return Err(bad(part));
                };
                if !valid_key(key) {
                    return Err(bad(part));
                }
                reqs.push(match op {
                    "in" => LabelReq::In(key.into(), values),
                    "notin" => LabelReq::NotIn(key.into(), values),
                    _ => return Err(bad(part)),
                });
                continue;
            }
            let ops: [(&str, MakeReq); 6] = [
                ("!=", |k, v| Some(LabelReq::NotEq(k, v))),
                ("==", |k, v| Some(LabelReq::Eq(k, v))),
                ("=", |k, v| Some(LabelReq::Eq(k, v))),
                (">", |k, v| v.parse().ok().map(|n| LabelReq::Gt(k, n))),
                ("<", |k, v| v.parse().ok().map(|n| LabelReq::Lt(k, n))),
                ("", |k, _| Some(LabelReq::Exists(k))),
            ];
            for (op, make) in ops {
                let (key, value) = if op.is_empty() {
                    (p, "")
                } else if let Some((k, v)) = p.split_once(op) {
                    (k.trim(), v.trim())
                } else {
                    continue;
                };
                if !valid_key(key) || !valid_value(value) {
                    return Err(bad(part));
                }
                reqs.push(make(key.into(), value.into()).ok_or_else(|| bad(part))?);
                break;
            }
        }
        Ok(Self(reqs))
    }

    /// Whether an object's `metadata.labels` match.
    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels");
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            LabelReq::Eq(k, v) => get(k) == Some(v.as_str()),
            LabelReq::NotEq(k, v) => get(k) != Some(v.as_str()),
            LabelReq::In(k, vs) => get(k).is_some_and(|x| vs.contains(x)),
            LabelReq::NotIn(k, vs) => get(k).is_none_or(|x| !vs.contains(x)),
            LabelReq::Exists(k) => get(k).is_some(),
            LabelReq::DoesNotExist(k) => get(k).is_none(),
            LabelReq::Gt(k, n) => get(k).and_then(|x| x.parse::<i64>().ok()) > Some(*n),
            LabelReq::Lt(k, n) => get(k)
                .and_then(|x| x.parse::<i64>().ok())
                .is_some_and(|x| x < *n),
        })
    }
}

/// A parsed field selector (`metadata.name=x,spec.nodeName!=node-1`):
/// fields compare as strings, a missing field is the empty string.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(Self(reqs));
        }
        for part in s.split(',') {
            let p = part.trim();
            let (field, eq, value) = if let Some((f, v)) = p.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = p.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = p.split_once('=') {
                (f, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid field selector {s:?}: {p:?} is not field=value"
                )));
            };
            reqs.push((field.trim().to_string(), eq, value.trim().to_string()));
        }
        Ok(Self(reqs))
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(field, eq, value)| {
            let mut cur = Some(obj);
            for seg in field.split('.') {
                cur = cur.and_then(|c| c.get(seg));
            }
            let actual = match cur {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            (actual == *value) == *eq
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selectors() {
        let o = json!({"metadata": {"labels": {"app": "web", "tier": "a", "n": "5"}}});
        let m = |s: &str| LabelSelector::parse(s).unwrap().matches(&o);
        assert!(m(""));
        assert!(m("app=web"));
        assert!(m("app==web,tier"));
        assert!(!m("app!=web"));
        assert!(m("tier in (a, b),!legacy"));
        assert!(!m("tier notin (a,b)"));
        assert!(m("n>4,n<6"));
        assert!(!m("missing"));
        assert!(LabelSelector::parse("app in a").is_err());
        assert!(LabelSelector::parse("a b").is_err());
    }

    #[test]
    fn field_selectors() {
        let o = json!({"metadata": {"name": "x", "namespace": "shop"}, "spec": {"nodeName": "n1"}});
        let m = |s: &str| FieldSelector::parse(s).unwrap().matches(&o);
        assert!(m("metadata.name=x"));
        assert!(m("metadata.name==x,spec.nodeName!=n2"));
        assert!(!m("spec.nodeName="));
        assert!(m("status.phase="));
        assert!(FieldSelector::parse("nonsense").is_err());
    }
}
