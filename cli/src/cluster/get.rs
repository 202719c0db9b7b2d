//! `testbed get` (tables, `-o wide|json|yaml`, `-w` watch) and `testbed delete`.

use std::path::PathBuf;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, DynamicObject, ListParams, WatchEvent, WatchParams};
use kube::Client;

use crate::exit::CliResult;
use crate::ui::{OutputFormat, Ui};

use super::kinds::{self, Kind, Served, Target};
use super::{api, connect, documents, print_outcomes, run, table, ClientArgs, ClusterError, Outcome};

#[derive(Debug, clap::Args)]
pub struct GetArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Across all namespaces.
    #[arg(long = "all-namespaces", short = 'A')]
    pub all_namespaces: bool,
    /// Only objects whose labels match (`app=web`, `tier!=db`, `app`).
    #[arg(long, short = 'l', value_name = "SELECTOR")]
    pub selector: Option<String>,
    /// After the list, print every change until interrupted (one kind only).
    #[arg(long, short = 'w')]
    pub watch: bool,
    /// `TYPE[,TYPE...] [NAME...]` or `TYPE/NAME...`: namespaces, nodes, pods, leases.
    #[arg(required = true, value_name = "TYPE[/NAME]")]
    pub what: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Delete the objects of these files (`-`: standard input).
    #[arg(long = "filename", short = 'f', value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// An object that does not exist is not an error.
    #[arg(long)]
    pub ignore_not_found: bool,
    /// `TYPE NAME...` or `TYPE/NAME...`.
    #[arg(value_name = "TYPE[/NAME]", required_unless_present = "files")]
    pub what: Vec<String>,
}

pub async fn cmd_get(ui: &Ui, args: GetArgs) -> CliResult {
    run(get(ui, args)).await
}

pub async fn cmd_delete(ui: &Ui, args: DeleteArgs) -> CliResult {
    run(delete(ui, args)).await
}

async fn get(ui: &Ui, args: GetArgs) -> Result<(), ClusterError> {
    let targets = kinds::targets(&args.what)?;
    if args.watch && targets.len() != 1 {
        return Err(ClusterError::Document("--watch follows one type at a time".into()));
    }
    let client = connect(&args.client).await?;
    let namespace =
        if args.all_namespaces { None } else { Some(args.client.namespace.as_deref().unwrap_or("default")) };
    let mut objects: Vec<(Kind, DynamicObject)> = Vec::new();
    let mut failed = 0;
    let mut list_version = String::new();
    for Target { kind, names } in &targets {
        let api = api(&client, *kind, namespace);
        if names.is_empty() {
            let mut params = ListParams::default();
            if let Some(selector) = &args.selector {
                params = params.labels(selector);
            }
            let list =
                api.list(&params).await.map_err(|e| ClusterError::from_kube(format!("list {}", kind.plural()), e))?;
            list_version = list.metadata.resource_version.unwrap_or_default();
            objects.extend(list.items.into_iter().map(|o| (*kind, o)));
            continue;
        }
        for name in names {
            match api.get(name).await {
                Ok(o) => objects.push((*kind, o)),
                Err(e) => {
                    eprintln!("Error: {}", ClusterError::from_kube(format!("{} \"{name}\"", kind.plural()), e));
                    failed += 1;
                }
            }
        }
    }
    print(ui, &objects, args.all_namespaces, &targets);
    if args.watch {
        let kind = targets[0].kind;
        watch(ui, &client, kind, namespace, &args, &list_version).await?;
    }
    match failed {
        0 => Ok(()),
        n => Err(ClusterError::Some(n)),
    }
}

fn print(ui: &Ui, objects: &[(Kind, DynamicObject)], all_namespaces: bool, targets: &[Target]) {
    let single = targets.iter().map(|t| t.names.len()).sum::<usize>() == 1 && objects.len() == 1;
    match ui.format {
        OutputFormat::Json | OutputFormat::Yaml => {
            let value = if single {
                serde_json::to_value(&objects[0].1)
            } else {
                let items: Vec<&DynamicObject> = objects.iter().map(|(_, o)| o).collect();
                serde_json::to_value(serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}))
            }
            .unwrap_or_default();
            print_value(ui, &value);
        }
        OutputFormat::Text | OutputFormat::Wide => {
            let wide = ui.format == OutputFormat::Wide;
            let now = Timestamp::now();
            let mut first = true;
            for target in targets {
                let rows: Vec<Vec<String>> = objects
                    .iter()
                    .filter(|(k, _)| *k == target.kind)
                    .map(|(k, o)| table::row(*k, o, wide, all_namespaces, now))
                    .collect();
                if rows.is_empty() {
                    continue;
                }
                if !first {
                    println!();
                }
                first = false;
                print!("{}", table::render(&table::header(target.kind, wide, all_namespaces), &rows));
            }
            if first && objects.is_empty() && targets.iter().all(|t| t.names.is_empty()) {
                eprintln!("No resources found.");
            }
        }
    }
}

fn print_value(ui: &Ui, value: &serde_json::Value) {
    if ui.format == OutputFormat::Yaml {
        print!("{}", serde_yaml::to_string(value).unwrap_or_default());
    } else {
        println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
    }
}

/// Prints each change after `version` (a row per event in tables, the object as JSON/YAML otherwise).
async fn watch(
    ui: &Ui,
    client: &Client,
    kind: Kind,
    namespace: Option<&str>,
    args: &GetArgs,
    version: &str,
) -> Result<(), ClusterError> {
    let api = api(client, kind, namespace);
    let mut params = WatchParams::default();
    if let Some(selector) = &args.selector {
        params = params.labels(selector);
    }
    let what = format!("watch {}", kind.plural());
    let stream = api.watch(&params, version).await.map_err(|e| ClusterError::from_kube(&what, e))?;
    let mut stream = stream.boxed();
    while let Some(event) = stream.try_next().await.map_err(|e| ClusterError::from_kube(&what, e))? {
        let object = match event {
            WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o) => o,
            WatchEvent::Bookmark(_) => continue,
            WatchEvent::Error(status) => {
                return Err(ClusterError::Api {
                    what,
                    code: status.code,
                    reason: status.reason,
                    message: status.message,
                })
            }
        };
        match ui.format {
            OutputFormat::Json | OutputFormat::Yaml => {
                print_value(ui, &serde_json::to_value(&object).unwrap_or_default())
            }
            OutputFormat::Text | OutputFormat::Wide => {
                let row =
                    table::row(kind, &object, ui.format == OutputFormat::Wide, args.all_namespaces, Timestamp::now());
                println!("{}", row.join("   "));
            }
        }
    }
    Ok(())
}

async fn delete(ui: &Ui, args: DeleteArgs) -> Result<(), ClusterError> {
    let mut wanted: Vec<(Kind, Option<String>, String)> = Vec::new();
    // A file's objects go in reverse order, so a namespace is deleted after the objects it holds (this
    // control plane refuses to delete a namespace that is not empty).
    for file in &args.files {
        for doc in documents::read(file)?.into_iter().rev() {
            let name = doc.object.metadata.name.clone().unwrap_or_default();
            wanted.push((doc.kind, doc.object.metadata.namespace.clone(), name));
        }
    }
    for Target { kind, names } in kinds::targets(&args.what)? {
        if names.is_empty() {
            return Err(ClusterError::Document(format!("delete {}: name the objects to delete", kind.plural())));
        }
        wanted.extend(names.into_iter().map(|n| (kind, None, n)));
    }
    let client = connect(&args.client).await?;
    let mut failed = 0;
    let mut done = Vec::new();
    for (kind, doc_namespace, name) in wanted {
        let namespace = doc_namespace.or_else(|| args.client.namespace.clone()).unwrap_or_else(|| "default".into());
        let result = api(&client, kind, Some(&namespace)).delete(&name, &DeleteParams::default()).await;
        match result.map_err(|e| ClusterError::from_kube(format!("{} \"{name}\"", kind.plural()), e)) {
            Ok(_) => {
                done.push(Outcome { kind, namespace: kind.namespaced().then_some(namespace), name, action: "deleted" })
            }
            Err(e) if e.is_not_found() && args.ignore_not_found => {}
            Err(e) => {
                eprintln!("Error: {e}");
                failed += 1;
            }
        }
    }
    print_outcomes(ui, &done);
    match failed {
        0 => Ok(()),
        n => Err(ClusterError::Some(n)),
    }
}
