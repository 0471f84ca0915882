//! The bundled model, inside the binary: tiny-r1's files (a few MB) are compiled in, so an
//! installed or copied `whale` runs with no `--model`. They are written once to a cache
//! directory (the loader maps files) and checked against the embedded bytes on every use.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

macro_rules! file {
    ($name:literal) => {
        (
            $name,
            include_bytes!(concat!("../../../models/tiny-r1/", $name)) as &[u8],
        )
    };
}

const FILES: &[(&str, &[u8])] = &[
    file!("config.json"),
    file!("generation_config.json"),
    file!("model.safetensors"),
    file!("tokenizer.json"),
    file!("tokenizer_config.json"),
];

/// FNV-1a over the embedded files: names the cache directory, so a different build never
/// reads another's files.
fn fingerprint() -> u64 {
    FILES
        .iter()
        .flat_map(|(n, b)| n.as_bytes().iter().chain(b.iter()))
        .fold(0xcbf29ce484222325u64, |h, &b| {
            (h ^ b as u64).wrapping_mul(0x100000001b3)
        })
}

fn cache_root() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("whale");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h).join(".cache").join("whale");
    }
    std::env::temp_dir().join("whale")
}

fn intact(dir: &Path) -> bool {
    FILES
        .iter()
        .all(|(name, bytes)| std::fs::read(dir.join(name)).is_ok_and(|b| b == *bytes))
}

/// The directory holding the bundled model, written there first if it is not there intact.
pub fn path() -> Result<PathBuf> {
    // the directory's own name is the model's: `whale serve` answers to it
    let dir = cache_root()
        .join(format!("bundled-{:016x}", fingerprint()))
        .join("tiny-r1");
    if intact(&dir) {
        return Ok(dir);
    }
    // written beside, then renamed into place: a reader never sees half a model
    let parent = dir.parent().expect("the cache directory has a parent");
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create {} for the bundled model", parent.display()))?;
    let tmp = parent.join(format!(".tiny-r1-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    for (name, bytes) in FILES {
        std::fs::write(tmp.join(name), bytes)
            .with_context(|| format!("cannot write {}", tmp.join(name).display()))?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    if std::fs::rename(&tmp, &dir).is_err() && !intact(&dir) {
        // another process may have put it there first; otherwise say what failed
        anyhow::bail!("cannot place the bundled model at {}", dir.display());
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(dir)
}
