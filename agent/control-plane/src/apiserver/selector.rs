//! The `labelSelector` and `fieldSelector` of a list or watch, in the string form kubectl and client-go send.
//! Labels: equality (`a=b`, `a==b`, `a!=b`), sets (`a in (x,y)`, `a notin (x)`) and existence (`a`, `!a`);
//! a `!=` or `notin` also holds for an object without the label, as in Kubernetes. Fields: `=`, `==`, `!=`
//! on the fields Kubernetes indexes for the kind: `metadata.name` and `metadata.namespace` of every kind, a
//! pod's `spec.nodeName` (a node agent watches its pods with it) and `status.phase`, and an event's
//! `involvedObject.*`, `reason`, `type`, `source` and `reportingComponent` (kubectl describe and
//! `get events --field-selector`). Another field is 400 naming it.

use std::collections::HashMap;

use serde_json::Value;

use super::objects::meta_str;
use super::ApiError;
use crate::resources::Kind;

/// The selectors of one request.
#[derive(Debug, Default, Clone)]
pub(super) struct Filter {
    labels: Vec<Requirement>,
    fields: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    Absent(String),
}

const EVENT_FIELDS: &[&str] = &[
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
];

/// The value of a selectable field of a `kind` object; `None` when the kind has no such field. A field the
/// object leaves out is "", so `spec.nodeName=` selects unscheduled pods, as in Kubernetes.
fn field(kind: Kind, obj: &Value, name: &str) -> Option<String> {
    let at = |pointer: &str| obj.pointer(pointer).and_then(Value::as_str).unwrap_or("").to_string();
    match (kind, name) {
        (_, "metadata.name") => Some(meta_str(obj, "name").to_string()),
        (_, "metadata.namespace") => Some(meta_str(obj, "namespace").to_string()),
        (Kind::Pod, "spec.nodeName") => Some(at("/spec/nodeName")),
        (Kind::Pod, "status.phase") => Some(at("/status/phase")),
        (Kind::Event, "source") => Some(at("/source/component")),
        (Kind::Event, f) if EVENT_FIELDS.contains(&f) => Some(at(&format!("/{}", f.replace('.', "/")))),
        _ => None,
    }
}

impl Filter {
    /// The selectors of `query` for objects of `kind`: 400 for one that does not parse or names a field the
    /// kind cannot be selected by.
    pub(super) fn parse(query: &HashMap<String, String>, kind: Kind) -> Result<Self, ApiError> {
        let given = |param: &str| query.get(param).map(|s| s.trim()).filter(|s| !s.is_empty());
        let labels = match given("labelSelector") {
            Some(s) => split_top_level(s).into_iter().map(label_requirement).collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        let mut fields = Vec::new();
        for term in given("fieldSelector").map(|s| s.split(',').collect()).unwrap_or_else(Vec::new) {
            let req = field_requirement(term.trim())?;
            let (Requirement::Equals(key, _) | Requirement::NotEquals(key, _)) = &req else {
                unreachable!("field requirements are equalities")
            };
            if field(kind, &Value::Null, key).is_none() {
                return Err(ApiError::bad_request(format!("field label not supported: {key}")));
            }
            fields.push(req);
        }
        Ok(Self { labels, fields })
    }

    /// Whether `obj` (of the parsed kind) satisfies every requirement.
    pub(super) fn matches(&self, kind: Kind, obj: &Value) -> bool {
        let label = |k: &str| {
            obj.pointer("/metadata/labels").and_then(|l| l.get(k)).and_then(Value::as_str).map(str::to_string)
        };
        self.labels.iter().all(|r| r.holds(label)) && self.fields.iter().all(|r| r.holds(|k| field(kind, obj, k)))
    }
}

/// Splits at the commas outside parentheses: `a in (x,y),b` is two requirements.
fn split_top_level(s: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0i32, 0);
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

fn unparsable(term: &str, why: &str) -> ApiError {
    ApiError::bad_request(format!("unable to parse requirement \"{}\": {why}", term.trim()))
}

fn is_key(k: &str) -> bool {
    !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b))
}

fn is_value(v: &str) -> bool {
    v.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn label_requirement(term: &str) -> Result<Requirement, ApiError> {
    let t = term.trim();
    let key = |k: &str| {
        let k = k.trim();
        if is_key(k) {
            Ok(k.to_string())
        } else {
            Err(unparsable(term, "invalid label key"))
        }
    };
    let value = |v: &str| {
        let v = v.trim();
        if is_value(v) {
            Ok(v.to_string())
        } else {
            Err(unparsable(term, "invalid label value"))
        }
    };
    if let Some((head, set)) = t.split_once('(') {
        let set = set.strip_suffix(')').ok_or_else(|| unparsable(term, "a set must end with ')'"))?;
        let values = set.split(',').map(value).collect::<Result<Vec<_>, _>>()?;
        let head = head.trim_end();
        return if let Some(k) = head.strip_suffix(" notin") {
            Ok(Requirement::NotIn(key(k)?, values))
        } else if let Some(k) = head.strip_suffix(" in") {
            Ok(Requirement::In(key(k)?, values))
        } else {
            Err(unparsable(term, "a set needs 'in' or 'notin'"))
        };
    }
    if let Some((k, v)) = t.split_once("!=") {
        return Ok(Requirement::NotEquals(key(k)?, value(v)?));
    }
    if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
        return Ok(Requirement::Equals(key(k)?, value(v)?));
    }
    match t.strip_prefix('!') {
        Some(k) => Ok(Requirement::Absent(key(k)?)),
        None if is_key(t) => Ok(Requirement::Exists(t.to_string())),
        None => Err(unparsable(term, "expected =, ==, !=, in, notin or a key")),
    }
}

fn field_requirement(term: &str) -> Result<Requirement, ApiError> {
    let (k, v, equals) = if let Some((k, v)) = term.split_once("!=") {
        (k, v, false)
    } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
        (k, v, true)
    } else {
        return Err(unparsable(term, "field selectors support =, == and !="));
    };
    let (k, v) = (k.trim().to_string(), v.trim().to_string());
    Ok(if equals { Requirement::Equals(k, v) } else { Requirement::NotEquals(k, v) })
}

impl Requirement {
    fn holds(&self, get: impl Fn(&str) -> Option<String>) -> bool {
        match self {
            Self::Equals(k, v) => get(k).as_ref() == Some(v),
            Self::NotEquals(k, v) => get(k).as_ref() != Some(v),
            Self::In(k, vs) => get(k).is_some_and(|v| vs.contains(&v)),
            Self::NotIn(k, vs) => get(k).is_none_or(|v| !vs.contains(&v)),
            Self::Exists(k) => get(k).is_some(),
            Self::Absent(k) => get(k).is_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn filter(kind: Kind, pairs: &[(&str, &str)]) -> Result<Filter, ApiError> {
        Filter::parse(&pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), kind)
    }

    #[test]
    fn set_based_label_selectors() {
        let obj = |app: Option<&str>| json!({"metadata": {"name": "p", "labels": app.map(|a| json!({"app": a}))}});
        let cases = [
            ("app in (a, b)", [true, true, false, false]),
            ("app notin (a)", [false, true, true, true]),
            ("app", [true, true, true, false]),
            ("!app", [false, false, false, true]),
            ("app in (a,b),app!=b", [true, false, false, false]),
            ("app==c", [false, false, true, false]),
        ];
        for (selector, want) in cases {
            let f = filter(Kind::Pod, &[("labelSelector", selector)]).expect(selector);
            let got = [Some("a"), Some("b"), Some("c"), None].map(|app| f.matches(Kind::Pod, &obj(app)));
            assert_eq!(got, want, "{selector}");
        }
        for bad in ["app in a,b", "app within (a)", "a b", "app=(x", "app in (a b)"] {
            assert_eq!(filter(Kind::Pod, &[("labelSelector", bad)]).expect_err(bad).code.as_u16(), 400, "{bad}");
        }
    }

    #[test]
    fn field_selectors_by_kind() {
        let event = json!({"metadata": {"name": "e1", "namespace": "default"}, "reason": "Scheduled",
            "involvedObject": {"kind": "Pod", "name": "web", "uid": "u1"}, "source": {"component": "kubelet"}});
        let yes = "involvedObject.name=web,involvedObject.kind==Pod,reason=Scheduled,source=kubelet,\
                   involvedObject.fieldPath=,type!=Warning";
        let f = filter(Kind::Event, &[("fieldSelector", yes)]).expect("parses");
        assert!(f.matches(Kind::Event, &event));
        let f = filter(Kind::Event, &[("fieldSelector", "involvedObject.uid=u2")]).expect("parses");
        assert!(!f.matches(Kind::Event, &event));
        let pod = json!({"metadata": {"name": "web"}, "status": {"phase": "Running"}});
        let f = filter(Kind::Pod, &[("fieldSelector", "status.phase!=Pending,spec.nodeName=")]).expect("parses");
        assert!(f.matches(Kind::Pod, &pod));
        let err = filter(Kind::Pod, &[("fieldSelector", "reason=x")]).expect_err("not a pod field");
        assert_eq!((err.code.as_u16(), err.message.as_str()), (400, "field label not supported: reason"));
        assert!(filter(Kind::Deployment, &[("fieldSelector", "metadata.name=web")]).is_ok());
        assert!(filter(Kind::Deployment, &[("fieldSelector", "status.phase=x")]).is_err());
    }
}
