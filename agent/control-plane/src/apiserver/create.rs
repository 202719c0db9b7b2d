//! POST of a new object: server-set metadata (uid, creation time, generation 1), the status a new object
//! starts with, and `metadata.generateName`, completed as Kubernetes does with 5 random characters and
//! tried again with new ones when the name is taken.

use rand::Rng;
use serde_json::{json, Value};

use super::objects::{encode, meta_str, metadata, prepare, remove, set, set_resource_version, validated, WithWarnings};
use super::{ApiError, Server, Target};
use crate::meta::{new_uid, now_rfc3339};
use crate::resources::{Kind, RESOURCES};
use crate::store::{Store, StoreError};

/// Kubernetes' alphabet for generated names: no vowels (no words) and no look-alikes (0/o, 1/l, 3/e).
const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
/// Random characters appended to `generateName`.
const SUFFIX_LEN: usize = 5;
/// A prefix is cut to this, so the name stays a DNS label (63 characters).
const MAX_PREFIX_LEN: usize = 63 - SUFFIX_LEN;
/// Creates tried with a generated name before a taken one is reported, as Kubernetes' `RetryGenerateName`.
const NAME_ATTEMPTS: usize = 8;

/// `prefix` (cut to [`MAX_PREFIX_LEN`]) and 5 random characters of [`ALPHABET`].
fn generate_name(prefix: &str) -> String {
    let cut = prefix.char_indices().nth(MAX_PREFIX_LEN).map_or(prefix, |(i, _)| &prefix[..i]);
    let suffix: String =
        (0..SUFFIX_LEN).map(|_| char::from(ALPHABET[rand::thread_rng().gen_range(0..ALPHABET.len())])).collect();
    format!("{cut}{suffix}")
}

impl<S: Store> Server<S> {
    pub(super) async fn create(
        &self,
        target: &Target,
        obj: Value,
        field_validation: Option<&str>,
    ) -> Result<WithWarnings, ApiError> {
        self.create_named(target, obj, field_validation, generate_name).await
    }

    /// [`Self::create`] with the names for `generateName` made by `names` (from the prefix).
    pub(super) async fn create_named(
        &self,
        target: &Target,
        obj: Value,
        field_validation: Option<&str>,
        mut names: impl FnMut(&str) -> String,
    ) -> Result<WithWarnings, ApiError> {
        let res = target.resource;
        let mut obj = prepare(target, obj)?;
        match res.kind {
            Kind::Service => super::services::default_service(&mut obj),
            Kind::NetworkPolicy => super::network_policies::default_network_policy(&mut obj),
            _ => {}
        }
        if !meta_str(&obj, "resourceVersion").is_empty() {
            return Err(ApiError::bad_request("resourceVersion should not be set on objects to be created"));
        }
        let prefix = Some(meta_str(&obj, "generateName").to_string())
            .filter(|p| !p.is_empty() && meta_str(&obj, "name").is_empty());
        let namespace = meta_str(&obj, "namespace").to_string();
        if res.namespaced {
            let ns = &RESOURCES[0];
            let found = self.store.get(&ns.key(None, &namespace)).await;
            if found.map_err(|e| ApiError::from_store(ns, &namespace, e))?.is_none() {
                return Err(ApiError::not_found(ns, &namespace));
            }
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut obj = obj.clone();
            if let Some(prefix) = &prefix {
                metadata(&mut obj).insert("name".into(), json!(names(prefix)));
            }
            let name = meta_str(&obj, "name").to_string();
            let (mut obj, warnings) = validated(res, &name, obj, field_validation).map_err(|mut e| {
                // A bad prefix shows in the generated name: the client wrote generateName.
                if prefix.is_some() {
                    for cause in e.details.iter_mut().flat_map(|d| d.causes.iter_mut()) {
                        if cause.field == "metadata.name" {
                            cause.field = "metadata.generateName".into();
                        }
                    }
                }
                e
            })?;
            let meta = metadata(&mut obj);
            meta.insert("uid".into(), json!(new_uid()));
            meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
            meta.insert("generation".into(), json!(1));
            // Only a DELETE starts a deletion (Kubernetes' BeforeCreate clears them too).
            meta.remove("deletionTimestamp");
            meta.remove("deletionGracePeriodSeconds");
            // Status is its controller's to write (through /status); a new object starts from the server's
            // default, as in Kubernetes. A node's agent registers its Node with a status.
            match res.kind {
                Kind::Pod => set(&mut obj, "status", json!({"phase": "Pending"})),
                Kind::Namespace => set(&mut obj, "status", json!({"phase": "Active"})),
                Kind::ReplicaSet | Kind::Deployment => remove(&mut obj, "status"),
                Kind::Node | Kind::Lease | Kind::Event | Kind::Service | Kind::EndpointSlice | Kind::NetworkPolicy => {}
            }
            let taken = match res.kind {
                Kind::Service => self.take_service_addresses(&mut obj, None).await?,
                _ => Default::default(),
            };
            let key = res.key(Some(&namespace), &name);
            let created = self.store.create(&key, encode(&obj)?).await;
            if created.is_err() {
                self.release_service_addresses(&taken).await;
            }
            match created {
                Ok(rev) => {
                    set_resource_version(&mut obj, rev);
                    return Ok((obj, warnings));
                }
                Err(StoreError::AlreadyExists(_)) if prefix.is_some() && attempt < NAME_ATTEMPTS => {}
                Err(e) => return Err(ApiError::from_store(res, &name, e)),
            }
        }
    }
}
