//! Content digests as the image-spec writes them. Only sha256, the one every OCI tool writes by default.

use std::fmt;
use std::io::Read;
use std::path::Path;

use sha2::{Digest as _, Sha256};

use super::{io, ImageError};

/// A `sha256:<64 lowercase hex digits>` digest; the hex part is safe to use as a file name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

impl Digest {
    pub fn parse(text: &str) -> Result<Self, ImageError> {
        if !testbed_api::is_sha256_digest(text) {
            return Err(ImageError::BadDigest(text.into()));
        }
        Ok(Self { hex: text["sha256:".len()..].into() })
    }

    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// Checks the file at `path` against this digest and, when given, the descriptor's size, reading it once.
    pub fn verify_file(&self, path: &Path, expected_size: Option<u64>) -> Result<(), ImageError> {
        let mut file = std::fs::File::open(path).map_err(io(path))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut size = 0u64;
        loop {
            let n = file.read(&mut buf).map_err(io(path))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            size += n as u64;
        }
        let actual = hex::encode(hasher.finalize());
        if actual != self.hex {
            return Err(ImageError::DigestMismatch { digest: self.clone(), path: path.into(), actual });
        }
        match expected_size {
            Some(expected) if expected != size => {
                Err(ImageError::SizeMismatch { digest: self.clone(), path: path.into(), expected, actual: size })
            }
            _ => Ok(()),
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_sha256_with_64_lowercase_hex_digits() {
        let good = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(Digest::parse(&good).unwrap().to_string(), good);
        for bad in ["sha512:00", "ab".repeat(32).as_str(), &format!("sha256:{}", "AB".repeat(32)), "sha256:../x"] {
            assert!(matches!(Digest::parse(bad), Err(ImageError::BadDigest(_))), "{bad}");
        }
    }
}
