//! What the suites read through the lab's API beside their own checks: errors of API calls as check errors,
//! and a Service's ready endpoint addresses from its EndpointSlices.

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};
use kube::Client;

use super::runner::CheckError;

/// A check's error from an API call: the server's refusal is a failure, no answer an infrastructure error.
pub(super) fn api_err(what: &str) -> impl Fn(kube::Error) -> CheckError + '_ {
    move |e| match e {
        kube::Error::Api(s) => {
            CheckError::Fail(format!("{what}: the API answered {} {}: {}", s.code, s.reason, s.message))
        }
        other => CheckError::Infra(format!("{what}: {other}")),
    }
}

/// The ready endpoint addresses of Service `namespace/name`'s slices, sorted.
pub(super) async fn ready_endpoints(client: &Client, namespace: &str, name: &str) -> Result<Vec<String>, CheckError> {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), namespace);
    let list = slices
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={name}")))
        .await
        .map_err(api_err("list endpointslices"))?;
    let mut ips: Vec<String> = list
        .items
        .iter()
        .flat_map(|s| &s.endpoints)
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        .flat_map(|e| e.addresses.clone())
        .collect();
    ips.sort();
    Ok(ips)
}
