//! The kubeconfig a lab's users get: kubectl (and kube-rs) reach the API server with it.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::json;

/// A kubeconfig (YAML) with one cluster, user and context, all named `name`: the server's URL
/// (`https://10.0.0.11:6443`, or the CLI's local forward), the lab CA that signed its certificate, and the
/// lab's bearer token.
pub fn kubeconfig(name: &str, server: &str, ca_pem: &str, token: &str) -> String {
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": server, "certificate-authority-data": B64.encode(ca_pem)}}],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name, "namespace": "default"}}],
        "current-context": name,
        "preferences": {},
    });
    // A JSON value of strings and maps always serializes as YAML.
    serde_yaml::to_string(&doc).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trips() {
        let text = super::kubeconfig("lab1", "https://127.0.0.1:6443", "PEM", "s3cret");
        let v: serde_json::Value = serde_yaml::from_str(&text).expect("yaml");
        assert_eq!(v["current-context"], "lab1");
        assert_eq!(v["clusters"][0]["cluster"]["server"], "https://127.0.0.1:6443");
        assert_eq!(v["clusters"][0]["cluster"]["certificate-authority-data"], "UEVN");
        assert_eq!(v["users"][0]["user"]["token"], "s3cret");
    }
}
