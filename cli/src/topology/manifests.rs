//! Kubernetes manifests in the topology (`namespaces:`, `deployments:`, `services:`, `network_policies:`),
//! checked when the file is, with the API server's own validation (`testbed_control_plane::validation`), so
//! an object the lab would refuse at `up` is refused at file:line first. Fields outside the server's schema are errors here, as kubectl's strict
//! field validation makes them.

use serde_json::{json, Value};
use testbed_control_plane::resources::Kind;
use testbed_control_plane::validation::{check as check_object, ValidationError};

use super::locate::FieldPath;
use super::validate::{root, Ctx};
use super::TopologyError;

/// One kind of manifest list: its topology key, the server's kind, and what `apiVersion`/`kind` must say.
pub(super) struct ManifestKind {
    pub field: &'static str,
    pub kind: Kind,
    pub api_version: &'static str,
    pub kind_name: &'static str,
    /// Namespaced objects default to the `default` namespace; cluster-scoped ones have none.
    pub namespaced: bool,
}

pub(super) const NAMESPACES: ManifestKind = ManifestKind {
    field: "namespaces",
    kind: Kind::Namespace,
    api_version: "v1",
    kind_name: "Namespace",
    namespaced: false,
};
pub(super) const DEPLOYMENTS: ManifestKind = ManifestKind {
    field: "deployments",
    kind: Kind::Deployment,
    api_version: "apps/v1",
    kind_name: "Deployment",
    namespaced: true,
};
pub(super) const SERVICES: ManifestKind =
    ManifestKind { field: "services", kind: Kind::Service, api_version: "v1", kind_name: "Service", namespaced: true };
pub(super) const NETWORK_POLICIES: ManifestKind = ManifestKind {
    field: "network_policies",
    kind: Kind::NetworkPolicy,
    api_version: "networking.k8s.io/v1",
    kind_name: "NetworkPolicy",
    namespaced: true,
};

/// The manifests of `items` (the topology's list `what.field`), typed, defaulted to the `default`
/// namespace, checked and normalized as the server stores them; names unique per namespace.
pub(super) fn check(ctx: &Ctx<'_>, what: &ManifestKind, items: &[Value]) -> Result<Vec<Value>, TopologyError> {
    let mut out: Vec<Value> = Vec::new();
    for (i, raw) in items.iter().enumerate() {
        let at = root().key(what.field).index(i);
        let object = with_type(ctx, what, &at, raw)?;
        let checked = check_object(what.kind, object).map_err(|e| match e {
            ValidationError::Invalid { field, message } => ctx.at(&at.join_dotted(&field), message),
            ValidationError::Malformed(message) => {
                // serde_path_to_error's `spec.replicas: invalid type ...`.
                let (field, message) = message.split_once(": ").unwrap_or(("", &message));
                ctx.at(&at.join_dotted(field), message.to_string())
            }
        })?;
        if let Some(field) = checked.unknown_fields.first() {
            let message =
                format!("unknown field (not part of the {} {} that testbed serves)", what.api_version, what.kind_name);
            return Err(ctx.at(&at.join_dotted(field), message));
        }
        let key = |v: &Value| (v["metadata"]["namespace"].clone(), v["metadata"]["name"].clone());
        if out.iter().any(|d| key(d) == key(&checked.object)) {
            return Err(ctx.at(
                &at.key("metadata").key("name"),
                format!("a {} of this name is already declared in its namespace", what.kind_name),
            ));
        }
        out.push(checked.object);
    }
    Ok(out)
}

/// The manifest with `apiVersion`/`kind` filled in (or checked) and the namespace defaulted.
fn with_type(ctx: &Ctx<'_>, what: &ManifestKind, at: &FieldPath, raw: &Value) -> Result<Value, TopologyError> {
    let Value::Object(fields) = raw else {
        return Err(ctx.at(at, format!("expected a {} manifest (a mapping with metadata and spec)", what.kind_name)));
    };
    let mut object = fields.clone();
    for (field, want) in [("apiVersion", what.api_version), ("kind", what.kind_name)] {
        match object.get(field) {
            None => {
                object.insert(field.into(), json!(want));
            }
            Some(Value::String(s)) if s == want => {}
            Some(other) => return Err(ctx.at(&at.key(field), format!("{other} here: {} are `{want}`", what.field))),
        }
    }
    let meta = object.entry("metadata").or_insert_with(|| json!({}));
    if let (Value::Object(meta), true) = (meta, what.namespaced) {
        meta.entry("namespace").or_insert_with(|| json!("default"));
    }
    Ok(Value::Object(object))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{checked_of, BASE};
    use super::super::TopologyError;

    const WEB: &str = "deployments:
  - metadata: {name: web}
    spec:
      replicas: 3
      selector: {matchLabels: {app: web}}
      template:
        metadata: {labels: {app: web}}
        spec:
          containers:
            - name: srv
              command: [sleep, 1d]
              resources: {requests: {cpu: 100m}}
";

    fn error_of(src: &str) -> (usize, String, String) {
        match checked_of(src) {
            Err(TopologyError::Invalid { line, field, message, .. }) => (line, field, message),
            other => panic!("expected an error, got {:?}", other.map(|t| t.deployments)),
        }
    }

    #[test]
    fn a_deployment_is_typed_defaulted_and_normalized() {
        let t = checked_of(&format!("{BASE}{WEB}")).expect("valid");
        let d = &t.deployments[0];
        assert_eq!((d["apiVersion"].as_str(), d["kind"].as_str()), (Some("apps/v1"), Some("Deployment")));
        assert_eq!(d["metadata"]["namespace"], "default");
        assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"], "100m");
    }

    #[test]
    fn errors_name_the_line_and_the_kubernetes_field() {
        let base_lines = BASE.lines().count();
        let cases = [
            (
                WEB.replace("replicas: 3", "replicas: -1"),
                4,
                "deployments[0].spec.replicas",
                "greater than or equal to 0",
            ),
            (
                WEB.replace("{app: web}}\n      template", "{app: db}}\n      template"),
                7,
                "deployments[0].spec.template.metadata.labels",
                "selector",
            ),
            (
                WEB.replace("cpu: 100m", "cpu: lots"),
                12,
                "deployments[0].spec.template.spec.containers[0].resources.requests.cpu",
                "CPU quantity",
            ),
            (WEB.replace("replicas: 3", "replica: 3"), 4, "deployments[0].spec.replica", "unknown field"),
            (WEB.replace("replicas: 3", "replicas: three"), 4, "deployments[0].spec.replicas", "invalid type"),
            (
                format!("{WEB}{}", &WEB["deployments:\n".len()..]),
                13,
                "deployments[1].metadata.name",
                "already declared",
            ),
        ];
        for (text, line, field, message) in cases {
            let (at, f, m) = error_of(&format!("{BASE}{text}"));
            assert_eq!(f, field, "{m}");
            assert!(m.contains(message), "{field}: {m}");
            assert_eq!(at, base_lines + line, "{field}: {m}");
        }
    }

    const DENY: &str = "network_policies:
  - metadata: {name: db-from-web}
    spec:
      podSelector: {matchLabels: {app: db}}
      ingress:
        - from:
            - ipBlock: {cidr: 10.0.0.0/16, except: [10.0.1.0/24]}
          ports:
            - port: 5432
";

    #[test]
    fn a_network_policy_is_typed_defaulted_and_refused_at_its_line() {
        let t = checked_of(&format!("{BASE}{DENY}")).expect("valid");
        let p = &t.network_policies[0];
        assert_eq!(
            (p["apiVersion"].as_str(), p["kind"].as_str()),
            (Some("networking.k8s.io/v1"), Some("NetworkPolicy"))
        );
        assert_eq!(p["metadata"]["namespace"], "default");
        let base_lines = BASE.lines().count();
        let (at, field, message) = error_of(&format!("{BASE}{}", DENY.replace("10.0.1.0/24", "10.1.0.0/24")));
        assert_eq!(field, "network_policies[0].spec.ingress[0].from[0].ipBlock.except[0]", "{message}");
        assert!(message.contains("strict subset"), "{message}");
        assert_eq!(at, base_lines + 7, "{message}");
        let (_, field, message) =
            error_of(&format!("{BASE}{}", DENY.replace("port: 5432", "port: 5432\n              endPort: 80")));
        assert_eq!(field, "network_policies[0].spec.ingress[0].ports[0].endPort", "{message}");
    }
}
