//! Image names as container runtimes read them (the `distribution/reference` grammar that containerd and
//! the kubelet use): `busybox`, `busybox:1.36`, `registry.local:5000/team/app:v2`. A name is normalized
//! before a node's image store indexes or looks it up, so `busybox`, `busybox:latest` and
//! `docker.io/library/busybox:latest` are the same image, as they are to containerd. Nothing is pulled:
//! a node runs an image by name only if one was put in its store under that name.

/// The registry a name without one belongs to, and the path prefix of its one-component names.
const DEFAULT_DOMAIN: &str = "docker.io";
const OFFICIAL_PREFIX: &str = "library/";
/// A tag's most characters (the grammar's `[\w][\w.-]{0,127}`).
const MAX_TAG: usize = 128;
/// A whole name's most characters (the grammar's `NameTotalLengthMax`).
const MAX_NAME: usize = 255;

/// `reference` in its fully qualified form, `domain/path:tag` (`:latest` when no tag is given), or why it is
/// not an image name. A digest (`@sha256:...`) is not a name: callers take digests first.
pub fn normalize(reference: &str) -> Result<String, String> {
    if reference.contains('@') || reference.starts_with("sha256:") {
        return Err(format!("`{reference}`: a digest reference is not a name (sha256:<64 lowercase hex digits>)"));
    }
    let (name, tag) = split_tag(reference);
    if let Some(tag) = tag {
        let mut chars = tag.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        if !first_ok || tag.len() > MAX_TAG || !chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) {
            return Err(format!("`{reference}`: `{tag}` is not a tag (letters, digits, '_', '.', '-'; 128 at most)"));
        }
    }
    let (domain, path) = match name.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => (first, rest.to_string()),
        _ => (DEFAULT_DOMAIN, name.to_string()),
    };
    let domain = if domain == "index.docker.io" { DEFAULT_DOMAIN } else { domain };
    let path = if domain == DEFAULT_DOMAIN && !path.contains('/') { format!("{OFFICIAL_PREFIX}{path}") } else { path };
    if !is_domain(domain) {
        return Err(format!("`{reference}`: `{domain}` is not a registry host[:port]"));
    }
    if let Some(bad) = path.split('/').find(|c| !is_path_component(c)) {
        return Err(format!(
            "`{reference}`: `{bad}` is not a name component (lowercase letters and digits, joined by '.', '_', \
             '__' or '-')"
        ));
    }
    let full = format!("{domain}/{path}:{}", tag.unwrap_or("latest"));
    if full.len() > MAX_NAME + 1 + MAX_TAG {
        return Err(format!("`{reference}` is too long"));
    }
    Ok(full)
}

/// The name and the tag: the tag follows the last ':' that comes after the last '/' (a ':' before it is a
/// registry's port).
fn split_tag(reference: &str) -> (&str, Option<&str>) {
    let last_slash = reference.rfind('/').map_or(0, |i| i + 1);
    match reference[last_slash..].rfind(':') {
        Some(i) => (&reference[..last_slash + i], Some(&reference[last_slash + i + 1..])),
        None => (reference, None),
    }
}

fn is_domain(domain: &str) -> bool {
    let (host, port) = match domain.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (domain, None),
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    host.split('.').all(label_ok) && port.is_none_or(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
}

fn is_path_component(component: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    if !component.starts_with(alnum) || !component.ends_with(alnum) {
        return false;
    }
    // Separators between alphanumeric runs: '.', '_', '__', or any number of '-'.
    let mut separator = String::new();
    for c in component.chars() {
        if alnum(c) {
            let ok = separator.is_empty()
                || matches!(separator.as_str(), "." | "_" | "__")
                || separator.chars().all(|s| s == '-');
            if !ok {
                return false;
            }
            separator.clear();
        } else if "._-".contains(c) {
            separator.push(c);
        } else {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn familiar_names_get_the_default_registry_the_official_prefix_and_latest() {
        for same in ["busybox", "busybox:latest", "library/busybox", "docker.io/library/busybox:latest"] {
            assert_eq!(normalize(same).as_deref(), Ok("docker.io/library/busybox:latest"), "{same}");
        }
        assert_eq!(normalize("index.docker.io/busybox:1.36").as_deref(), Ok("docker.io/library/busybox:1.36"));
        assert_eq!(normalize("team/app:v2").as_deref(), Ok("docker.io/team/app:v2"));
        assert_eq!(normalize("localhost/app").as_deref(), Ok("localhost/app:latest"));
        assert_eq!(
            normalize("registry.local:5000/a/b__c.d-e:1.0_rc").as_deref(),
            Ok("registry.local:5000/a/b__c.d-e:1.0_rc"),
            "a port is not a tag"
        );
        assert_eq!(normalize("registry.local:5000/app").as_deref(), Ok("registry.local:5000/app:latest"));
    }

    #[test]
    fn what_the_grammar_refuses_is_refused_with_the_part_named() {
        for bad in
            ["", "Busybox", "busybox:", "busybox:-x", "a//b", "app_", "a___b", "-a", "x@sha256:00", "sha256:abc", "a b"]
        {
            assert!(normalize(bad).is_err(), "{bad:?} accepted as {:?}", normalize(bad));
        }
        assert!(normalize("Busybox").unwrap_err().contains("`Busybox` is not a name component"));
        assert!(normalize(&format!("app:{}", "t".repeat(129))).is_err());
    }
}
