//! Images by URL: download (resuming a partial file with a Range request), verify the sha256 BEFORE anything
//! enters the cache, convert to qcow2 when needed, and commit the entry with an atomic rename.

use std::path::Path;
use std::process::Command;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::cache::{self, Manifest, Source, TempEntry};
use super::{ImageArtifacts, ImageError};
use crate::ui::Ui;

pub async fn fetch(ui: &Ui, url: &str, sha256: &str) -> Result<ImageArtifacts, ImageError> {
    let expected = sha256.trim().to_ascii_lowercase();
    if expected.len() != 64 || !expected.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ImageError::BadSha256(sha256.to_string()));
    }
    let parsed =
        reqwest::Url::parse(url).map_err(|e| ImageError::BadUrl { url: url.to_string(), reason: e.to_string() })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(ImageError::BadUrl { url: url.to_string(), reason: "only http and https are supported".into() });
    }
    let id = format!("url-{}", &expected[..16]);
    let root = cache::cache_root()?;
    if let Some(entry) = cache::lookup(&root, &id)? {
        return Ok(entry.manifest.artifacts(&entry.dir));
    }
    if super::build::find_in_path("qemu-img").is_none() {
        return Err(ImageError::MissingTool { tool: "qemu-img".into(), package: "qemu-utils".into() });
    }
    tokio::fs::create_dir_all(&root).await.map_err(|e| ImageError::io(format!("create {}", root.display()), e))?;
    let name =
        parsed.path_segments().and_then(|mut s| s.next_back()).filter(|s| !s.is_empty()).unwrap_or("image").to_string();

    // The partial file is named by the expected hash so an interrupted download of the same image resumes.
    let part = root.join(format!(".part-{expected}"));
    let actual = download(ui, url, &name, &part).await?;
    if actual != expected {
        let _ = tokio::fs::remove_file(&part).await;
        return Err(ImageError::ChecksumMismatch { url: url.to_string(), expected, actual });
    }

    cache::sweep_stale(&root);
    let tmp = TempEntry::create(&root, &id)?;
    let disk = tmp.dir.join(cache::DISK);
    let moved = to_qcow2(&part, &disk);
    let _ = std::fs::remove_file(&part);
    moved?;
    let manifest = Manifest {
        id: id.clone(),
        name,
        source: Source::Url { url: url.to_string(), sha256: expected },
        created_unix: cache::now_unix(),
        cmdline: String::new(),
        has_kernel: false,
        size_bytes: cache::dir_size(&tmp.dir),
    };
    let entry = tmp.commit(&manifest)?;
    Ok(entry.manifest.artifacts(&entry.dir))
}

fn download_error(url: &str, detail: impl std::fmt::Display) -> ImageError {
    ImageError::Download { url: url.to_string(), detail: detail.to_string() }
}

/// Downloads `url` into `part` (appending to what a previous attempt left) and returns the file's sha256.
async fn download(ui: &Ui, url: &str, name: &str, part: &Path) -> Result<String, ImageError> {
    let client = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(|e| download_error(url, e))?;
    let mut offset = tokio::fs::metadata(part).await.map(|m| m.len()).unwrap_or(0);
    let mut response = None;
    if offset > 0 {
        let r = client
            .get(url)
            .header(reqwest::header::RANGE, format!("bytes={offset}-"))
            .send()
            .await
            .map_err(|e| download_error(url, e))?;
        if r.status() == reqwest::StatusCode::PARTIAL_CONTENT {
            response = Some(r);
        } else {
            // The server ignored the range, or the partial file is no longer valid: start over.
            offset = 0;
            if r.status() == reqwest::StatusCode::OK {
                response = Some(r);
            }
        }
    }
    let mut response = match response {
        Some(r) => r,
        None => client.get(url).send().await.map_err(|e| download_error(url, e))?,
    };
    if !response.status().is_success() {
        return Err(download_error(url, format!("HTTP {}", response.status())));
    }

    let mut hasher = Sha256::new();
    let mut file = if offset > 0 {
        hash_existing(part, &mut hasher).await?;
        tokio::fs::OpenOptions::new().append(true).open(part).await
    } else {
        tokio::fs::File::create(part).await
    }
    .map_err(|e| ImageError::io(format!("open {}", part.display()), e))?;

    let total = response.content_length().map(|len| len + offset);
    let bar = ui.bytes(&format!("download {name}"), total);
    bar.set_position(offset);
    loop {
        let chunk = match response.chunk().await {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(e) => {
                let _ = file.flush().await;
                bar.fail("interrupted");
                return Err(download_error(url, format!("{e} (the partial download is kept and resumes next time)")));
            }
        };
        file.write_all(&chunk).await.map_err(|e| ImageError::io(format!("write {}", part.display()), e))?;
        hasher.update(&chunk);
        bar.inc(chunk.len() as u64);
    }
    file.sync_all().await.map_err(|e| ImageError::io(format!("sync {}", part.display()), e))?;
    bar.finish("downloaded");
    Ok(hex::encode(hasher.finalize()))
}

async fn hash_existing(path: &Path, hasher: &mut Sha256) -> Result<(), ImageError> {
    let mut f = tokio::fs::File::open(path).await.map_err(|e| ImageError::io(format!("open {}", path.display()), e))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).await.map_err(|e| ImageError::io(format!("read {}", path.display()), e))?;
        if n == 0 {
            return Ok(());
        }
        hasher.update(&buf[..n]);
    }
}

/// Moves a verified download to `dest` as qcow2. Images with a backing file are refused: a base must stand
/// alone, and a crafted backing path could make a VM read any host file.
fn to_qcow2(src: &Path, dest: &Path) -> Result<(), ImageError> {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(src)
        .output()
        .map_err(|e| ImageError::io("run qemu-img info".into(), e))?;
    if !out.status.success() {
        return Err(ImageError::CommandFailed {
            what: "qemu-img info".into(),
            status: out.status.to_string(),
            output: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    let info: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| ImageError::Recipe(format!("qemu-img info printed something that is not JSON: {e}")))?;
    if info.get("backing-filename").is_some() {
        return Err(ImageError::Recipe(
            "the downloaded image has a backing file; only standalone images are accepted".into(),
        ));
    }
    match info.get("format").and_then(|f| f.as_str()) {
        Some("qcow2") => std::fs::rename(src, dest).map_err(|e| ImageError::io(format!("rename {}", src.display()), e)),
        Some(format) => {
            let out = Command::new("qemu-img")
                .args(["convert", "-f", format, "-O", "qcow2"])
                .arg(src)
                .arg(dest)
                .output()
                .map_err(|e| ImageError::io("run qemu-img convert".into(), e))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(ImageError::CommandFailed {
                    what: "qemu-img convert".into(),
                    status: out.status.to_string(),
                    output: String::from_utf8_lossy(&out.stderr).into_owned(),
                })
            }
        }
        None => Err(ImageError::Recipe("qemu-img info did not name the image format".into())),
    }
}
