//! Strategic merge patch, as apimachinery's `strategicpatch` applies it to the kinds served here: maps merge
//! as in a JSON merge patch (`null` deletes a key); a list whose Kubernetes field has a patch merge key is
//! merged item by item on that key (a new item is appended, `$patch: delete` in an item removes it); a list
//! of scalars with the `merge` strategy is a set union (`$deleteFromPrimitiveList/FIELD` removes values);
//! every other list is replaced. Directives: `$patch: replace|delete|merge` in a map, `{"$patch": "replace"}`
//! as a list item (the list becomes the patch's other items), `$retainKeys` (keys of the original map not
//! listed are dropped first, Deployment's `spec.strategy`), `$setElementOrder/FIELD` (kubectl apply's order
//! hint: ignored, merged lists keep the original order with new items last).

use serde_json::{Map, Value};

use super::ApiError;

/// How a list field merges, by the field's name: the names are unambiguous across the kinds served
/// (Pod, Node, Namespace, Event, Lease, ReplicaSet, Deployment), as the Kubernetes types declare them.
enum ListStrategy {
    /// Items are objects identified by this key.
    MergeBy(&'static str),
    /// Items are scalars; the result is the union.
    Union,
}

fn list_strategy(field: &str) -> Option<ListStrategy> {
    use ListStrategy::{MergeBy, Union};
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "imagePullSecrets"
        | "env"
        | "resourceClaims"
        | "schedulingGates" => MergeBy("name"),
        "ports" => MergeBy("containerPort"),
        "volumeMounts" => MergeBy("mountPath"),
        "volumeDevices" => MergeBy("devicePath"),
        "conditions" | "addresses" => MergeBy("type"),
        "ownerReferences" => MergeBy("uid"),
        "hostAliases" | "podIPs" | "hostIPs" => MergeBy("ip"),
        "finalizers" | "podCIDRs" => Union,
        _ => return None,
    })
}

const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList/";
const SET_ELEMENT_ORDER: &str = "$setElementOrder/";

pub(super) fn apply(doc: Value, patch: &Value) -> Result<Value, ApiError> {
    if !patch.is_object() {
        return Err(ApiError::bad_request("a strategic merge patch must be a JSON object"));
    }
    Ok(merge_map(doc, patch)?.unwrap_or(Value::Object(Map::new())))
}

/// `patch` (an object) merged into `original`; `None` when the patch deletes the map (`$patch: delete`).
fn merge_map(original: Value, patch: &Value) -> Result<Option<Value>, ApiError> {
    let Value::Object(p) = patch else { return Ok(Some(patch.clone())) };
    let mut out = match original {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    match p.get("$patch").map(|d| d.as_str().unwrap_or("")) {
        None | Some("merge") => {}
        Some("delete") => return Ok(None),
        Some("replace") => out.clear(),
        Some(other) => return Err(ApiError::bad_request(format!("unknown patch directive $patch: \"{other}\""))),
    }
    if let Some(retain) = p.get("$retainKeys") {
        let keys = retain
            .as_array()
            .ok_or_else(|| ApiError::bad_request("$retainKeys must be a list of field names"))?
            .iter()
            .map(|k| k.as_str().ok_or_else(|| ApiError::bad_request("$retainKeys must be a list of field names")))
            .collect::<Result<Vec<_>, _>>()?;
        out.retain(|k, _| keys.contains(&k.as_str()));
    }
    for (key, value) in p {
        if key == "$patch" || key == "$retainKeys" || key.starts_with(SET_ELEMENT_ORDER) {
            continue;
        }
        if key.starts_with(DELETE_FROM_PRIMITIVE_LIST) {
            continue;
        }
        if key.starts_with('$') {
            return Err(ApiError::bad_request(format!("unknown strategic merge patch directive \"{key}\"")));
        }
        let old = out.remove(key);
        let merged = match value {
            Value::Null => None,
            Value::Object(_) => merge_map(old.unwrap_or(Value::Null), value)?,
            Value::Array(items) => {
                let old = match old {
                    Some(Value::Array(old)) => old,
                    _ => Vec::new(),
                };
                Some(Value::Array(merge_list(key, old, items)?))
            }
            scalar => Some(scalar.clone()),
        };
        if let Some(m) = merged {
            out.insert(key.clone(), m);
        }
    }
    // Deletions from scalar lists come after the merge, so a patch adding and deleting in one list ends
    // without the deleted values.
    for (key, value) in p {
        if let Some(field) = key.strip_prefix(DELETE_FROM_PRIMITIVE_LIST) {
            let gone = value.as_array().ok_or_else(|| ApiError::bad_request(format!("{key} must be a list")))?;
            if let Some(Value::Array(list)) = out.get_mut(field) {
                list.retain(|v| !gone.contains(v));
            }
        }
    }
    Ok(Some(Value::Object(out)))
}

fn is_replace(item: &Value) -> bool {
    item.get("$patch").and_then(Value::as_str) == Some("replace")
}

fn merge_list(field: &str, old: Vec<Value>, items: &[Value]) -> Result<Vec<Value>, ApiError> {
    let strategy = list_strategy(field);
    if items.iter().any(is_replace) || strategy.is_none() {
        // A replaced list may still hold maps carrying directives: they apply to nothing.
        return items
            .iter()
            .filter(|i| !is_replace(i))
            .filter_map(|i| if i.is_object() { merge_map(Value::Null, i).transpose() } else { Some(Ok(i.clone())) })
            .collect();
    }
    let mut out = old;
    match strategy {
        Some(ListStrategy::Union) => {
            for item in items {
                if !out.contains(item) {
                    out.push(item.clone());
                }
            }
        }
        Some(ListStrategy::MergeBy(key)) => {
            for item in items {
                let id = item.get(key).filter(|_| item.is_object()).ok_or_else(|| {
                    ApiError::bad_request(format!("an item of {field} does not contain declared merge key: {key}"))
                })?;
                let at = out.iter().position(|o| o.get(key) == Some(id));
                if item.get("$patch").and_then(Value::as_str) == Some("delete") {
                    out.retain(|o| o.get(key) != Some(id));
                    continue;
                }
                match at {
                    Some(i) => match merge_map(std::mem::take(&mut out[i]), item)? {
                        Some(merged) => out[i] = merged,
                        None => drop(out.remove(i)),
                    },
                    None => out.extend(merge_map(Value::Null, item)?),
                }
            }
        }
        None => unreachable!("lists without a strategy were replaced above"),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::apply;

    #[test]
    fn maps_merge_and_keyed_lists_merge_by_key() {
        let doc = json!({"metadata": {"labels": {"a": "1", "b": "2"}, "finalizers": ["x"]},
            "spec": {"paused": false, "template": {"spec": {"containers": [
                {"name": "web", "image": "v1", "command": ["a", "b"], "env": [{"name": "A", "value": "1"}]},
                {"name": "side", "image": "s"}]}}}});
        let patch = json!({"metadata": {"labels": {"b": null, "c": "3"}, "finalizers": ["y", "x"]},
            "spec": {"paused": true, "template": {"spec": {
                "$setElementOrder/containers": [{"name": "web"}, {"name": "side"}],
                "containers": [{"name": "web", "command": ["c"], "env": [{"name": "B", "value": "2"}]},
                               {"name": "new", "image": "n"}]}}}});
        let want = json!({"metadata": {"labels": {"a": "1", "c": "3"}, "finalizers": ["x", "y"]},
            "spec": {"paused": true, "template": {"spec": {"containers": [
                {"name": "web", "image": "v1", "command": ["c"],
                 "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
                {"name": "side", "image": "s"}, {"name": "new", "image": "n"}]}}}});
        assert_eq!(apply(doc, &patch).expect("applies"), want);
    }

    #[test]
    fn directives() {
        let doc = json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}},
            "containers": [{"name": "a"}, {"name": "b"}], "podCIDRs": ["p", "q"],
            "selector": {"matchLabels": {"x": "1"}}, "gone": {"k": 1}}});
        let patch = json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"},
            "containers": [{"name": "a", "$patch": "delete"}], "$deleteFromPrimitiveList/podCIDRs": ["p"],
            "selector": {"$patch": "replace", "matchLabels": {"y": "2"}}, "gone": {"$patch": "delete"}}});
        let want = json!({"spec": {"strategy": {"type": "Recreate"}, "containers": [{"name": "b"}],
            "podCIDRs": ["q"], "selector": {"matchLabels": {"y": "2"}}}});
        assert_eq!(apply(doc.clone(), &patch).expect("applies"), want);
        let replace = json!({"spec": {"containers": [{"$patch": "replace"}, {"name": "c"}]}});
        assert_eq!(apply(doc.clone(), &replace).expect("applies")["spec"]["containers"], json!([{"name": "c"}]));
        let no_key = json!({"spec": {"containers": [{"image": "x"}]}});
        assert_eq!(apply(doc, &no_key).expect_err("no merge key").code.as_u16(), 400);
    }
}
