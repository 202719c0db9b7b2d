//! JSON patch (RFC 6902): a list of `add`, `remove`, `replace`, `move`, `copy` and `test` operations on
//! JSON pointers (RFC 6901), applied in order; the first that fails fails the whole patch. A malformed
//! patch is 400; an operation that does not apply (a missing path, a failed `test`) is 422, as in Kubernetes.

use axum::http::StatusCode;
use serde_json::Value;

use super::ApiError;

pub(super) fn apply(mut doc: Value, patch: &Value) -> Result<Value, ApiError> {
    let ops = patch.as_array().ok_or_else(|| ApiError::bad_request("a JSON patch must be a list of operations"))?;
    for op in ops {
        let field = |name: &str| {
            op.get(name).ok_or_else(|| ApiError::bad_request(format!("JSON patch operation {op} has no \"{name}\"")))
        };
        let pointer = |name: &str| -> Result<Vec<String>, ApiError> {
            let s = field(name)?
                .as_str()
                .ok_or_else(|| ApiError::bad_request(format!("\"{name}\" of {op} must be a string")))?;
            parse_pointer(s)
        };
        let path = pointer("path")?;
        match field("op")?.as_str().unwrap_or("") {
            "add" => add(&mut doc, &path, field("value")?.clone())?,
            "remove" => drop(remove(&mut doc, &path)?),
            "replace" => {
                remove(&mut doc, &path)?;
                add(&mut doc, &path, field("value")?.clone())?;
            }
            "move" => {
                let from = pointer("from")?;
                if path.len() > from.len() && path.starts_with(&from) {
                    return Err(unapplied(format!("cannot move {} into its own child", show(&from))));
                }
                let value = remove(&mut doc, &from)?;
                add(&mut doc, &path, value)?;
            }
            "copy" => {
                let value = get(&doc, &pointer("from")?)?.clone();
                add(&mut doc, &path, value)?;
            }
            "test" => {
                if get(&doc, &path)? != field("value")? {
                    return Err(unapplied(format!("testing value {} failed", show(&path))));
                }
            }
            other => return Err(ApiError::bad_request(format!("unknown JSON patch operation \"{other}\""))),
        }
    }
    Ok(doc)
}

/// The reference tokens of a JSON pointer, `~1` and `~0` decoded.
fn parse_pointer(s: &str) -> Result<Vec<String>, ApiError> {
    if s.is_empty() {
        return Ok(Vec::new());
    }
    let rest =
        s.strip_prefix('/').ok_or_else(|| ApiError::bad_request(format!("JSON pointer \"{s}\" must start with /")))?;
    Ok(rest.split('/').map(|t| t.replace("~1", "/").replace("~0", "~")).collect())
}

fn show(path: &[String]) -> String {
    path.iter().map(|t| format!("/{}", t.replace('~', "~0").replace('/', "~1"))).collect()
}

fn unapplied(message: String) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", format!("the JSON patch does not apply: {message}"))
}

fn missing(path: &[String]) -> ApiError {
    unapplied(format!("{} does not exist", show(path)))
}

/// An array index token: digits without a leading zero, below `len` (or equal, for an insertion).
fn index(token: &str, len: usize, inserting: bool) -> Option<usize> {
    let ok =
        !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit()) && (token == "0" || !token.starts_with('0'));
    let i: usize = token.parse().ok().filter(|_| ok)?;
    (i < len || (inserting && i == len)).then_some(i)
}

fn get<'a>(doc: &'a Value, path: &[String]) -> Result<&'a Value, ApiError> {
    let mut at = doc;
    for token in path {
        at = match at {
            Value::Object(m) => m.get(token),
            Value::Array(a) => index(token, a.len(), false).map(|i| &a[i]),
            _ => None,
        }
        .ok_or_else(|| missing(path))?;
    }
    Ok(at)
}

/// The container of the path's last token.
fn parent<'a>(doc: &'a mut Value, path: &[String]) -> Result<&'a mut Value, ApiError> {
    let mut at = doc;
    for token in &path[..path.len() - 1] {
        at = match at {
            Value::Object(m) => m.get_mut(token),
            Value::Array(a) => {
                let len = a.len();
                index(token, len, false).map(|i| &mut a[i])
            }
            _ => None,
        }
        .ok_or_else(|| missing(path))?;
    }
    Ok(at)
}

fn add(doc: &mut Value, path: &[String], value: Value) -> Result<(), ApiError> {
    let Some(last) = path.last() else {
        *doc = value;
        return Ok(());
    };
    match parent(doc, path)? {
        Value::Object(m) => {
            m.insert(last.clone(), value);
        }
        Value::Array(a) if last == "-" => a.push(value),
        Value::Array(a) => {
            let i = index(last, a.len(), true).ok_or_else(|| missing(path))?;
            a.insert(i, value);
        }
        _ => return Err(missing(path)),
    }
    Ok(())
}

fn remove(doc: &mut Value, path: &[String]) -> Result<Value, ApiError> {
    let last = path.last().ok_or_else(|| unapplied("the whole document cannot be removed".into()))?;
    match parent(doc, path)? {
        Value::Object(m) => m.remove(last),
        Value::Array(a) => index(last, a.len(), false).map(|i| a.remove(i)),
        _ => None,
    }
    .ok_or_else(|| missing(path))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::apply;

    #[test]
    fn every_operation() {
        let doc = json!({"a": {"b": 1}, "l": [1, 2, 3], "k~/": "x"});
        let patch = json!([
            {"op": "add", "path": "/l/1", "value": 9},
            {"op": "add", "path": "/l/-", "value": 4},
            {"op": "remove", "path": "/l/0"},
            {"op": "replace", "path": "/a/b", "value": {"c": 2}},
            {"op": "move", "from": "/k~0~1", "path": "/m"},
            {"op": "copy", "from": "/a", "path": "/n"},
            {"op": "test", "path": "/n/b/c", "value": 2},
        ]);
        let want = json!({"a": {"b": {"c": 2}}, "l": [9, 2, 3, 4], "m": "x", "n": {"b": {"c": 2}}});
        assert_eq!(apply(doc, &patch).expect("applies"), want);
    }

    #[test]
    fn failures() {
        let doc = json!({"a": 1, "l": [1]});
        for (patch, code) in [
            (json!([{"op": "test", "path": "/a", "value": 2}]), 422),
            (json!([{"op": "replace", "path": "/b", "value": 2}]), 422),
            (json!([{"op": "remove", "path": "/l/1"}]), 422),
            (json!([{"op": "add", "path": "/l/01", "value": 2}]), 422),
            (json!([{"op": "move", "from": "/l", "path": "/l/0"}]), 422),
            (json!([{"op": "frob", "path": "/a"}]), 400),
            (json!([{"op": "add", "path": "a", "value": 1}]), 400),
            (json!({"op": "add"}), 400),
        ] {
            assert_eq!(apply(doc.clone(), &patch).expect_err("fails").code.as_u16(), code, "{patch}");
        }
    }
}
