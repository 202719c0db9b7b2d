//! `testbed image fetch` against a real HTTP server on 127.0.0.1 started by the test, serving real images made
//! with `qemu-img create`: download, cache hit without a second request, checksum rejection leaving nothing,
//! resume of an interrupted download with a Range request, raw -> qcow2 conversion.

#![allow(clippy::unwrap_used)] // a test file: panics are the failure report

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

/// What the server saw, and how it should misbehave.
#[derive(Default)]
struct ServerState {
    /// (path, Range header) of each request.
    requests: Vec<(String, Option<String>)>,
    /// Send only this many body bytes of the next full response, then close (a dropped connection).
    cut_next_at: Option<usize>,
}

struct Server {
    port: u16,
    state: Arc<Mutex<ServerState>>,
}

/// A minimal HTTP/1.1 file server (GET, single `bytes=N-` ranges, one request per connection).
fn serve(files: Vec<(&'static str, Vec<u8>)>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let state = Arc::new(Mutex::new(ServerState::default()));
    let st = state.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            handle(conn, &files, &st);
        }
    });
    Server { port, state }
}

fn handle(mut conn: TcpStream, files: &[(&str, Vec<u8>)], state: &Mutex<ServerState>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("range") {
                range = Some(v.trim().to_string());
            }
        }
    }
    let cut = {
        let mut s = state.lock().unwrap();
        s.requests.push((path.clone(), range.clone()));
        s.cut_next_at.take()
    };
    let Some((_, body)) = files.iter().find(|(p, _)| *p == path) else {
        let _ = conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    };
    let start = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|n| *n < body.len());
    let (status, slice) = match start {
        Some(n) => {
            (format!("206 Partial Content\r\nContent-Range: bytes {n}-{}/{}", body.len() - 1, body.len()), &body[n..])
        }
        None => ("200 OK".to_string(), &body[..]),
    };
    let head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", slice.len());
    let _ = conn.write_all(head.as_bytes());
    let sent = cut.map(|c| c.min(slice.len())).unwrap_or(slice.len());
    let _ = conn.write_all(&slice[..sent]);
    let _ = conn.flush();
}

fn qemu_img_create(dir: &Path, format: &str, size: &str) -> Vec<u8> {
    let path = dir.join(format!("src.{format}"));
    let st = Command::new("qemu-img").args(["create", "-q", "-f", format]).arg(&path).arg(size).status().unwrap();
    assert!(st.success());
    let mut data = std::fs::read(&path).unwrap();
    if format == "raw" {
        // A raw file of zeros would be detected as raw anyway; put a marker in so that content matters.
        data[..8].copy_from_slice(b"testbed!");
    }
    data
}

fn sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn testbed(cache: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_testbed"))
        .args(args)
        .env("TESTBED_CACHE_DIR", cache)
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("all_proxy")
        .env_remove("ALL_PROXY")
        .output()
        .unwrap()
}

fn cache_names(cache: &Path) -> Vec<String> {
    let mut names: Vec<String> = match std::fs::read_dir(cache) {
        Ok(rd) => rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn qemu_img_format(path: &Path) -> String {
    let out = Command::new("qemu-img").args(["info", "--output=json"]).arg(path).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["format"].as_str().unwrap().to_string()
}

#[test]
fn fetch_downloads_verifies_and_caches() {
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let image = qemu_img_create(work.path(), "qcow2", "64M");
    let server = serve(vec![("/img/small.qcow2", image.clone())]);
    let url = format!("http://127.0.0.1:{}/img/small.qcow2", server.port);
    let sum = sha256(&image);

    let a = json(&testbed(&cache, &["image", "fetch", &url, "--sha256", &sum, "-o", "json"]));
    let disk = PathBuf::from(a["disk"].as_str().unwrap());
    assert_eq!(std::fs::read(&disk).unwrap(), image, "the cached base is the served file, byte for byte");
    assert!(a["kernel"].is_null() && a["cmdline"] == "");
    assert_eq!(a["id"], format!("url-{}", &sum[..16]));
    assert_eq!(server.state.lock().unwrap().requests.len(), 1);

    // Second fetch: answered from the cache, no request reaches the server.
    let again = json(&testbed(&cache, &["image", "fetch", &url, "--sha256", &sum.to_uppercase(), "-o", "json"]));
    assert_eq!(again, a);
    assert_eq!(server.state.lock().unwrap().requests.len(), 1, "cache hit must not download again");

    let list = json(&testbed(&cache, &["image", "list", "-o", "json"]));
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["name"], "small.qcow2");
    assert_eq!(list[0]["source"]["url"], url);

    let rm = testbed(&cache, &["image", "rm", "small.qcow2"]);
    assert!(rm.status.success());
    assert!(cache_names(&cache).is_empty(), "{:?}", cache_names(&cache));
}

#[test]
fn wrong_checksum_is_rejected_and_leaves_nothing() {
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let image = qemu_img_create(work.path(), "qcow2", "16M");
    let server = serve(vec![("/x.qcow2", image.clone())]);
    let url = format!("http://127.0.0.1:{}/x.qcow2", server.port);
    let wrong = "0".repeat(64);

    let out = testbed(&cache, &["image", "fetch", &url, "--sha256", &wrong]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&wrong) && stderr.contains(&sha256(&image)), "names expected and actual: {stderr}");
    assert!(cache_names(&cache).is_empty(), "nothing cached, no partial file: {:?}", cache_names(&cache));
    assert_eq!(server.state.lock().unwrap().requests.len(), 1);

    let missing = testbed(
        &cache,
        &["image", "fetch", &format!("http://127.0.0.1:{}/nope.qcow2", server.port), "--sha256", &wrong],
    );
    assert_eq!(missing.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("404"));
}

#[test]
fn interrupted_download_resumes_with_a_range_request() {
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let image = qemu_img_create(work.path(), "qcow2", "64M");
    let server = serve(vec![("/r.qcow2", image.clone())]);
    let url = format!("http://127.0.0.1:{}/r.qcow2", server.port);
    let sum = sha256(&image);
    let half = image.len() / 2;
    server.state.lock().unwrap().cut_next_at = Some(half);

    let first = testbed(&cache, &["image", "fetch", &url, "--sha256", &sum]);
    assert_eq!(first.status.code(), Some(3), "{}", String::from_utf8_lossy(&first.stderr));
    let part = cache.join(format!(".part-{sum}"));
    assert_eq!(std::fs::metadata(&part).unwrap().len(), half as u64, "the partial download is kept");
    assert_eq!(
        json(&testbed(&cache, &["image", "list", "-o", "json"])),
        serde_json::json!([]),
        "not listed as an image"
    );

    let a = json(&testbed(&cache, &["image", "fetch", &url, "--sha256", &sum, "-o", "json"]));
    assert_eq!(std::fs::read(a["disk"].as_str().unwrap()).unwrap(), image);
    let requests = server.state.lock().unwrap().requests.clone();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[1].1.as_deref(), Some(format!("bytes={half}-").as_str()));
    assert!(!part.exists());
}

#[test]
fn raw_images_are_converted_to_qcow2() {
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let image = qemu_img_create(work.path(), "raw", "1M");
    let server = serve(vec![("/disk.raw", image.clone())]);
    let url = format!("http://127.0.0.1:{}/disk.raw", server.port);
    let a = json(&testbed(&cache, &["image", "fetch", &url, "--sha256", &sha256(&image), "-o", "json"]));
    assert_eq!(qemu_img_format(Path::new(a["disk"].as_str().unwrap())), "qcow2");
}

/// Reads what a plain TCP client gets, to check the test server itself speaks HTTP.
#[test]
fn test_server_answers_ranges() {
    let server = serve(vec![("/f", b"0123456789".to_vec())]);
    let mut c = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    c.write_all(b"GET /f HTTP/1.1\r\nHost: x\r\nRange: bytes=4-\r\n\r\n").unwrap();
    let mut resp = String::new();
    c.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 206") && resp.ends_with("\r\n\r\n456789"), "{resp}");
}
