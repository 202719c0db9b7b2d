//! `testbed apply -f FILE`: create each object of the files, or bring an existing one to what the file says
//! (a replace at the version read, so a concurrent change is a conflict, not lost). Every file is read and
//! checked before anything is sent.

use std::path::PathBuf;

use kube::api::{DynamicObject, PostParams};
use serde_json::Value;

use crate::exit::CliResult;
use crate::ui::Ui;

use super::documents::{self, Document};
use super::kinds::{Kind, Served};
use super::{api, connect, print_outcomes, run, ClientArgs, ClusterError, Outcome};

#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Files of objects (multi-document YAML or JSON; `-`: standard input).
    #[arg(long = "filename", short = 'f', value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,
}

pub async fn cmd_apply(ui: &Ui, args: ApplyArgs) -> CliResult {
    run(apply(ui, args)).await
}

async fn apply(ui: &Ui, args: ApplyArgs) -> Result<(), ClusterError> {
    let mut docs = Vec::new();
    for file in &args.files {
        docs.extend(documents::read(file)?);
    }
    let client = connect(&args.client).await?;
    let mut done = Vec::new();
    for doc in docs {
        let namespace = namespace_of(&doc, args.client.namespace.as_deref())?;
        let mut object = doc.object.clone();
        if doc.kind.namespaced() {
            object.metadata.namespace = Some(namespace.clone());
        }
        let name = object.metadata.name.clone().unwrap_or_default();
        let what = format!("{}: {}/{name}", doc.at, doc.kind.singular());
        let action = apply_object(&client, doc.kind, &namespace, object, &what).await?;
        let namespace = doc.kind.namespaced().then_some(namespace);
        done.push(Outcome { kind: doc.kind, namespace, name, action });
    }
    print_outcomes(ui, &done);
    Ok(())
}

/// Creates `object`, or replaces the existing one at the version read when it differs from what is asked.
async fn apply_object(
    client: &kube::Client,
    kind: Kind,
    namespace: &str,
    mut object: DynamicObject,
    what: &str,
) -> Result<&'static str, ClusterError> {
    let name = object.metadata.name.clone().unwrap_or_default();
    let api = api(client, kind, Some(namespace));
    match api.create(&PostParams::default(), &object).await {
        Ok(_) => Ok("created"),
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let existing = api.get(&name).await.map_err(|e| ClusterError::from_kube(what, e))?;
            if is_subset(&to_value(&object), &to_value(&existing)) {
                return Ok("unchanged");
            }
            object.metadata.resource_version = existing.metadata.resource_version;
            api.replace(&name, &PostParams::default(), &object).await.map_err(|e| ClusterError::from_kube(what, e))?;
            Ok("configured")
        }
        Err(e) => Err(ClusterError::from_kube(what, e)),
    }
}

/// The topology's Namespaces, Services and Deployments, applied at `up` (each namespace made first when missing), so a running lab
/// `up` again with a changed file gets the difference. Returns what was done to each.
pub async fn apply_topology_objects(
    client: &kube::Client,
    objects: &[Value],
) -> Result<Vec<(String, &'static str)>, ClusterError> {
    let mut done = Vec::new();
    let mut index = std::collections::HashMap::<Kind, usize>::new();
    // Namespaces known to exist: each is asked for once, not once per object in it.
    let mut present = std::collections::HashSet::new();
    for value in objects {
        let object: DynamicObject =
            serde_json::from_value(value.clone()).map_err(|e| ClusterError::Document(format!("topology: {e}")))?;
        let types = object.types.clone().unwrap_or_default();
        let kind = super::kinds::of_type(&types).map_err(|e| ClusterError::Document(format!("topology: {e}")))?;
        // Named as the topology names it: `services[0]`, `deployments[2]`.
        let i = index.entry(kind).or_default();
        let what = format!("{}[{i}]", kind.resource().plural);
        *i += 1;
        let namespace = object.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        if kind.namespaced() && !present.contains(&namespace) {
            ensure_namespace(client, &namespace).await?;
            present.insert(namespace.clone());
        }
        let name = object.metadata.name.clone().unwrap_or_default();
        let action = apply_object(client, kind, &namespace, object, &what).await?;
        done.push((format!("{}/{name}", kind.qualified()), action));
    }
    Ok(done)
}

/// Creates namespace `name` when it is missing. A read first: on a TCG guest every call through the
/// forwarder costs a few hundred milliseconds, and the namespace (`default`, mostly) is there nearly always.
async fn ensure_namespace(client: &kube::Client, name: &str) -> Result<(), ClusterError> {
    let what = format!("namespace/{name}");
    let api = api(client, Kind::Namespace, None);
    if api.get_opt(name).await.map_err(|e| ClusterError::from_kube(&what, e))?.is_some() {
        return Ok(());
    }
    let ns: DynamicObject = serde_json::from_value(
        serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
    )
    .map_err(|e| ClusterError::Document(format!("{what}: {e}")))?;
    match api.create(&PostParams::default(), &ns).await {
        // Made meanwhile by someone else: as good.
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(e) => Err(ClusterError::from_kube(&what, e)),
    }
}

/// The document's namespace, which must agree with `-n` when both are given (as kubectl requires).
fn namespace_of(doc: &Document, flag: Option<&str>) -> Result<String, ClusterError> {
    match (doc.object.metadata.namespace.as_deref(), flag) {
        (Some(own), Some(flag)) if own != flag => Err(ClusterError::Document(format!(
            "{}: the object's namespace `{own}` does not match --namespace `{flag}`",
            doc.at
        ))),
        (Some(own), _) => Ok(own.to_string()),
        (None, flag) => Ok(flag.unwrap_or("default").to_string()),
    }
}

fn to_value(object: &DynamicObject) -> Value {
    serde_json::to_value(object).unwrap_or_default()
}

/// Whether everything `wanted` sets is already so in `current` (fields the server added do not count).
fn is_subset(wanted: &Value, current: &Value) -> bool {
    match (wanted, current) {
        (Value::Object(w), Value::Object(c)) => w.iter().all(|(k, v)| c.get(k).is_some_and(|cv| is_subset(v, cv))),
        (Value::Array(w), Value::Array(c)) => w.len() == c.len() && w.iter().zip(c).all(|(a, b)| is_subset(a, b)),
        _ => wanted == current,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_object_is_unchanged_when_the_server_only_added_fields() {
        let wanted = json!({"metadata": {"name": "a", "labels": {"x": "1"}}, "spec": {"c": [{"n": 1}]}});
        let current = json!({"metadata": {"name": "a", "labels": {"x": "1"}, "resourceVersion": "5"},
                             "spec": {"c": [{"n": 1, "d": 2}]}, "status": {}});
        assert!(is_subset(&wanted, &current));
        let changed = json!({"metadata": {"name": "a", "labels": {"x": "2"}}});
        assert!(!is_subset(&changed, &current));
        let longer = json!({"spec": {"c": [{"n": 1}, {"n": 2}]}});
        assert!(!is_subset(&longer, &current));
    }

    #[test]
    fn the_flag_and_the_document_must_agree_on_the_namespace() {
        let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: a}\n";
        let doc = documents::parse(std::path::Path::new("f.yaml"), text).unwrap().remove(0);
        assert_eq!(namespace_of(&doc, None).unwrap(), "a");
        assert_eq!(namespace_of(&doc, Some("a")).unwrap(), "a");
        let err = namespace_of(&doc, Some("b")).unwrap_err().to_string();
        assert_eq!(err, "f.yaml:1: the object's namespace `a` does not match --namespace `b`");
    }
}
